package sim

import (
	"fmt"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// hostMethods are the VirtualMachine methods its host carries out. vCenter
// refuses them while the host does not respond (FailHost, or cut off by the
// management VLAN rule): a VM there can be neither powered off nor destroyed,
// only removed from the inventory (UnregisterVM), which leaves its files on
// the datastore. vcsim alone would carry them out, deleting the disks of a
// VM whose host is down.
var hostMethods = map[string]bool{
	"Destroy_Task": true, "PowerOnVM_Task": true, "PowerOffVM_Task": true, "ResetVM_Task": true,
	"SuspendVM_Task": true, "ShutdownGuest": true, "RebootGuest": true, "StandbyGuest": true,
	"ReconfigVM_Task": true, "RelocateVM_Task": true, "MigrateVM_Task": true, "CloneVM_Task": true,
	instantCloneMethod: true, "CreateSnapshot_Task": true, "RevertToCurrentSnapshot_Task": true,
}

// hostDownRefusal is the fault vCenter gives a host's method on a VM whose
// host does not respond, nil for any other call. UnregisterVM of such a VM
// is let through whatever its last known power state (vcsim refuses a
// powered-on VM): its guest is stopped first, as the VM leaves the
// inventory (the host's VM process would be fenced off its disks by their
// locks once another host opens them).
func (d *Datacenter) hostDownRefusal(ctx *simulator.Context, m *simulator.Method) types.BaseMethodFault {
	if !hostMethods[m.Name] && m.Name != "UnregisterVM" {
		return nil
	}
	vm, ok := ctx.Map.Get(m.This).(*simulator.VirtualMachine)
	if !ok {
		return nil
	}
	var host *types.ManagedObjectReference
	ctx.WithLock(vm, func() {
		if vm.Runtime.Host != nil {
			h := *vm.Runtime.Host
			host = &h
		}
	})
	if host == nil {
		return nil
	}
	d.stateMu.Lock()
	down := d.failed[*host] || d.cut[*host]
	d.stateMu.Unlock()
	if !down {
		return nil
	}
	if m.Name == "UnregisterVM" {
		ctx.WithLock(vm, func() {
			if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
				ctx.Update(vm, []types.PropertyChange{
					{Name: "runtime.powerState", Val: types.VirtualMachinePowerStatePoweredOff},
					{Name: "summary.runtime.powerState", Val: types.VirtualMachinePowerStatePoweredOff},
				})
			}
		})
		return nil
	}
	name := host.Value
	if h, ok := ctx.Map.Get(*host).(*simulator.HostSystem); ok {
		name = h.Name
	}
	return &types.InvalidHostConnectionState{InvalidHostState: types.InvalidHostState{
		InvalidState: types.InvalidState{VimFault: types.VimFault{MethodFault: types.MethodFault{
			FaultMessage: []types.LocalizableMessage{{Key: "podvisor.sim.hostNotResponding",
				Message: fmt.Sprintf("%s: the operation is not allowed in the current connection state of host %s (not responding)", m.Name, name)}}}}},
		Host: host,
	}}
}
