package sim

import (
	"context"
	"fmt"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// SetManagementVLAN declares the VLAN of the hosts' management network and
// turns on a rule a real site enforces the hard way: a host that carries a
// distributed port group tagged with the management VLAN loses its management
// network and stops responding (runtime.connectionState notResponding, seen
// by watchers), and responds again once no such port group is on it. This is
// how network-config's connectivity probe and rollback are exercised.
//
// The rule is evaluated now and after every port group or switch task. 0
// turns it off and reconnects the hosts it had cut off.
//
// A management VLAN also gives every host a management port of its own
// (mgmtport.go): a host whose port is edited off the VLAN stops responding
// alone, until a port scoped to it carries the VLAN again.
func (d *Datacenter) SetManagementVLAN(vlan int32) error {
	if vlan < 0 || vlan > 4094 {
		return fmt.Errorf("sim: management VLAN: %d is out of range 0..4094", vlan)
	}
	d.stateMu.Lock()
	previous := d.mgmtVLAN
	d.mgmtVLAN = vlan
	d.ensureManagementPorts(d.context(context.Background()), previous)
	d.stateMu.Unlock()
	d.reconcileManagement(context.Background())
	return nil
}

// ManagementVLAN returns the VLAN set by SetManagementVLAN, 0 when none.
func (d *Datacenter) ManagementVLAN() int32 {
	d.stateMu.Lock()
	defer d.stateMu.Unlock()
	return d.mgmtVLAN
}

// reconcileManagement cuts off the hosts that carry a port group on the
// management VLAN and restores those that no longer do.
func (d *Datacenter) reconcileManagement(ctx context.Context) {
	d.stateMu.Lock()
	defer d.stateMu.Unlock()
	if d.mgmtVLAN == 0 && len(d.cut) == 0 {
		return
	}
	c := d.context(ctx)
	want := map[types.ManagedObjectReference]bool{}
	if d.mgmtVLAN != 0 {
		for _, e := range c.Map.All("DistributedVirtualPortgroup") {
			pg, ok := e.(*simulator.DistributedVirtualPortgroup)
			if !ok {
				continue
			}
			c.WithLock(pg, func() {
				if portGroupVLAN(pg.Config.DefaultPortConfig) == d.mgmtVLAN {
					for _, h := range pg.Host {
						want[h] = true
					}
				}
			})
		}
	}
	if d.mgmtVLAN != 0 {
		for h := range d.managementCut() {
			want[h] = true // its own management port is misconfigured (mgmtport.go)
		}
	}
	for _, spec := range d.hosts {
		if want[spec.Ref] == d.cut[spec.Ref] {
			continue
		}
		if want[spec.Ref] {
			d.cut[spec.Ref] = true
		} else {
			delete(d.cut, spec.Ref)
		}
		if host, ok := c.Map.Get(spec.Ref).(*simulator.HostSystem); ok {
			d.applyConnection(c, host)
		}
	}
}

// portGroupVLAN is the access VLAN of a port group, -1 for none or a trunk.
func portGroupVLAN(setting types.BaseDVPortSetting) int32 {
	s, ok := setting.(*types.VMwareDVSPortSetting)
	if !ok || s == nil || s.Vlan == nil {
		return -1
	}
	if id, ok := s.Vlan.(*types.VmwareDistributedVirtualSwitchVlanIdSpec); ok && id.VlanId != 0 {
		return id.VlanId
	}
	return -1
}
