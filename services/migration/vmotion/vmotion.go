// Package vmotion is the migration service's window on vCenter: where a pod
// VM runs, whether a host can take it, the vMotion (RelocateVM) task with its
// progress, maintenance mode, and the removal of pod VMs left behind on a
// host that came back after its pods were restarted elsewhere.
//
// It checks what vCenter would check before a vMotion and the simulator does
// not (vcsim relocates onto a disconnected host, a host in maintenance, or a
// host without the VM's datastore, and the last crashes it on the next disk
// operation): callers run Check before Relocate.
package vmotion

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Guestinfo keys the provisioner writes on every pod VM (see the
// provisioner's guestinfo.go); they identify a VM's pod.
const (
	UIDKey       = "guestinfo.podvisor.uid"
	NamespaceKey = "guestinfo.podvisor.namespace"
	PodKey       = "guestinfo.podvisor.name"
)

// VMPrefix starts the name of every pod VM (pv-<uid>).
const VMPrefix = "pv-"

// ErrNotFound is returned (wrapped) for a VM, host or pool vCenter does not
// have.
var ErrNotFound = errors.New("not found")

// Client talks to one datacenter.
type Client struct {
	vc     *vim25.Client
	dc     *object.Datacenter
	finder *find.Finder
}

// New returns a client for the datacenter dc.
func New(vc *vim25.Client, dc *object.Datacenter) *Client {
	f := find.NewFinder(vc, false)
	f.SetDatacenter(dc)
	return &Client{vc: vc, dc: dc, finder: f}
}

// Host is what a migration needs to know about a host.
type Host struct {
	Name string
	Ref  types.ManagedObjectReference
	// ConnectionState is vSphere's: connected, disconnected, notResponding.
	ConnectionState string
	Maintenance     bool
	// Datastores are the names of the datastores mounted on the host.
	Datastores []string
	// Pool is the root resource pool of the host's cluster.
	Pool types.ManagedObjectReference
}

// Connected reports whether the host answers and is out of maintenance.
func (h *Host) Connected() bool {
	return h.ConnectionState == string(types.HostSystemConnectionStateConnected)
}

// Host looks a host up by name.
func (c *Client) Host(ctx context.Context, name string) (*Host, error) {
	hs, err := c.finder.HostSystem(ctx, name)
	if err != nil {
		var nf *find.NotFoundError
		if errors.As(err, &nf) {
			return nil, fmt.Errorf("host %s: %w", name, ErrNotFound)
		}
		return nil, fmt.Errorf("host %s: %w", name, err)
	}
	var m mo.HostSystem
	if err := hs.Properties(ctx, hs.Reference(), []string{"name", "parent", "runtime", "datastore"}, &m); err != nil {
		return nil, fmt.Errorf("host %s: %w", name, err)
	}
	h := &Host{Name: m.Name, Ref: m.Self, ConnectionState: string(m.Runtime.ConnectionState), Maintenance: m.Runtime.InMaintenanceMode}
	names, err := c.names(ctx, m.Datastore)
	if err != nil {
		return nil, fmt.Errorf("host %s datastores: %w", name, err)
	}
	h.Datastores = names
	if m.Parent != nil {
		var cr mo.ComputeResource
		if err := property.DefaultCollector(c.vc).RetrieveOne(ctx, *m.Parent, []string{"resourcePool"}, &cr); err != nil {
			return nil, fmt.Errorf("host %s cluster: %w", name, err)
		}
		if cr.ResourcePool != nil {
			h.Pool = *cr.ResourcePool
		}
	}
	return h, nil
}

func (c *Client) names(ctx context.Context, refs []types.ManagedObjectReference) ([]string, error) {
	if len(refs) == 0 {
		return nil, nil
	}
	var ms []mo.ManagedEntity
	if err := property.DefaultCollector(c.vc).Retrieve(ctx, refs, []string{"name"}, &ms); err != nil {
		return nil, err
	}
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		out = append(out, m.Name)
	}
	slices.Sort(out)
	return out, nil
}

