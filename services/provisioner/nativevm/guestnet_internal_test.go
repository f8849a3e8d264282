package nativevm

import (
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
)

var (
	nicA = events.NetworkAttachment{Network: "a", PortGroup: "pv-a", IP: "10.0.0.5", PrefixLength: 24, Gateway: "10.0.0.1", MAC: "00:50:56:3F:00:05"}
	nicB = events.NetworkAttachment{Network: "b", PortGroup: "pv-b", IP: "10.1.0.6", PrefixLength: 16, MAC: "00:50:56:3f:00:06"}
)

// The addresses a guest's network data gives its cards are read back from
// the metadata as Metadata writes it, by MAC in lower case.
func TestMetadataAddresses(t *testing.T) {
	rec := &events.VMRecord{UID: "u", Name: "vm1", Status: events.VirtualMachineStatus{NICs: []events.NetworkAttachment{nicA, nicB}}}
	got := metadataAddresses(extraConfig(rec))
	want := map[string]string{"00:50:56:3f:00:05": "10.0.0.5/24", "00:50:56:3f:00:06": "10.1.0.6/16"}
	if !maps.Equal(got, want) {
		t.Errorf("metadataAddresses = %v, want %v", got, want)
	}
	rec.Status.NICs = nil
	if got := metadataAddresses(extraConfig(rec)); len(got) != 0 {
		t.Errorf("metadataAddresses without NICs = %v", got)
	}
	if got := metadataAddresses(nil); len(got) != 0 {
		t.Errorf("metadataAddresses of a VM without metadata = %v", got)
	}
}

