package sim

import (
	"fmt"
	"slices"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Management ports. With a management VLAN set (SetManagementVLAN), every
// host's management VMkernel NIC (vmk0) is connected to a port of its own
// on pv-dvs: a standalone distributed port (in no port group), key
// ManagementPortKey(host), scope the host, tagged with the management VLAN.
// vcsim has no per-port state, so the simulated datacenter keeps these
// ports and serves the two calls that read and change them:
//
//   - FetchDVPorts returns vcsim's port group ports plus the standalone
//     ports (filtered by the criteria's port keys; standalone ports are
//     inside no port group);
//   - ReconfigureDVPort_Task adds, edits (setting: VLAN, blocked; name,
//     description, scope) and removes standalone ports; a port group's
//     ports are refused (their settings are the port group's).
//
// A host has its management network while at least one port scoped to it
// carries the management VLAN and is not blocked. Editing a host's port
// onto another VLAN (or blocking it) is the misconfiguration a real site
// suffers: that host alone stops responding. A second port scoped to the
// same host with the good setting is an alternate management channel: the
// host responds through it, which is how network-config reaches a host
// whose own port it must repair. The rule is evaluated with the port group
// rule after every switch task (ReconfigureDVPort_Task included).

// ManagementNIC is the VMkernel NIC the management ports connect.
const ManagementNIC = "vmk0"

// ManagementPortKey is the key of host's management port on pv-dvs.
func ManagementPortKey(host string) string { return "mgmt-" + host }

// standalonePort is a distributed port in no port group.
type standalonePort struct {
	dvs  types.ManagedObjectReference
	port types.DistributedVirtualPort
}

// ensureManagementPorts gives every host a management port on pv-dvs with
// the management VLAN, and moves the ports still on the previous
// management VLAN to the new one. Called with stateMu held.
func (d *Datacenter) ensureManagementPorts(c *simulator.Context, previous int32) {
	if d.mgmtVLAN == 0 {
		return
	}
	if d.ports == nil {
		d.ports = map[string]*standalonePort{}
	}
	uuid := ""
	if sw, ok := c.Map.Get(d.dvs).(*simulator.DistributedVirtualSwitch); ok {
		c.WithLock(sw, func() { uuid = sw.Uuid })
	}
	for _, h := range d.hosts {
		key := ManagementPortKey(h.Name)
		if p, ok := d.ports[key]; ok {
			if previous != 0 && portVLAN(p.port.Config.Setting) == previous {
				p.port.Config.Setting = vlanSetting(d.mgmtVLAN, portBlocked(p.port.Config.Setting))
			}
			continue
		}
		d.ports[key] = &standalonePort{dvs: d.dvs, port: types.DistributedVirtualPort{
			Key:     key,
			DvsUuid: uuid,
			Config: types.DVPortConfigInfo{
				Name:        h.Name + " management",
				Scope:       []types.ManagedObjectReference{h.Ref},
				Description: "management network of " + h.Name,
				Setting:     vlanSetting(d.mgmtVLAN, false),
			},
			Connectee: &types.DistributedVirtualSwitchPortConnectee{
				ConnectedEntity: &h.Ref,
				NicKey:          ManagementNIC,
				Type:            string(types.DistributedVirtualSwitchPortConnecteeConnecteeTypeHostVmkVnic),
			},
		}}
	}
}

// managementCut lists the hosts that have management ports but none that
// works (scoped to them, on the management VLAN, not blocked). Called with
// stateMu held.
func (d *Datacenter) managementCut() map[types.ManagedObjectReference]bool {
	has := map[types.ManagedObjectReference]bool{}
	works := map[types.ManagedObjectReference]bool{}
	for _, p := range d.ports {
		ok := portVLAN(p.port.Config.Setting) == d.mgmtVLAN && !portBlocked(p.port.Config.Setting)
		for _, h := range p.port.Config.Scope {
			has[h] = true
			works[h] = works[h] || ok
		}
	}
	out := map[types.ManagedObjectReference]bool{}
	for h := range has {
		if !works[h] {
			out[h] = true
		}
	}
	return out
}

// portSwitch serves the port calls of one distributed switch; every other
// method still resolves on the embedded switch.
type portSwitch struct {
	*simulator.DistributedVirtualSwitch
	d *Datacenter
}

// FetchDVPorts is vcsim's answer plus the standalone ports.
func (s *portSwitch) FetchDVPorts(ctx *simulator.Context, req *types.FetchDVPorts) soap.HasFault {
	s.leave(ctx)
	body, ok := s.DistributedVirtualSwitch.FetchDVPorts(ctx, req).(*methods.FetchDVPortsBody)
	if !ok || body.Res == nil {
		return body
	}
	body.Res.Returnval = append(body.Res.Returnval, s.d.standalonePorts(s.Self, req.Criteria)...)
	return body
}

// standalonePorts returns copies of a switch's standalone ports that match
// criteria, by key.
func (d *Datacenter) standalonePorts(dvs types.ManagedObjectReference, criteria *types.DistributedVirtualSwitchPortCriteria) []types.DistributedVirtualPort {
	if criteria != nil && criteria.Inside != nil && *criteria.Inside && len(criteria.PortgroupKey) > 0 {
		return nil // inside port groups: a standalone port is in none
	}
	d.stateMu.Lock()
	defer d.stateMu.Unlock()
	var out []types.DistributedVirtualPort
	for _, p := range d.ports {
		if p.dvs != dvs || (criteria != nil && len(criteria.PortKey) > 0 && !slices.Contains(criteria.PortKey, p.port.Key)) {
			continue
		}
		cp := p.port
		cp.Config.Scope = slices.Clone(cp.Config.Scope)
		out = append(out, cp)
	}
	slices.SortFunc(out, func(a, b types.DistributedVirtualPort) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// ReconfigureDVPortTask adds, edits and removes standalone ports.
func (s *portSwitch) ReconfigureDVPortTask(ctx *simulator.Context, req *types.ReconfigureDVPort_Task) soap.HasFault {
	s.leave(ctx)
	if err := s.d.checkPortSpecs(s.Self, req.Port); err != nil {
		return &methods.ReconfigureDVPort_TaskBody{Fault_: simulator.Fault(err.Error(), &types.InvalidArgument{InvalidProperty: "port"})}
	}
	uuid := s.Uuid
	task := simulator.CreateTask(s.DistributedVirtualSwitch, "reconfigureDVPort", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		s.d.applyPortSpecs(s.Self, uuid, req.Port)
		return nil, nil
	})
	return &methods.ReconfigureDVPort_TaskBody{Res: &types.ReconfigureDVPort_TaskResponse{Returnval: task.Run(ctx)}}
}

// checkPortSpecs refuses what the simulator cannot apply: a port group's
// ports, an unknown port, a key that is taken, an unknown operation.
func (d *Datacenter) checkPortSpecs(dvs types.ManagedObjectReference, specs []types.DVPortConfigSpec) error {
	d.stateMu.Lock()
	defer d.stateMu.Unlock()
	for i, sp := range specs {
		p, exists := d.ports[sp.Key]
		if exists && p.dvs != dvs {
			exists = false
		}
		switch sp.Operation {
		case string(types.ConfigSpecOperationAdd):
			if sp.Key != "" && exists {
				return fmt.Errorf("port[%d]: key %s is taken", i, sp.Key)
			}
		case string(types.ConfigSpecOperationEdit), string(types.ConfigSpecOperationRemove):
			if !exists {
				return fmt.Errorf("port[%d]: %s is not a standalone port of this switch (the simulator keeps no per-port state of port groups)", i, sp.Key)
			}
		default:
			return fmt.Errorf("port[%d]: operation %q: want add, edit or remove", i, sp.Operation)
		}
	}
	return nil
}

// applyPortSpecs applies checked specs.
func (d *Datacenter) applyPortSpecs(dvs types.ManagedObjectReference, uuid string, specs []types.DVPortConfigSpec) {
	d.stateMu.Lock()
	defer d.stateMu.Unlock()
	if d.ports == nil {
		d.ports = map[string]*standalonePort{}
	}
	for _, sp := range specs {
		switch sp.Operation {
		case string(types.ConfigSpecOperationAdd):
			key := sp.Key
			for key == "" || d.ports[key] != nil {
				d.portSeq++
				key = fmt.Sprintf("port-%d", d.portSeq)
			}
			d.ports[key] = &standalonePort{dvs: dvs, port: types.DistributedVirtualPort{
				Key: key, DvsUuid: uuid,
				Config: types.DVPortConfigInfo{Name: sp.Name, Description: sp.Description, Scope: slices.Clone(sp.Scope),
					Setting: vlanSetting(portVLAN(sp.Setting), portBlocked(sp.Setting))},
			}}
		case string(types.ConfigSpecOperationEdit):
			p := d.ports[sp.Key]
			if sp.Name != "" {
				p.port.Config.Name = sp.Name
			}
			if sp.Description != "" {
				p.port.Config.Description = sp.Description
			}
			if sp.Scope != nil {
				p.port.Config.Scope = slices.Clone(sp.Scope)
			}
			if sp.Setting != nil {
				vlan, blocked := portVLAN(p.port.Config.Setting), portBlocked(p.port.Config.Setting)
				if s, ok := sp.Setting.(*types.VMwareDVSPortSetting); ok && s.Vlan != nil {
					vlan = portVLAN(sp.Setting)
				}
				if s := sp.Setting.GetDVPortSetting(); s != nil && s.Blocked != nil && s.Blocked.Value != nil {
					blocked = *s.Blocked.Value
				}
				p.port.Config.Setting = vlanSetting(vlan, blocked)
			}
		case string(types.ConfigSpecOperationRemove):
			delete(d.ports, sp.Key)
		}
	}
}

// vlanSetting is a port setting with an access VLAN (0: none) and a block.
func vlanSetting(vlan int32, blocked bool) *types.VMwareDVSPortSetting {
	return &types.VMwareDVSPortSetting{
		DVPortSetting: types.DVPortSetting{Blocked: &types.BoolPolicy{Value: types.NewBool(blocked)}},
		Vlan:          &types.VmwareDistributedVirtualSwitchVlanIdSpec{VlanId: max(vlan, 0)},
	}
}

// portVLAN is the access VLAN of a port setting, 0 for none.
func portVLAN(setting types.BaseDVPortSetting) int32 {
	return max(portGroupVLAN(setting), 0)
}

// portBlocked reports whether a port setting blocks the port.
func portBlocked(setting types.BaseDVPortSetting) bool {
	if setting == nil {
		return false
	}
	s := setting.GetDVPortSetting()
	return s != nil && s.Blocked != nil && s.Blocked.Value != nil && *s.Blocked.Value
}

// portHandler routes a switch's port calls to portSwitch. vcsim prefers
// the calling session's registry, which falls back to the global one, so
// the wrapper goes into the session's registry for this one call (as
// instantCloner does) and takes itself out first thing.
func (d *Datacenter) portHandler(ctx *simulator.Context, m *simulator.Method) mo.Reference {
	if m.Name != "FetchDVPorts" && m.Name != "ReconfigureDVPort_Task" {
		return nil
	}
	sw, ok := ctx.Map.Get(m.This).(*simulator.DistributedVirtualSwitch)
	if !ok {
		return nil
	}
	h := &portSwitch{DistributedVirtualSwitch: sw, d: d}
	if ctx.Session != nil {
		ctx.Session.Registry.Put(h)
	}
	return h
}

// leave takes the wrapper out of the session's registry.
func (s *portSwitch) leave(ctx *simulator.Context) {
	if ctx.Session != nil {
		ctx.Session.Registry.Remove(ctx, s.Self)
	}
}