// VM is a pod VM as vCenter reports it.
type VM struct {
	Ref  types.ManagedObjectReference
	Name string
	// Host is the name of the host it runs on (runtime.host; vcsim leaves
	// host.vm stale after a relocation, so runtime.host is the truth).
	Host       string
	PowerState string
	// Datastores are the names of the datastores holding its files.
	Datastores []string
	// UID, Namespace and Pod come from its guestinfo; empty when absent.
	UID, Namespace, Pod string
}

var vmProps = []string{"name", "runtime.host", "runtime.powerState", "datastore", "config.extraConfig"}

// VM reads one VM by reference.
func (c *Client) VM(ctx context.Context, ref string) (*VM, error) {
	moref := types.ManagedObjectReference{Type: "VirtualMachine", Value: ref}
	var m mo.VirtualMachine
	if err := property.DefaultCollector(c.vc).RetrieveOne(ctx, moref, vmProps, &m); err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("VM %s: %w", ref, ErrNotFound)
		}
		return nil, fmt.Errorf("VM %s: %w", ref, err)
	}
	vms, err := c.toVMs(ctx, []mo.VirtualMachine{m})
	if err != nil {
		return nil, err
	}
	return &vms[0], nil
}

// VMsOnHost lists the pod VMs (named pv-…) whose runtime.host is the host.
func (c *Client) VMsOnHost(ctx context.Context, host string) ([]VM, error) {
	h, err := c.Host(ctx, host)
	if err != nil {
		return nil, err
	}
	m := newViews(c.vc)
	v, err := m.CreateContainerView(ctx, c.dc.Reference(), []string{"VirtualMachine"}, true)
	if err != nil {
		return nil, err
	}
	defer func() { _ = v.Destroy(context.WithoutCancel(ctx)) }()
	var all []mo.VirtualMachine
	if err := v.Retrieve(ctx, []string{"VirtualMachine"}, vmProps, &all); err != nil {
		return nil, fmt.Errorf("list VMs: %w", err)
	}
	var on []mo.VirtualMachine
	for _, vm := range all {
		if vm.Runtime.Host != nil && *vm.Runtime.Host == h.Ref && strings.HasPrefix(vm.Name, VMPrefix) {
			on = append(on, vm)
		}
	}
	return c.toVMs(ctx, on)
}

func (c *Client) toVMs(ctx context.Context, ms []mo.VirtualMachine) ([]VM, error) {
	hostNames := map[types.ManagedObjectReference]string{}
	out := make([]VM, 0, len(ms))
	for _, m := range ms {
		vm := VM{Ref: m.Self, Name: m.Name, PowerState: string(m.Runtime.PowerState)}
		if m.Runtime.Host != nil {
			name, ok := hostNames[*m.Runtime.Host]
			if !ok {
				names, err := c.names(ctx, []types.ManagedObjectReference{*m.Runtime.Host})
				if err != nil {
					return nil, fmt.Errorf("VM %s host: %w", m.Name, err)
				}
				if len(names) == 1 {
					name = names[0]
				}
				hostNames[*m.Runtime.Host] = name
			}
			vm.Host = name
		}
		ds, err := c.names(ctx, m.Datastore)
		if err != nil {
			return nil, fmt.Errorf("VM %s datastores: %w", m.Name, err)
		}
		vm.Datastores = ds
		if m.Config != nil {
			for _, o := range m.Config.ExtraConfig {
				ov := o.GetOptionValue()
				s, _ := ov.Value.(string)
				switch ov.Key {
				case UIDKey:
					vm.UID = s
				case NamespaceKey:
					vm.Namespace = s
				case PodKey:
					vm.Pod = s
				}
			}
		}
		out = append(out, vm)
	}
	return out, nil
}

// Move is one relocation: the VM goes to Host, into Pool (the target
// cluster's resource pool, which is what makes a cross-cluster move work).
type Move struct {
	VM   string // managed object reference value, e.g. vm-57
	Host types.ManagedObjectReference
	Pool types.ManagedObjectReference
}

