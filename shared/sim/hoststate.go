package sim

import (
	"context"
	"fmt"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// FailHost makes a host stop responding, as when it loses power or its
// management network: runtime.connectionState (and summary.runtime) becomes
// notResponding, its status turns red, the virtual machines registered on it
// become disconnected, and the cluster's effective capacity drops. Property
// collector watchers observe every change. With guests on, the host's
// guests are frozen and their channels cut until RecoverHost.
func (d *Datacenter) FailHost(ctx context.Context, name string) error {
	host, err := d.host(name)
	if err != nil {
		return err
	}
	d.stateMu.Lock()
	defer d.stateMu.Unlock()
	d.failed[host.Self] = true
	d.applyConnection(d.context(ctx), host)
	d.freezeGuests(name, true)
	return nil
}

// RecoverHost undoes FailHost. A host still cut off by the management VLAN
// rule (see SetManagementVLAN) keeps not responding until that is fixed.
func (d *Datacenter) RecoverHost(ctx context.Context, name string) error {
	host, err := d.host(name)
	if err != nil {
		return err
	}
	d.stateMu.Lock()
	defer d.stateMu.Unlock()
	delete(d.failed, host.Self)
	d.applyConnection(d.context(ctx), host)
	d.freezeGuests(name, false)
	return nil
}

// applyConnection publishes the connection state a host should have: not
// responding while it is failed or cut off, connected otherwise. The caller
// holds stateMu.
func (d *Datacenter) applyConnection(c *simulator.Context, host *simulator.HostSystem) {
	state := types.HostSystemConnectionStateConnected
	if d.failed[host.Self] || d.cut[host.Self] {
		state = types.HostSystemConnectionStateNotResponding
	}
	setConnection(c, host, state)
	d.refreshClusterOf(c, host)
}

// SetMaintenance puts a host in or out of maintenance mode without the checks
// EnterMaintenanceMode_Task makes, so a test can reach any state directly.
func (d *Datacenter) SetMaintenance(ctx context.Context, name string, on bool) error {
	host, err := d.host(name)
	if err != nil {
		return err
	}
	c := d.context(ctx)
	setMaintenance(c, host, on)
	d.refreshClusterOf(c, host)
	return nil
}

func (d *Datacenter) host(name string) (*simulator.HostSystem, error) {
	i, ok := d.hostIndex[name]
	if !ok {
		return nil, fmt.Errorf("sim: host %q: %w", name, ErrNotFound)
	}
	host, ok := d.model.Map().Get(d.hosts[i].Ref).(*simulator.HostSystem)
	if !ok {
		return nil, fmt.Errorf("sim: host %q (%s) is no longer in the inventory: %w", name, d.hosts[i].Ref.Value, ErrNotFound)
	}
	return host, nil
}

func (d *Datacenter) refreshClusterOf(c *simulator.Context, host *simulator.HostSystem) {
	var parent types.ManagedObjectReference
	c.WithLock(host, func() { parent = *host.Parent })
	if cluster, ok := c.Map.Get(parent).(*simulator.ClusterComputeResource); ok {
		refreshCluster(c, cluster)
	}
}

func setConnection(c *simulator.Context, host *simulator.HostSystem, state types.HostSystemConnectionState) {
	status := types.ManagedEntityStatusGreen
	vmState := types.VirtualMachineConnectionStateConnected
	switch state {
	case types.HostSystemConnectionStateNotResponding:
		status, vmState = types.ManagedEntityStatusRed, types.VirtualMachineConnectionStateDisconnected
	case types.HostSystemConnectionStateDisconnected:
		status, vmState = types.ManagedEntityStatusGray, types.VirtualMachineConnectionStateDisconnected
	}
	c.WithLock(host, func() {
		c.Update(host, []types.PropertyChange{
			{Name: "runtime.connectionState", Val: state},
			{Name: "summary.runtime.connectionState", Val: state},
			{Name: "overallStatus", Val: status},
			{Name: "summary.overallStatus", Val: status},
		})
	})
	for _, vm := range vmsOnHost(c, host.Self) {
		c.WithLock(vm, func() {
			c.Update(vm, []types.PropertyChange{
				{Name: "runtime.connectionState", Val: vmState},
				{Name: "summary.runtime.connectionState", Val: vmState},
			})
		})
	}
}

func setMaintenance(c *simulator.Context, host *simulator.HostSystem, on bool) {
	c.WithLock(host, func() {
		c.Update(host, []types.PropertyChange{
			{Name: "runtime.inMaintenanceMode", Val: on},
			{Name: "summary.runtime.inMaintenanceMode", Val: on},
		})
	})
}

// vmsOnHost finds the VMs running on a host by runtime.host, not host.vm:
// vcsim's Relocate moves runtime.host but leaves host.vm stale.
func vmsOnHost(c *simulator.Context, host types.ManagedObjectReference) []*simulator.VirtualMachine {
	var out []*simulator.VirtualMachine
	for _, e := range c.Map.All("VirtualMachine") {
		vm, ok := e.(*simulator.VirtualMachine)
		if !ok {
			continue
		}
		var on bool
		c.WithLock(vm, func() { on = vm.Runtime.Host != nil && *vm.Runtime.Host == host })
		if on {
			out = append(out, vm)
		}
	}
	return out
}

// changesOnly is the part of a registry observer (simulator.RegisterObject)
// that hears only of changes: the objects put and removed do not concern it.
type changesOnly struct{}

func (changesOnly) PutObject(*simulator.Context, mo.Reference) {}

func (changesOnly) RemoveObject(*simulator.Context, types.ManagedObjectReference) {}

// hostStateBridge is a registry observer that reacts to finished tasks.
//
// vCenter tasks that change host state: vcsim's EnterMaintenanceMode_Task,
// ExitMaintenanceMode_Task, DisconnectHost_Task and ReconnectHost_Task write
// the field directly and notify no one, so a scheduler watching hosts would
// never see a drained host leave. When one of those tasks succeeds the bridge
// republishes the host's state through the update path, a few milliseconds
// after the task completes.
//
// Network tasks: after any port group or switch change it re-evaluates the
// management VLAN rule (see SetManagementVLAN).
type hostStateBridge struct {
	changesOnly
	d *Datacenter
}

var bridgeRef = types.ManagedObjectReference{Type: "PodvisorHostStateBridge", Value: "bridge"}

func (b *hostStateBridge) Reference() types.ManagedObjectReference { return bridgeRef }

func (b *hostStateBridge) UpdateObject(_ *simulator.Context, obj mo.Reference, changes []types.PropertyChange) {
	// Registry observers get the embedded managed object, not vcsim's wrapper.
	task, ok := obj.(*mo.Task)
	if !ok {
		return
	}
	succeeded := false
	for _, ch := range changes {
		if ch.Name == "info.state" && ch.Val == types.TaskInfoStateSuccess {
			succeeded = true
		}
	}
	if !succeeded {
		return
	}
	// The task's own lock is held here; the host is updated from another
	// goroutine so no lock is taken while holding it.
	if task.Info.Entity == nil {
		return
	}
	switch task.Info.DescriptionId {
	case "HostSystem.enterMaintenanceMode", "HostSystem.exitMaintenanceMode",
		"HostSystem.disconnectHost", "HostSystem.reconnectHost":
		go b.republish(*task.Info.Entity)
	}
	switch task.Info.Entity.Type {
	case "DistributedVirtualPortgroup", "VmwareDistributedVirtualSwitch", "DistributedVirtualSwitch":
		// A port group was added, changed or removed, or hosts joined or
		// left a switch: the management VLAN rule may cut or restore hosts.
		go b.d.reconcileManagement(context.Background())
		go b.d.reconcileSegmentsLogged()
	}
}

// republish pushes a host's current connection and maintenance state.
func (b *hostStateBridge) republish(ref types.ManagedObjectReference) {
	c := b.d.context(context.Background())
	host, ok := c.Map.Get(ref).(*simulator.HostSystem)
	if !ok {
		return
	}
	var state types.HostSystemConnectionState
	var maintenance bool
	c.WithLock(host, func() {
		state, maintenance = host.Runtime.ConnectionState, host.Runtime.InMaintenanceMode
	})
	setConnection(c, host, state)
	setMaintenance(c, host, maintenance)
	b.d.refreshClusterOf(c, host)
}

// maintenanceRule makes EnterMaintenanceMode_Task refuse a host that still
// runs powered-on VMs. vCenter would wait for DRS to evacuate them; there is
// no DRS here (the migration service drains hosts), and vcsim alone would
// enter maintenance with the VMs still running.
func (d *Datacenter) maintenanceRule() *simulator.FaultInjectionRule {
	return &simulator.FaultInjectionRule{
		MethodName:  "EnterMaintenanceMode_Task",
		ObjectType:  "HostSystem",
		ObjectName:  "*",
		Probability: 1,
		Enabled:     true,
		FaultType:   simulator.FaultTypeCustom,
		Fault:       &types.InvalidState{},
		Message:     "the host has powered-on virtual machines: migrate or power them off before entering maintenance mode",
		InclusionPropertyFilter: func(obj mo.Reference) bool {
			host, ok := obj.(*simulator.HostSystem)
			if !ok {
				return false
			}
			c := d.context(context.Background())
			for _, vm := range vmsOnHost(c, host.Self) {
				on := false
				c.WithLock(vm, func() { on = vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn })
				if on {
					return true
				}
			}
			return false
		},
	}
}
