package nativevm

import (
	"context"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/record"
)

// What the guest has of the VM's network (status.ips, status.network).
//
// A VM's NICs are hardware: a NIC added to spec.networks of a running VM
// is hot-added (update), and its guest has the card at once. Its address
// is another matter: a guest with cloud-init configures its network from
// the cloud-init data (guestinfo.metadata, written by this controller)
// once, when it boots, and does not apply new data to a card that arrives
// later. vCenter has no report of the guest's addresses without VMware
// Tools (guest.net), so the status says what the guest was given when it
// last booted, while it runs: status.network.guestBoot records the boot
// (vCenter's summary.runtime.bootTime: another time is another boot) and
// the addresses the metadata in the VM's ExtraConfig gave each card then,
// and a NIC counts as configured only when that address is its allocated
// one. The rest is told as it is: attached, not configured, reason
// RebootRequired (GuestNetworkConfigured False), until a power cycle.
//
// The metadata a boot read is the metadata in ExtraConfig at the boot.
// converge reads the boot back after setting the power state: a boot it
// has not recorded read the metadata in ExtraConfig then, because every
// write of it by this controller to a running VM (update) first records
// the VM's boot as it is (noteBoot), and a boot made by setPower comes
// after update's writes. A VM the controller powers off itself (update's
// resize, a declared power-off) loses its recorded boot at once (power),
// so the next boot, whoever makes it, is never taken for the one before.
//
// A VM whose boot time vCenter does not report (the zero time) has a boot
// the controller cannot tell from another: its boot time is unknown,
// never "the same boot". What is known is said, and nothing more:
//   - a boot the controller made itself (power: this converge powered on
//     the VM from off) read the data there is now, and is recorded so;
//   - a boot not recorded (the VM was seen off since, or never seen
//     running) read the data there is now: every write to a running VM's
//     data records the boot first;
//   - otherwise the recorded boot stays. A boot made since behind the
//     controller's back is not seen: the guest may have configured a NIC
//     the status still says RebootRequired for (and the condition's
//     message says the boot time is unknown), but no address is claimed
//     that the guest does not have, since a later boot read data that
//     gives each NIC its allocated address too.

// bootTime is the VM's last boot as vCenter reports it; the zero time
// (unknown) when it reports none.
func bootTime(m *mo.VirtualMachine) time.Time {
	switch {
	case m.Summary.Runtime.BootTime != nil:
		return m.Summary.Runtime.BootTime.UTC()
	case m.Runtime.BootTime != nil:
		return m.Runtime.BootTime.UTC()
	}
	return time.Time{}
}

// sameBoot says a boot recorded is the one at (a boot time read from
// vCenter), or, at unknown, may be: the recorded one is kept.
func sameBoot(b *events.VMGuestBoot, at time.Time) bool {
	return b != nil && (at.IsZero() || b.Time.Equal(at))
}