// StartRelocate starts the RelocateVM task and returns its reference, which
// the caller records before waiting so that a restart waits for this task
// rather than starting another.
func (c *Client) StartRelocate(ctx context.Context, mv Move) (types.ManagedObjectReference, error) {
	vm := object.NewVirtualMachine(c.vc, types.ManagedObjectReference{Type: "VirtualMachine", Value: mv.VM})
	spec := types.VirtualMachineRelocateSpec{Host: &mv.Host}
	if mv.Pool.Value != "" {
		spec.Pool = &mv.Pool
	}
	t, err := vm.Relocate(ctx, spec, types.VirtualMachineMovePriorityHighPriority)
	if err != nil {
		return types.ManagedObjectReference{}, fmt.Errorf("relocate %s: %w", mv.VM, err)
	}
	return t.Reference(), nil
}

// Wait waits for a task, reporting its progress (0-100) to report as vCenter
// updates it. When ctx ends first it returns ctx's error and leaves the task
// running: a process that stops keeps its vMotion going and waits for it
// again after a restart; a caller that gave up on the task calls CancelTask.
func (c *Client) Wait(ctx context.Context, ref types.ManagedObjectReference, report func(percent int)) error {
	_, err := object.NewTask(c.vc, ref).WaitForResultEx(ctx, progressSink(report))
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return faultMessage(err)
	}
	return nil
}

// CancelTask asks vCenter to cancel a task (best effort: vCenter refuses
// once a vMotion's switch-over began).
func (c *Client) CancelTask(ctx context.Context, ref types.ManagedObjectReference) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), defaultCancelTimeout)
	defer cancel()
	return object.NewTask(c.vc, ref).Cancel(cctx)
}

// EnterMaintenance puts a host in maintenance mode. vCenter (and the
// simulated datacenter) refuses while powered-on VMs run on it.
func (c *Client) EnterMaintenance(ctx context.Context, host string) error {
	h, err := c.Host(ctx, host)
	if err != nil {
		return err
	}
	if h.Maintenance {
		return nil
	}
	t, err := object.NewHostSystem(c.vc, h.Ref).EnterMaintenanceMode(ctx, 0, false, nil)
	if err != nil {
		return fmt.Errorf("enter maintenance mode on %s: %w", host, faultMessage(err))
	}
	if err := t.Wait(ctx); err != nil {
		return fmt.Errorf("enter maintenance mode on %s: %w", host, faultMessage(err))
	}
	return nil
}

// ExitMaintenance takes a host out of maintenance mode.
func (c *Client) ExitMaintenance(ctx context.Context, host string) error {
	h, err := c.Host(ctx, host)
	if err != nil {
		return err
	}
	if !h.Maintenance {
		return nil
	}
	t, err := object.NewHostSystem(c.vc, h.Ref).ExitMaintenanceMode(ctx, 0)
	if err != nil {
		return fmt.Errorf("exit maintenance mode on %s: %w", host, faultMessage(err))
	}
	if err := t.Wait(ctx); err != nil {
		return fmt.Errorf("exit maintenance mode on %s: %w", host, faultMessage(err))
	}
	return nil
}

// Destroy powers a VM off and destroys it. A VM already gone counts as
// destroyed: a delete is done when the object is gone.
func (c *Client) Destroy(ctx context.Context, ref types.ManagedObjectReference) error {
	vm := object.NewVirtualMachine(c.vc, ref)
	state, err := vm.PowerState(ctx)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("destroy %s: %w", ref.Value, err)
	}
	if state == types.VirtualMachinePowerStatePoweredOn {
		t, err := vm.PowerOff(ctx)
		if err == nil {
			err = t.Wait(ctx)
		}
		if err != nil && !isNotFound(err) {
			return fmt.Errorf("power off %s: %w", ref.Value, err)
		}
	}
	t, err := vm.Destroy(ctx)
	if err == nil {
		err = t.Wait(ctx)
	}
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("destroy %s: %w", ref.Value, err)
	}
	return nil
}