// setGuestNetwork says what the guest has: the addresses of the network
// data it read at the boot vCenter reports, while it runs.
func TestSetGuestNetwork(t *testing.T) {
	boot := time.Date(2026, 12, 2, 0, 40, 1, 5, time.UTC)
	later := boot.Add(time.Minute)
	onlyA := &events.VMGuestBoot{Time: boot, Addresses: map[string]string{"00:50:56:3f:00:05": "10.0.0.5/24"}}
	unknownA := &events.VMGuestBoot{Addresses: map[string]string{"00:50:56:3f:00:05": "10.0.0.5/24"}}
	oldA := &events.VMGuestBoot{Time: boot, Addresses: map[string]string{"00:50:56:3f:00:05": "10.0.0.9/24", "00:50:56:3f:00:06": "10.1.0.6/16"}}
	tests := []struct {
		name string
		// the record's boot, the VM's power state and boot, its cards
		recorded *events.VMGuestBoot
		power    types.VirtualMachinePowerState
		bootTime time.Time
		booted   bool // the controller powered the VM on in this converge
		cards    []string
		// want: status.ips, each NIC's reason, the condition's, the boot
		// recorded afterwards
		wantIPs     []string
		wantReasons []string
		wantCond    string
		wantBoot    *events.VMGuestBoot
		// wantMessage is in the condition's message
		wantMessage string
	}{
		{name: "a boot not recorded read the data there is", power: types.VirtualMachinePowerStatePoweredOn, bootTime: boot,
			cards: []string{nicA.MAC, nicB.MAC}, wantIPs: []string{"10.0.0.5", "10.1.0.6"}, wantReasons: []string{"", ""},
			wantBoot: &events.VMGuestBoot{Time: boot, Addresses: map[string]string{"00:50:56:3f:00:05": "10.0.0.5/24", "00:50:56:3f:00:06": "10.1.0.6/16"}}},
		{name: "a NIC hot-added after the boot", recorded: onlyA, power: types.VirtualMachinePowerStatePoweredOn, bootTime: boot,
			cards: []string{nicA.MAC, nicB.MAC}, wantIPs: []string{"10.0.0.5"}, wantReasons: []string{"", events.VMGuestNetworkRebootRequired},
			wantCond: events.VMGuestNetworkRebootRequired, wantBoot: onlyA},
		{name: "booted since", recorded: onlyA, power: types.VirtualMachinePowerStatePoweredOn, bootTime: later,
			cards: []string{nicA.MAC, nicB.MAC}, wantIPs: []string{"10.0.0.5", "10.1.0.6"}, wantReasons: []string{"", ""},
			wantBoot: &events.VMGuestBoot{Time: later, Addresses: map[string]string{"00:50:56:3f:00:05": "10.0.0.5/24", "00:50:56:3f:00:06": "10.1.0.6/16"}}},
		{name: "an address changed after the boot", recorded: oldA, power: types.VirtualMachinePowerStatePoweredOn, bootTime: boot,
			cards: []string{nicA.MAC, nicB.MAC}, wantIPs: []string{"10.1.0.6"}, wantReasons: []string{events.VMGuestNetworkRebootRequired, ""},
			wantCond: events.VMGuestNetworkRebootRequired, wantBoot: oldA},
		{name: "powered off", recorded: onlyA, power: types.VirtualMachinePowerStatePoweredOff, cards: []string{nicA.MAC, nicB.MAC},
			wantReasons: []string{events.VMGuestNetworkNotRunning, events.VMGuestNetworkNotRunning}, wantCond: events.VMGuestNetworkNotRunning},
		{name: "suspended keeps its boot", recorded: onlyA, power: types.VirtualMachinePowerStateSuspended, bootTime: boot, cards: []string{nicA.MAC, nicB.MAC},
			wantReasons: []string{events.VMGuestNetworkNotRunning, events.VMGuestNetworkNotRunning}, wantCond: events.VMGuestNetworkNotRunning, wantBoot: onlyA},
		// vCenter reports no boot time: the boot is unknown, never the
		// same one because both times are zero.
		{name: "a boot podvisor made, its time unknown, read the data there is", recorded: unknownA, power: types.VirtualMachinePowerStatePoweredOn,
			booted: true, cards: []string{nicA.MAC, nicB.MAC}, wantIPs: []string{"10.0.0.5", "10.1.0.6"}, wantReasons: []string{"", ""},
			wantBoot: &events.VMGuestBoot{Addresses: map[string]string{"00:50:56:3f:00:05": "10.0.0.5/24", "00:50:56:3f:00:06": "10.1.0.6/16"}}},
		{name: "a boot podvisor made while vCenter reports the boot recorded read the data there is", recorded: onlyA, power: types.VirtualMachinePowerStatePoweredOn,
			bootTime: boot, booted: true, cards: []string{nicA.MAC, nicB.MAC}, wantIPs: []string{"10.0.0.5", "10.1.0.6"}, wantReasons: []string{"", ""},
			wantBoot: &events.VMGuestBoot{Time: boot, Addresses: map[string]string{"00:50:56:3f:00:05": "10.0.0.5/24", "00:50:56:3f:00:06": "10.1.0.6/16"}}},
		{name: "an unknown boot not recorded read the data there is", power: types.VirtualMachinePowerStatePoweredOn,
			cards: []string{nicA.MAC, nicB.MAC}, wantIPs: []string{"10.0.0.5", "10.1.0.6"}, wantReasons: []string{"", ""},
			wantBoot: &events.VMGuestBoot{Addresses: map[string]string{"00:50:56:3f:00:05": "10.0.0.5/24", "00:50:56:3f:00:06": "10.1.0.6/16"}}},
		{name: "an unknown boot keeps the boot recorded and says so", recorded: unknownA, power: types.VirtualMachinePowerStatePoweredOn,
			cards: []string{nicA.MAC, nicB.MAC}, wantIPs: []string{"10.0.0.5"}, wantReasons: []string{"", events.VMGuestNetworkRebootRequired},
			wantCond: events.VMGuestNetworkRebootRequired, wantBoot: unknownA, wantMessage: "vCenter reports no boot time"},
		{name: "a boot recorded with its time, vCenter reporting none now", recorded: onlyA, power: types.VirtualMachinePowerStatePoweredOn,
			cards: []string{nicA.MAC, nicB.MAC}, wantIPs: []string{"10.0.0.5"}, wantReasons: []string{"", events.VMGuestNetworkRebootRequired},
			wantCond: events.VMGuestNetworkRebootRequired, wantBoot: onlyA, wantMessage: "vCenter reports no boot time"},
		{name: "a card vCenter does not report", recorded: onlyA, power: types.VirtualMachinePowerStatePoweredOn, bootTime: boot, cards: []string{nicA.MAC},
			wantIPs: []string{"10.0.0.5"}, wantReasons: []string{"", events.VMGuestNetworkNotAttached}, wantCond: events.VMGuestNetworkNotAttached, wantBoot: onlyA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &events.VMRecord{UID: "u", Name: "vm1", Status: events.VirtualMachineStatus{NICs: []events.NetworkAttachment{nicA, nicB}}}
			rec.Status.Network.GuestBoot = tt.recorded
			m := &mo.VirtualMachine{Config: &types.VirtualMachineConfigInfo{ExtraConfig: extraConfig(rec)}}
			m.Runtime.PowerState = tt.power
			if !tt.bootTime.IsZero() {
				bt := tt.bootTime
				m.Summary.Runtime.BootTime = &bt
			}
			for i, mac := range tt.cards {
				m.Config.Hardware.Device = append(m.Config.Hardware.Device, &types.VirtualVmxnet3{VirtualVmxnet: types.VirtualVmxnet{
					VirtualEthernetCard: types.VirtualEthernetCard{VirtualDevice: types.VirtualDevice{Key: int32(4000 + i)}, MacAddress: mac}}})
			}
			setGuestNetwork(rec, m, tt.booted, boot)
			if !slices.Equal(rec.Status.IPs, tt.wantIPs) && (len(rec.Status.IPs) != 0 || len(tt.wantIPs) != 0) {
				t.Errorf("status.ips %v, want %v", rec.Status.IPs, tt.wantIPs)
			}
			var reasons []string
			for i, in := range rec.Status.Network.Interfaces {
				reasons = append(reasons, in.Reason)
				if configured := len(in.IP.Addresses) > 0; configured != (in.Reason == "") {
					t.Errorf("interface %d %+v: addresses and reason disagree", i, in)
				}
			}
			if !slices.Equal(reasons, tt.wantReasons) {
				t.Errorf("interface reasons %q, want %q", reasons, tt.wantReasons)
			}
			c, _ := rec.Condition(events.VMConditionGuestNetworkConfigured)
			if wantStatus := map[bool]string{true: events.ConditionTrue, false: events.ConditionFalse}[tt.wantCond == ""]; c.Status != wantStatus || c.Reason != tt.wantCond {
				t.Errorf("GuestNetworkConfigured %+v, want %s %s", c, wantStatus, tt.wantCond)
			}
			if !strings.Contains(c.Message, tt.wantMessage) {
				t.Errorf("GuestNetworkConfigured message %q, want it to say %q", c.Message, tt.wantMessage)
			}
			if tt.wantMessage == "" && strings.Contains(c.Message, "no boot time") {
				t.Errorf("GuestNetworkConfigured message %q: the boot time is known", c.Message)
			}
			got := rec.Status.Network.GuestBoot
			if (got == nil) != (tt.wantBoot == nil) || got != nil && (!got.Time.Equal(tt.wantBoot.Time) || !maps.Equal(got.Addresses, tt.wantBoot.Addresses)) {
				t.Errorf("guest boot %+v, want %+v", got, tt.wantBoot)
			}
		})
	}
}