// noteBoot records the running VM's boot (m, read before the update) and
// the network data in its ExtraConfig, unless the record has that boot
// already: called before the update writes new data, so that the
// record's boot keeps what the guest read and not what it was given
// after.
func (c *Controller) noteBoot(ctx context.Context, rec *events.VMRecord, m *mo.VirtualMachine) error {
	if m.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn || m.Config == nil {
		return nil
	}
	at := bootTime(m)
	if sameBoot(rec.Status.Network.GuestBoot, at) {
		return nil
	}
	addrs := metadataAddresses(m.Config.ExtraConfig)
	_, err := c.mutateVM(ctx, rec.Namespace, rec.Name, rec.UID, func(r *events.VMRecord) error {
		if sameBoot(r.Status.Network.GuestBoot, at) {
			return record.ErrUnchanged
		}
		r.Status.Network.GuestBoot = &events.VMGuestBoot{Time: at, Addresses: addrs}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record the boot of %s: %w", m.Reference().Value, err)
	}
	return nil
}

// forgetBoot drops the record's boot: the controller has powered the VM
// off.
func (c *Controller) forgetBoot(ctx context.Context, rec *events.VMRecord) error {
	_, err := c.mutateVM(ctx, rec.Namespace, rec.Name, rec.UID, func(r *events.VMRecord) error {
		if r.Status.Network.GuestBoot == nil {
			return record.ErrUnchanged
		}
		r.Status.Network.GuestBoot = nil
		return nil
	})
	if err != nil {
		return fmt.Errorf("forget the boot of native VM %s: %w", rec.Key(), err)
	}
	return nil
}

// setGuestNetwork writes what the VM (m, read back after converging) and
// its guest have of the record's NICs: status.network, status.ips (only
// the addresses the guest has configured) and the GuestNetworkConfigured
// condition. booted says the controller powered the VM on from off in
// this converge: its guest read the data there is now, whatever vCenter
// reports of the boot's time.
func setGuestNetwork(r *events.VMRecord, m *mo.VirtualMachine, booted bool, now time.Time) {
	power := m.Runtime.PowerState
	unknown := false // the recorded boot is kept, not known to be the VM's
	switch power {
	case types.VirtualMachinePowerStatePoweredOn:
		at := bootTime(m)
		if b := r.Status.Network.GuestBoot; booted || !sameBoot(b, at) {
			// A boot not recorded yet read the data there is now.
			r.Status.Network.GuestBoot = &events.VMGuestBoot{Time: at, Addresses: metadataAddresses(m.Config.ExtraConfig)}
		} else {
			unknown = at.IsZero()
		}
	case types.VirtualMachinePowerStatePoweredOff:
		r.Status.Network.GuestBoot = nil
	}
	// A suspended guest keeps the configuration it booted with (and its
	// boot: resumed, it is the same boot).
	cards := map[string]bool{}
	for _, d := range object.VirtualDeviceList(m.Config.Hardware.Device).SelectByType((*types.VirtualEthernetCard)(nil)) {
		cards[strings.ToLower(d.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard().MacAddress)] = true
	}
	boot := r.Status.Network.GuestBoot
	r.Status.IPs = []string{}
	r.Status.Network.Interfaces = nil
	var pending []string
	reason := ""
	for _, n := range r.Status.NICs {
		mac := strings.ToLower(n.MAC)
		s := events.VMNetworkInterfaceStatus{Name: n.Network, MACAddr: mac, Attached: cards[mac],
			Allocated: n.IP + "/" + strconv.Itoa(n.PrefixLength)}
		switch {
		case !s.Attached:
			s.Reason = events.VMGuestNetworkNotAttached
			pending = append(pending, fmt.Sprintf("network %s (%s on %s): the VM has no card of that MAC", n.Network, s.Allocated, mac))
		case power != types.VirtualMachinePowerStatePoweredOn:
			s.Reason = events.VMGuestNetworkNotRunning
		case boot == nil || boot.Addresses[mac] != s.Allocated:
			s.Reason = events.VMGuestNetworkRebootRequired
			pending = append(pending, fmt.Sprintf("network %s (%s on %s) is not in the network data the guest read when it booted", n.Network, s.Allocated, mac))
		default:
			s.IP.Addresses = []string{s.Allocated}
			r.Status.IPs = append(r.Status.IPs, n.IP)
		}
		if reason == "" {
			reason = s.Reason
		}
		r.Status.Network.Interfaces = append(r.Status.Network.Interfaces, s)
	}
	switch reason {
	case "":
		r.SetCondition(events.VMConditionGuestNetworkConfigured, events.ConditionTrue, "", "", now)
	case events.VMGuestNetworkNotRunning:
		r.SetCondition(events.VMConditionGuestNetworkConfigured, events.ConditionFalse, reason,
			fmt.Sprintf("the VM is %s: its guest configures its network when it boots", powerStateName(power)), now)
	case events.VMGuestNetworkRebootRequired:
		msg := strings.Join(pending, "; ") + ": the guest configures its network from its cloud-init data when it boots; power the VM off and on"
		if unknown {
			msg += " (vCenter reports no boot time for the VM: a boot since the one recorded, not made by podvisor, is not seen)"
		}
		r.SetCondition(events.VMConditionGuestNetworkConfigured, events.ConditionFalse, reason, msg, now)
	default:
		r.SetCondition(events.VMConditionGuestNetworkConfigured, events.ConditionFalse, reason, strings.Join(pending, "; "), now)
	}
}

// guestGone says the VM's guest has nothing configured: its VM is gone
// from its host (evicted) and is made again.
func guestGone(r *events.VMRecord, now time.Time) {
	r.Status.IPs = []string{}
	r.Status.Network.GuestBoot = nil
	for i := range r.Status.Network.Interfaces {
		in := &r.Status.Network.Interfaces[i]
		in.IP, in.Reason = events.VMNetworkInterfaceIPStatus{}, events.VMGuestNetworkNotRunning
	}
	if len(r.Status.NICs) > 0 {
		r.SetCondition(events.VMConditionGuestNetworkConfigured, events.ConditionFalse, events.VMGuestNetworkNotRunning,
			"the VM left its host: its guest configures its network when the VM made again boots", now)
	}
}

// metadataAddresses reads the cloud-init metadata in a VM's ExtraConfig
// (as Metadata writes it) and returns the address its network section
// gives each card, by MAC (lower case), with its prefix length.
func metadataAddresses(extra []types.BaseOptionValue) map[string]string {
	var value, encoding string
	for _, o := range extra {
		v := o.GetOptionValue()
		s, _ := v.Value.(string)
		switch v.Key {
		case GuestinfoMetadata:
			value = s
		case GuestinfoMetadataEncoding:
			encoding = s
		}
	}
	if encoding == "base64" {
		b, err := base64.StdEncoding.DecodeString(value)
		if err != nil {
			return nil
		}
		value = string(b)
	}
	return netplanAddresses(value)
}

// netplanAddresses parses the network section Metadata writes (netplan
// v2: per ethernets entry a match by MAC and its addresses) into the
// first address of each card, by MAC (lower case).
func netplanAddresses(metadata string) map[string]string {
	out := map[string]string{}
	mac := ""
	for _, line := range strings.Split(metadata, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "match:"):
			_, v, _ := strings.Cut(line, "macaddress:")
			mac = strings.ToLower(strings.Trim(strings.TrimSpace(v), `"'} `))
		case strings.HasPrefix(line, "addresses:") && mac != "":
			v := strings.Trim(strings.TrimSpace(strings.TrimPrefix(line, "addresses:")), "[]")
			first, _, _ := strings.Cut(v, ",")
			if first = strings.Trim(strings.TrimSpace(first), `"'`); first != "" {
				out[mac] = first
			}
			mac = ""
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
