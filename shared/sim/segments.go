package sim

import (
	"context"
	"fmt"
	"maps"
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
	membership := map[string]map[string]bool{}
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
			if membership[name] == nil {
				membership[name] = map[string]bool{}
			}
			membership[name][key] = true
			if carried[name] == nil {
				carried[name] = map[string]bool{}
			}
			carried[name][key] = true
		}
	}
	for host, keys := range d.agentSegments {
		carried[host] = map[string]bool{}
		for key := range keys {
			if want[key] {
				carried[host][key] = true
			}
		}
	}
	d.lastMembership = membership
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
		// A card neither connected nor connecting at power-on has its
		// cable out: on no segment, whatever its backing says.
		cabled := c.Connectable == nil || c.Connectable.Connected || c.Connectable.StartConnected
		if b, ok := c.Backing.(*types.VirtualEthernetCardDistributedVirtualPortBackingInfo); ok && cabled {
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

// HostSegments hands one host's segments to its host agent: from now on
// the host carries the segments the agent says (starting from what switch
// membership gave it), not what membership says, as a real host applies
// the state its agent pushes. The bridges still follow the port groups.
func (d *Datacenter) HostSegments(host string) *HostSegments {
	d.segMu.Lock()
	defer d.segMu.Unlock()
	if d.agentSegments == nil {
		d.agentSegments = map[string]map[string]bool{}
	}
	if _, ok := d.agentSegments[host]; !ok {
		d.agentSegments[host] = maps.Clone(d.lastMembership[host])
		if d.agentSegments[host] == nil {
			d.agentSegments[host] = map[string]bool{}
		}
	}
	return &HostSegments{d: d, host: host}
}

// HostSegments is one host's layer 2 segments as its host agent sees and
// changes them (see Datacenter.HostSegments).
type HostSegments struct {
	d    *Datacenter
	host string
}

// Carried lists the port groups whose segment the host carries, key →
// port group name.
func (h *HostSegments) Carried(ctx context.Context) (map[string]string, error) {
	names, err := h.d.portGroupNames(ctx)
	if err != nil {
		return nil, err
	}
	h.d.segMu.Lock()
	defer h.d.segMu.Unlock()
	out := map[string]string{}
	for key := range h.d.agentSegments[h.host] {
		if name, ok := names[key]; ok {
			out[key] = name
		}
	}
	return out, nil
}

// Carry makes the host carry the segment of a port group (by key): its
// VMs' cards on it are plugged into the bridge.
func (h *HostSegments) Carry(ctx context.Context, key string) error {
	names, err := h.d.portGroupNames(ctx)
	if err != nil {
		return err
	}
	if _, ok := names[key]; !ok {
		return &NoPortGroupError{Host: h.host, Key: key}
	}
	return h.set(ctx, key, true)
}

// NoPortGroupError is Carry's error for a key the switch has no port group
// of.
type NoPortGroupError struct{ Host, Key string }

func (e *NoPortGroupError) Error() string {
	return fmt.Sprintf("sim: host %s: no port group with key %s", e.Host, e.Key)
}

// PortGroupNotFound says so to a host agent (hostagent.HostNetwork).
func (e *NoPortGroupError) PortGroupNotFound() bool { return true }

// Drop makes the host stop carrying a segment: its VMs' cards on it are
// unplugged.
func (h *HostSegments) Drop(ctx context.Context, key string) error { return h.set(ctx, key, false) }

func (h *HostSegments) set(ctx context.Context, key string, on bool) error {
	h.d.segMu.Lock()
	if on {
		h.d.agentSegments[h.host][key] = true
	} else {
		delete(h.d.agentSegments[h.host], key)
	}
	h.d.segMu.Unlock()
	return h.d.reconcileSegments(ctx)
}

// portGroupNames maps every distributed port group's key to its name.
func (d *Datacenter) portGroupNames(ctx context.Context) (map[string]string, error) {
	c := d.context(ctx)
	out := map[string]string{}
	for _, e := range c.Map.All("DistributedVirtualPortgroup") {
		pg, ok := e.(*simulator.DistributedVirtualPortgroup)
		if !ok {
			continue
		}
		c.WithLock(pg, func() { out[pg.Key] = pg.Name })
	}
	return out, nil
}
