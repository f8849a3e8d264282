package vmotion

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/task"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/vsphere"
)

// Guestinfo keys the provisioner writes on every pod VM (see the
// provisioner's guestinfo.go); they identify a VM's pod (vsphere.PodOf).
const (
	UIDKey       = vsphere.GuestinfoUID
	NamespaceKey = vsphere.GuestinfoNamespace
	PodKey       = vsphere.GuestinfoPod
)

// VMPrefix starts the name of every pod VM (pv-<uid>).
const VMPrefix = "pv-"

// ErrNotFound is returned (wrapped) for a VM, host or pool vCenter does not
// have.
var ErrNotFound = errors.New("not found")

// Client talks to one datacenter.
//
// Host and datastore names, and each cluster's resource pool, are cached:
// prechecks look them up several times per migration, vCenter has no
// cheap lookup by name (the finder walks the inventory), and they change
// rarely. A name not in the cache refreshes it once.
type Client struct {
	vc *vim25.Client
	dc *object.Datacenter

	mu        sync.Mutex
	hostRefs  map[string]types.ManagedObjectReference
	nameByRef map[types.ManagedObjectReference]string
	poolOf    map[types.ManagedObjectReference]types.ManagedObjectReference // host → its cluster's pool
	refreshed time.Time
}

// New returns a client for the datacenter dc.
func New(vc *vim25.Client, dc *object.Datacenter) *Client {
	return &Client{vc: vc, dc: dc}
}

// minRefresh bounds how often a miss re-reads the inventory.
const minRefresh = time.Second

