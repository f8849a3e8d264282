package sim

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// Management network simulation.
//
// On a real site a bad network change can cut a host off its management
// network: put the VLAN vCenter reaches the host on onto a port group of a
// switch the host's management uplinks are on, and vCenter soon reports the
// host not responding. vcsim has no data plane, so this file adds the rule:
// once a management VLAN is set, a host that is a member of a distributed
// switch carrying a port group with that VLAN stops responding (through the
// simulator's update path, so property-collector watchers see it), and
// responds again once no such port group is left on it. Network-config's
// rollback is exercised against exactly this.

// managementScan is how often the rule is re-evaluated: well under the
// probe windows callers use, cheap for thousands of hosts.
const managementScan = 20 * time.Millisecond

type managementWatch struct {
	mu   sync.Mutex
	vlan int32
	// cut holds the hosts this rule made not responding (and only those: a
	// host failed with FailHost stays failed).
	cut map[types.ManagedObjectReference]bool
}

var managementWatches sync.Map // *Datacenter → *managementWatch

// SetManagementVLAN marks vlan (1-4094) as the management VLAN; 0 turns the
// rule off and reconnects the hosts it cut off. The rule runs until the
// datacenter is closed.
func (d *Datacenter) SetManagementVLAN(vlan int) error {
	if vlan < 0 || vlan > 4094 {
		return fmt.Errorf("sim: management vlan %d: must be between 1 and 4094, or 0 to turn the rule off", vlan)
	}
	v, loaded := managementWatches.LoadOrStore(d, &managementWatch{cut: map[types.ManagedObjectReference]bool{}})
	w := v.(*managementWatch)
	w.mu.Lock()
	w.vlan = int32(vlan)
	w.mu.Unlock()
	if !loaded {
		go d.watchManagement(w)
	}
	d.scanManagement(w) // apply at once, not a tick later
	return nil
}

// ManagementVLAN returns the management VLAN (0 when the rule is off).
func (d *Datacenter) ManagementVLAN() int {
	if v, ok := managementWatches.Load(d); ok {
		w := v.(*managementWatch)
		w.mu.Lock()
		defer w.mu.Unlock()
		return int(w.vlan)
	}
	return 0
}

func (d *Datacenter) watchManagement(w *managementWatch) {
	t := time.NewTicker(managementScan)
	defer t.Stop()
	defer managementWatches.Delete(d)
	for range t.C {
		d.mu.Lock()
		closed := d.closed
		d.mu.Unlock()
		if closed {
			return
		}
		d.scanManagement(w)
	}
}

// scanManagement applies the rule once.
func (d *Datacenter) scanManagement(w *managementWatch) {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := d.context(context.Background())

	// Switches that carry a port group on the management VLAN.
	badSwitch := map[types.ManagedObjectReference]bool{}
	if w.vlan > 0 {
		for _, e := range c.Map.All("DistributedVirtualPortgroup") {
			pg, ok := e.(*simulator.DistributedVirtualPortgroup)
			if !ok {
				continue
			}
			var vlan int32 = -1
			var sw *types.ManagedObjectReference
			c.WithLock(pg, func() {
				sw = pg.Config.DistributedVirtualSwitch
				if s, ok := pg.Config.DefaultPortConfig.(*types.VMwareDVSPortSetting); ok && s != nil {
					if v, ok := s.Vlan.(*types.VmwareDistributedVirtualSwitchVlanIdSpec); ok && v != nil {
						vlan = v.VlanId
					}
				}
			})
			if vlan == w.vlan && sw != nil {
				badSwitch[*sw] = true
			}
		}
	}
	// Hosts that are members of such a switch. Membership, not host.network:
	// vcsim leaves stale port group references on a host that left a switch.
	affected := map[types.ManagedObjectReference]bool{}
	for ref := range badSwitch {
		sw, ok := c.Map.Get(ref).(*simulator.DistributedVirtualSwitch)
		if !ok {
			continue
		}
		c.WithLock(sw, func() {
			for _, h := range sw.Summary.HostMember {
				affected[h] = true
			}
		})
	}

	for _, spec := range d.hosts {
		host, ok := c.Map.Get(spec.Ref).(*simulator.HostSystem)
		if !ok {
			continue
		}
		switch {
		case affected[spec.Ref] && !w.cut[spec.Ref]:
			var state types.HostSystemConnectionState
			c.WithLock(host, func() { state = host.Runtime.ConnectionState })
			if state != types.HostSystemConnectionStateConnected {
				continue // already down for another reason: not ours to restore
			}
			setConnection(c, host, types.HostSystemConnectionStateNotResponding)
			d.refreshClusterOf(c, host)
			w.cut[spec.Ref] = true
		case !affected[spec.Ref] && w.cut[spec.Ref]:
			setConnection(c, host, types.HostSystemConnectionStateConnected)
			d.refreshClusterOf(c, host)
			delete(w.cut, spec.Ref)
		}
	}
}
