package sim

import (
	"context"
	"fmt"
	"slices"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/sim/guest"
)

// A distributed port group is realized as a real layer 2 segment (package
// segment): one bridge per port group, created when the port group appears
// and removed when it goes. A host carries a port group while it is a
// member of the port group's switch; only then are the NICs of the VMs on
// that host plugged into the segment. vcsim leaves host.network stale when
// a host leaves a switch, so membership is read from the switch itself.
//
// reconcileSegments runs after every switch or port group task (and once
// at start): it reads the inventory, makes the bridges match the port
// groups, and tells the guest manager which host carries which segment.

// reconcileSegmentsLogged is reconcileSegments for the task observer,
// which has no one to return an error to.
func (d *Datacenter) reconcileSegmentsLogged() {
	if err := d.reconcileSegments(context.Background()); err != nil {
		d.guestLog("network segments", "", err)
	}
}

func (d *Datacenter) reconcileSegments(ctx context.Context) error {
	// Network tasks of the datacenter's own construction start this before
	// the guests exist: segMu orders it after startGuests.
	d.segMu.Lock()
	defer d.segMu.Unlock()
	if d.fabric == nil || d.guests == nil {
		return nil
	}
	c := d.context(ctx)
	members := map[types.ManagedObjectReference][]types.ManagedObjectReference{}
	for _, kind := range []string{"VmwareDistributedVirtualSwitch", "DistributedVirtualSwitch"} {
		for _, e := range c.Map.All(kind) {
			sw, ok := e.(*simulator.DistributedVirtualSwitch)
			if !ok {
				continue
			}
			c.WithLock(sw, func() { members[sw.Self] = slices.Clone(sw.Summary.HostMember) })
		}
	}
	carried := map[string]map[string]bool{}
	want := map[string]bool{}
	for _, e := range c.Map.All("DistributedVirtualPortgroup") {
		pg, ok := e.(*simulator.DistributedVirtualPortgroup)
		if !ok {
			continue
		}
		var key string
		var sw *types.ManagedObjectReference
		c.WithLock(pg, func() {
			key = pg.Key
			if pg.Config.DistributedVirtualSwitch != nil {
				ref := *pg.Config.DistributedVirtualSwitch
				sw = &ref
			}
		})
		if sw == nil {
			continue
		}
		want[key] = true
		for _, h := range members[*sw] {
			name := d.hostName(h)
			if carried[name] == nil {
				carried[name] = map[string]bool{}
			}
			carried[name][key] = true
		}
	}
	for _, key := range d.fabric.Segments() {
		if !want[key] {
			if err := d.fabric.Remove(key); err != nil {
				return fmt.Errorf("sim: remove segment of port group %s: %w", key, err)
			}
		}
	}
	for key := range want {
		if _, err := d.fabric.Ensure(key); err != nil {
			return fmt.Errorf("sim: segment of port group %s: %w", key, err)
		}
	}
	d.guests.SetSegments(carried)
	return nil
}

// vmNICs lists a VM's network cards in device order with their port group
// key (distributed port backing) and MAC.
func vmNICs(devices object.VirtualDeviceList) []guest.NIC {
	var out []guest.NIC
	for _, dev := range devices {
		card, ok := dev.(types.BaseVirtualEthernetCard)
		if !ok {
			continue
		}
		c := card.GetVirtualEthernetCard()
		n := guest.NIC{MAC: c.MacAddress}
		if b, ok := c.Backing.(*types.VirtualEthernetCardDistributedVirtualPortBackingInfo); ok {
			n.Segment = b.Port.PortgroupKey
		}
		out = append(out, n)
	}
	return out
}

// Segment describes the layer 2 segment of a port group (by key): its
// bridge ("" when it has none) and the hosts that carry it.
func (d *Datacenter) Segment(portGroupKey string) (bridge string, hosts []string) {
	d.segMu.Lock()
	defer d.segMu.Unlock()
	if d.fabric == nil || d.guests == nil {
		return "", nil
	}
	return d.fabric.Bridge(portGroupKey), d.guests.Carriers(portGroupKey)
}