// refresh re-reads hosts (name, cluster pool) and datastores (name).
func (c *Client) refresh(ctx context.Context) error {
	v, err := newViews(c.vc).CreateContainerView(ctx, c.dc.Reference(), []string{"HostSystem", "Datastore", "ComputeResource", "ClusterComputeResource"}, true)
	if err != nil {
		return err
	}
	defer func() { _ = v.Destroy(context.WithoutCancel(ctx)) }()
	var hosts []mo.HostSystem
	if err := v.Retrieve(ctx, []string{"HostSystem"}, []string{"name", "parent"}, &hosts); err != nil {
		return fmt.Errorf("list hosts: %w", err)
	}
	var dss []mo.Datastore
	if err := v.Retrieve(ctx, []string{"Datastore"}, []string{"name"}, &dss); err != nil {
		return fmt.Errorf("list datastores: %w", err)
	}
	var crs []mo.ComputeResource
	if err := v.Retrieve(ctx, []string{"ComputeResource", "ClusterComputeResource"}, []string{"resourcePool"}, &crs); err != nil {
		return fmt.Errorf("list clusters: %w", err)
	}
	pools := map[types.ManagedObjectReference]types.ManagedObjectReference{}
	for _, cr := range crs {
		if cr.ResourcePool != nil {
			pools[cr.Self] = *cr.ResourcePool
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hostRefs = map[string]types.ManagedObjectReference{}
	c.nameByRef = map[types.ManagedObjectReference]string{}
	c.poolOf = map[types.ManagedObjectReference]types.ManagedObjectReference{}
	for _, h := range hosts {
		c.hostRefs[h.Name] = h.Self
		c.nameByRef[h.Self] = h.Name
		if h.Parent != nil {
			c.poolOf[h.Self] = pools[*h.Parent]
		}
	}
	for _, d := range dss {
		c.nameByRef[d.Self] = d.Name
	}
	c.refreshed = time.Now()
	return nil
}

// hostRef finds a host by name, refreshing the cache on a miss.
func (c *Client) hostRef(ctx context.Context, name string) (types.ManagedObjectReference, error) {
	c.mu.Lock()
	ref, ok := c.hostRefs[name]
	stale := time.Since(c.refreshed) > minRefresh
	c.mu.Unlock()
	if ok {
		return ref, nil
	}
	if stale {
		if err := c.refresh(ctx); err != nil {
			return ref, err
		}
		c.mu.Lock()
		ref, ok = c.hostRefs[name]
		c.mu.Unlock()
		if ok {
			return ref, nil
		}
	}
	return ref, fmt.Errorf("host %s: %w", name, ErrNotFound)
}

// nameOf names hosts and datastores from the cache.
func (c *Client) nameOf(ctx context.Context, refs []types.ManagedObjectReference) ([]string, error) {
	out := make([]string, 0, len(refs))
	for pass := 0; pass < 2; pass++ {
		out = out[:0]
		missing := false
		c.mu.Lock()
		for _, r := range refs {
			n, ok := c.nameByRef[r]
			if !ok {
				missing = true
				break
			}
			out = append(out, n)
		}
		c.mu.Unlock()
		if !missing {
			slices.Sort(out)
			return out, nil
		}
		if pass == 0 {
			if err := c.refresh(ctx); err != nil {
				return nil, err
			}
		}
	}
	// Not a host or datastore of this datacenter: ask vCenter.
	return c.retrieveNames(ctx, refs)
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

// Host looks a host up by name and reads its current state.
func (c *Client) Host(ctx context.Context, name string) (*Host, error) {
	ref, err := c.hostRef(ctx, name)
	if err != nil {
		return nil, err
	}
	var m mo.HostSystem
	if err := property.DefaultCollector(c.vc).RetrieveOne(ctx, ref, []string{"name", "runtime", "datastore"}, &m); err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("host %s: %w", name, ErrNotFound)
		}
		return nil, fmt.Errorf("host %s: %w", name, err)
	}
	h := &Host{Name: m.Name, Ref: m.Self, ConnectionState: string(m.Runtime.ConnectionState), Maintenance: m.Runtime.InMaintenanceMode}
	names, err := c.nameOf(ctx, m.Datastore)
	if err != nil {
		return nil, fmt.Errorf("host %s datastores: %w", name, err)
	}
	h.Datastores = names
	c.mu.Lock()
	h.Pool = c.poolOf[ref]
	c.mu.Unlock()
	return h, nil
}

func (c *Client) retrieveNames(ctx context.Context, refs []types.ManagedObjectReference) ([]string, error) {
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
				names, err := c.nameOf(ctx, []types.ManagedObjectReference{*m.Runtime.Host})
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
		ds, err := c.nameOf(ctx, m.Datastore)
		if err != nil {
			return nil, fmt.Errorf("VM %s datastores: %w", m.Name, err)
		}
		vm.Datastores = ds
		id := vsphere.PodOf(m.Config)
		vm.UID, vm.Namespace, vm.Pod = id.UID, id.Namespace, id.Pod
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
//
// The wait is made of slices of WaitSlice: a wait for the task's updates
// that brings nothing within a slice (an update lost, a connection that no
// longer delivers) is not trusted, and the task's state is read from
// vCenter instead; so a task that ended is seen to have ended whatever
// became of the update stream.
func (c *Client) Wait(ctx context.Context, ref types.ManagedObjectReference, report func(percent int)) error {
	var err error
	for attempt := 1; ; {
		// WaitForResult makes a property collector per call: waits for
		// several migrations run at once (WaitForResultEx shares one).
		sctx, cancel := context.WithTimeout(ctx, WaitSlice)
		_, err = object.NewTask(c.vc, ref).WaitForResult(sctx, progressSink(report))
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var te task.Error
		if errors.As(err, &te) {
			return faultMessage(err)
		}
		if sctx.Err() != nil {
			// The slice ended without an answer: ask vCenter.
			st, terr := c.Task(ctx, ref)
			switch {
			case terr == nil && st.Done():
				return st.Err
			case terr == nil:
				continue // still running: wait again
			case errors.Is(terr, ErrNotFound):
				return terr
			}
			err = terr
		}
		// Anything else is the connection to vCenter failing while the
		// task runs on: wait for it again, a few times.
		if attempt == waitAttempts {
			return faultMessage(err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
		}
		attempt++
	}
}

// WaitSlice is how long Wait waits for a task's updates before it reads
// the task's state from vCenter instead.
var WaitSlice = 30 * time.Second

// TaskState is what vCenter says of a task now.
type TaskState struct {
	// State is vSphere's: queued, running, success or error.
	State string
	// Progress is the percentage vCenter reports while it runs.
	Progress int
	// Err is the task's fault when State is error (a cancelled task's
	// RequestCanceled too).
	Err error
	// Cancelled reports that a cancel was asked for and taken.
	Cancelled bool
	// Age is how long ago vCenter queued the task, by vCenter's own clock
	// (so a restarted process judges a task's age as the one that started
	// it did).
	Age time.Duration
}

// Done reports whether the task ended, well or not.
func (s *TaskState) Done() bool {
	return s.State == string(types.TaskInfoStateSuccess) || s.State == string(types.TaskInfoStateError)
}

// Task reads a task's state from vCenter; ErrNotFound (wrapped) when
// vCenter no longer has the task.
func (c *Client) Task(ctx context.Context, ref types.ManagedObjectReference) (*TaskState, error) {
	var t mo.Task
	if err := property.DefaultCollector(c.vc).RetrieveOne(ctx, ref, []string{"info"}, &t); err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("task %s: %w", ref.Value, ErrNotFound)
		}
		return nil, fmt.Errorf("task %s: %w", ref.Value, err)
	}
	now, err := methods.GetCurrentTime(ctx, c.vc)
	if err != nil {
		return nil, fmt.Errorf("task %s: vCenter's time: %w", ref.Value, err)
	}
	st := &TaskState{State: string(t.Info.State), Progress: int(t.Info.Progress), Cancelled: t.Info.Cancelled,
		Age: max(now.Sub(t.Info.QueueTime), 0)}
	if t.Info.State == types.TaskInfoStateError {
		st.Err = errors.New("the task failed")
		if t.Info.Error != nil {
			msg := t.Info.Error.LocalizedMessage
			if msg == "" {
				msg = fmt.Sprintf("%T", t.Info.Error.Fault)
			}
			st.Err = errors.New(msg)
		}
	}
	return st, nil
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

// Destroy powers a VM off, detaches the disks it shares with other VMs and
// destroys it. A VM already gone counts as destroyed: a delete is done when
// the object is gone.
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
	// A pod VM's image disks and boot disk are files shared by many VMs:
	// destroying the VM with them attached would delete them.
	if err := vsphere.DetachSharedDisks(ctx, c.vc, ref); err != nil {
		if isNotFound(err) {
			return nil
		}
		return err
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
