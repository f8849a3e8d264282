package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/shared/sim/guest"
)

// InstantClone_Task (vCenter's VMFork) is not implemented by vcsim. The
// simulated datacenter implements it, with the same request and result:
// the child is a new VM made from a powered-on parent, with the parent's
// hardware, its ExtraConfig overlaid with InstantCloneSpec.Config, placed
// by InstantCloneSpec.Location (host, pool, folder, datastore; the
// parent's by default), and powered on when the task ends.
//
// What the child shares with its parent, and how:
//
//   - Read/write disks (the pod's ephemeral disk) are cloned copy-on-write
//     while the parent's guest is frozen (freezer cgroup), so the copy is
//     what the parent had written at one instant: a reflink of the flat
//     extent where the datastore's filesystem has one (FICLONE: XFS,
//     Btrfs), else a copy of its allocated ranges only (SEEK_DATA), which
//     for a freshly prepared disk is a few MiB. A template's disk is
//     formatted and prepared once; its children never format theirs.
//   - Read-only disks (image disks, independent-nonpersistent) are the
//     same files: every child's page cache of them is the parent's.
//   - The guest: with simulated guests on, the child's guest starts from
//     the cloned disks without a boot of its own beyond the agent's start
//     (its filesystem is already made and mounted once, its image disks'
//     pages already cached). Process memory is not shared: this kernel has
//     no working checkpoint/restore (NOTES: CRIU fails), and a Go agent
//     cannot fork itself, so the child's agent is a new process of the
//     same executable (its text pages shared, as every guest's are).
//   - NICs: the child's cards are on the parent's port groups with new
//     generated MACs, as vSphere gives an instant clone (the guest
//     re-reads its network configuration from guestinfo), unless
//     InstantCloneSpec.Location.DeviceChange edits a card: then it gets
//     that card's backing (another port group), MAC and connection state
//     (a card neither connected nor starting connected has its cable out:
//     a child made before its pod's network is attached). A reconfigure
//     of the running child moves its cards and hands its guest the new
//     guestinfo spec (guests.go, reconfigureGuest).
//   - Serial ports: the parent's, a network serial port connecting the
//     child's host to the same address (a pod VM's channel), a console
//     file in the parent's directory moved to the child's.
//
// Routing: vcsim dispatches a method by name on the object its registry
// holds for the call's target, preferring the calling session's registry.
// The registry's Handler hook (called for every method) puts, for
// InstantClone_Task only, an instantCloner into the session's registry
// under the VM's reference; it embeds the VM, so every other method of the
// VM still resolves on it, and InstantCloneTask takes it out again first
// thing. Every other call goes to vcsim unchanged.

// instantCloneMethod is the SOAP method name.
const instantCloneMethod = "InstantClone_Task"

// methodHandler is the simulator registry's Handler: it routes the methods
// vcsim does not implement to the datacenter, and counts every call
// (calls.go).
func (d *Datacenter) methodHandler(ctx *simulator.Context, m *simulator.Method) (mo.Reference, types.BaseMethodFault) {
	d.calls.add(m.Name)
	if h := d.portHandler(ctx, m); h != nil {
		return h, nil // mgmtport.go
	}
	diskLockHandler(ctx, m) // disklock.go
	if m.This.Type != "VirtualMachine" {
		return nil, nil
	}
	if f := d.hostDownRefusal(ctx, m); f != nil {
		return nil, f // hostdown.go
	}
	if f := d.vmotionRefusal(ctx, m); f != nil {
		return nil, f // vmotion.go
	}
	if m.Name != instantCloneMethod {
		// An InstantClone_Task that never reached the method (a fault
		// injected on it) left its cloner in the session: take it out, so
		// the VM's other methods (Destroy) act on the VM itself.
		if ctx.Session != nil {
			if _, stale := ctx.Session.Registry.Get(m.This).(*instantCloner); stale {
				ctx.Session.Registry.Remove(ctx, m.This)
			}
		}
		return nil, nil
	}
	vm, ok := ctx.Map.Get(m.This).(*simulator.VirtualMachine)
	if !ok {
		return nil, nil // vcsim answers ManagedObjectNotFound
	}
	h := &instantCloner{VirtualMachine: vm, d: d}
	if ctx.Session != nil {
		ctx.Session.Registry.Put(h)
	}
	return h, nil
}

// instantCloner serves InstantClone_Task of one VM. It is the VM (its
// reference, its lock, its methods) plus that one method.
type instantCloner struct {
	*simulator.VirtualMachine
	d *Datacenter
}

// forkPlan is what the task needs from the parent, read while its lock is
// held.
type forkPlan struct {
	parentKey, parentName string
	spec                  types.VirtualMachineConfigSpec
	// copies are the read/write disks to clone: parent path → child path.
	copies   [][2]string
	folder   types.ManagedObjectReference
	pool     types.ManagedObjectReference
	host     types.ManagedObjectReference
	powerOn  bool
	childDir string // "[ds] name" of the child's files
	// parent is the parent as its guest sees it (hasGuest: a pod VM's
	// agent), for its standby (standby.go).
	parent   guest.VM
	hasGuest bool
}

// InstantCloneTask is the method (vcsim's naming: Foo_Task → FooTask).
func (c *instantCloner) InstantCloneTask(ctx *simulator.Context, req *types.InstantClone_Task) soap.HasFault {
	fail := func(msg string, f types.BaseMethodFault) soap.HasFault {
		return &methods.InstantClone_TaskBody{Fault_: simulator.Fault(msg, f)}
	}
	if ctx.Session != nil {
		ctx.Session.Registry.Remove(ctx, req.This)
	}
	vm := c.VirtualMachine
	if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
		return fail("the source of an instant clone must be powered on", &types.InvalidPowerState{
			RequestedState: types.VirtualMachinePowerStatePoweredOn, ExistingState: vm.Runtime.PowerState})
	}
	plan, err := c.d.planFork(ctx, &vm.VirtualMachine, req.Spec)
	if err != nil {
		return fail(err.Error(), &types.InvalidArgument{InvalidProperty: "spec"})
	}
	// The fork is done within the call, and the task returned has ended
	// by the time the client first reads it. The clone itself takes a few
	// milliseconds here (its child resumes a standby), and vcsim's property
	// collector reports a change of a task it watches on a 20 ms tick:
	// a task still running when the client's wait begins cost that tick
	// on every fork (measured: the provisioner's instant_clone span 27 ms
	// for a 5 ms clone). A task already ended is in the collector's first
	// answer. The template's lock is held meanwhile, as vcsim's task would
	// hold it while it runs.
	ref, err := c.d.runFork(context.Background(), plan)
	if err != nil {
		c.d.guestLog("instant clone", plan.spec.Name, err)
	}
	task := simulator.CreateTask(vm, "instantClone", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		if err != nil {
			return nil, &types.SystemError{RuntimeFault: types.RuntimeFault{MethodFault: types.MethodFault{
				FaultMessage: []types.LocalizableMessage{{Key: "podvisor.sim.instantClone", Message: err.Error()}}}}, Reason: err.Error()}
		}
		return ref, nil
	})
	tref := task.Run(ctx)
	// The task's goroutine records its end at once (it has nothing left
	// to do); wait for that, so the task is seen ended.
	wctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, _ = c.d.waitTask(wctx, tref)
	return &methods.InstantClone_TaskBody{Res: &types.InstantClone_TaskResponse{Returnval: tref}}
}

// planFork derives the child's configuration from the parent.
func (d *Datacenter) planFork(ctx *simulator.Context, vm *mo.VirtualMachine, spec types.VirtualMachineInstantCloneSpec) (*forkPlan, error) {
	if strings.TrimSpace(spec.Name) == "" {
		return nil, errors.New("spec.name: required")
	}
	if vm.Config == nil || vm.Runtime.Host == nil || vm.ResourcePool == nil || vm.Parent == nil {
		return nil, errors.New("the source VM has no configuration, host, pool or folder")
	}
	p := &forkPlan{parentKey: vm.Self.Value, parentName: vm.Name, folder: *vm.Parent, pool: *vm.ResourcePool,
		host: *vm.Runtime.Host, powerOn: true}
	loc := spec.Location
	if loc.Folder != nil {
		p.folder = *loc.Folder
	}
	if loc.Pool != nil {
		p.pool = *loc.Pool
	}
	if loc.Host != nil {
		p.host = *loc.Host
	}
	var parentPath object.DatastorePath
	if !parentPath.FromString(vm.Config.Files.VmPathName) {
		return nil, fmt.Errorf("source VM path %q is not a datastore path", vm.Config.Files.VmPathName)
	}
	dsName := parentPath.Datastore
	if loc.Datastore != nil {
		ds, ok := ctx.Map.Get(*loc.Datastore).(*simulator.Datastore)
		if !ok {
			return nil, fmt.Errorf("spec.location.datastore %s: %w", loc.Datastore.Value, ErrNotFound)
		}
		dsName = ds.Name
	}
	if _, err := d.Datastore(dsName); err != nil {
		return nil, fmt.Errorf("spec.location.datastore: %w", err)
	}
	p.childDir = fmt.Sprintf("[%s] %s", dsName, spec.Name)

	extra := map[string]types.BaseOptionValue{}
	var order []string
	for _, list := range [][]types.BaseOptionValue{vm.Config.ExtraConfig, spec.Config} {
		for _, o := range list {
			k := o.GetOptionValue().Key
			if _, seen := extra[k]; !seen {
				order = append(order, k)
			}
			extra[k] = &types.OptionValue{Key: k, Value: o.GetOptionValue().Value}
		}
	}
	cs := types.VirtualMachineConfigSpec{
		Name: spec.Name, GuestId: vm.Config.GuestId, NumCPUs: vm.Config.Hardware.NumCPU,
		MemoryMB: int64(vm.Config.Hardware.MemoryMB), Files: &types.VirtualMachineFileInfo{VmPathName: p.childDir},
	}
	for _, k := range order {
		cs.ExtraConfig = append(cs.ExtraConfig, extra[k])
	}
	devices := object.VirtualDeviceList(vm.Config.Hardware.Device)
	nicEdits, err := nicEditsOf(devices, loc.DeviceChange)
	if err != nil {
		return nil, err
	}
	keys := map[int32]int32{}
	next := int32(-1000)
	newKey := func(old int32) int32 {
		next--
		keys[old] = next
		return next
	}
	add := func(dev types.BaseVirtualDevice) {
		cs.DeviceChange = append(cs.DeviceChange, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: dev})
	}
	// Controllers first, so disks can name them by their new keys.
	for _, dev := range devices {
		switch c := dev.(type) {
		case *types.ParaVirtualSCSIController:
			cp := *c
			cp.Key, cp.Device = newKey(c.Key), nil
			add(&cp)
		case *types.VirtualLsiLogicSASController:
			cp := *c
			cp.Key, cp.Device = newKey(c.Key), nil
			add(&cp)
		case *types.VirtualAHCIController:
			cp := *c
			cp.Key, cp.Device = newKey(c.Key), nil
			add(&cp)
		}
	}
	for _, dev := range devices {
		switch dv := dev.(type) {
		case *types.VirtualDisk:
			ctrl, ok := keys[dv.ControllerKey]
			if !ok {
				continue // on a controller vcsim adds by itself (IDE)
			}
			backing, ok := dv.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
			if !ok {
				return nil, fmt.Errorf("disk %d: backing %T cannot be cloned", dv.Key, dv.Backing)
			}
			disk := *dv
			b := *backing
			disk.Key, disk.ControllerKey, disk.Backing = newKey(dv.Key), ctrl, &b
			mode := types.VirtualDiskMode(b.DiskMode)
			if mode != types.VirtualDiskModeIndependent_nonpersistent && mode != types.VirtualDiskModeNonpersistent {
				var src object.DatastorePath
				src.FromString(b.FileName)
				dst := fmt.Sprintf("%s/%s", p.childDir, path.Base(src.Path))
				p.copies = append(p.copies, [2]string{b.FileName, dst})
				b.FileName = dst
			}
			b.Uuid, b.Parent = "", nil
			add(&disk)
		case types.BaseVirtualEthernetCard:
			card := *dv.GetVirtualEthernetCard()
			parentKey := card.Key
			card.Key = newKey(card.Key)
			card.MacAddress, card.AddressType = "", string(types.VirtualEthernetCardMacTypeGenerated)
			if edit, ok := nicEdits[parentKey]; ok {
				// vSphere lets an instant clone move a card to another
				// network and give it an address of its own.
				if edit.Backing != nil {
					card.Backing = edit.Backing
				}
				if edit.MacAddress != "" {
					card.MacAddress, card.AddressType = edit.MacAddress, string(types.VirtualEthernetCardMacTypeManual)
				}
				if edit.Connectable != nil {
					// A child made before its network is attached starts
					// with its cables out (reconnected by a reconfigure).
					cp := *edit.Connectable
					card.Connectable = &cp
				}
			}
			var nic types.BaseVirtualDevice
			switch dv.(type) {
			case *types.VirtualVmxnet3:
				nic = &types.VirtualVmxnet3{VirtualVmxnet: types.VirtualVmxnet{VirtualEthernetCard: card}}
			default:
				nic = &types.VirtualE1000{VirtualEthernetCard: card}
			}
			add(nic)
		case *types.VirtualSerialPort:
			// A child has its parent's serial ports: a network serial
			// port (a pod VM's channel) connects the child's host to the
			// same address, as the parent's does. A port backed by a file
			// in the parent's directory (its console) writes the child's
			// own file in the child's directory, as the disks there are.
			port := *dv
			port.Key = newKey(dv.Key)
			switch b := dv.Backing.(type) {
			case *types.VirtualSerialPortFileBackingInfo:
				cp := *b
				var file object.DatastorePath
				if file.FromString(b.FileName) && file.Datastore == parentPath.Datastore && path.Dir(file.Path) == path.Dir(parentPath.Path) {
					cp.FileName = fmt.Sprintf("%s/%s", p.childDir, path.Base(file.Path))
				}
				port.Backing = &cp
			case *types.VirtualSerialPortURIBackingInfo:
				cp := *b
				port.Backing = &cp
			}
			if dv.Connectable != nil {
				cp := *dv.Connectable
				port.Connectable = &cp
			}
			add(&port)
		}
	}
	p.spec = cs
	if d.guests != nil {
		// Only a pod VM's guest (its agent) can be a standby; a native
		// VM's boots its own init.
		p.parent, p.hasGuest = d.guestVM(vm)
		p.hasGuest = p.hasGuest && p.parent.Native == nil
		p.parent.Key = vm.Self.Value
	}
	return p, nil
}

// nicEditsOf reads InstantCloneSpec.Location.DeviceChange: what vSphere
// accepts there is an edit of a network card of the parent (by its key)
// with a new backing and, optionally, a MAC address; anything else is
// refused, naming the entry.
func nicEditsOf(devices object.VirtualDeviceList, change []types.BaseVirtualDeviceConfigSpec) (map[int32]*types.VirtualEthernetCard, error) {
	edits := map[int32]*types.VirtualEthernetCard{}
	for i, c := range change {
		spec := c.GetVirtualDeviceConfigSpec()
		card, ok := spec.Device.(types.BaseVirtualEthernetCard)
		if spec.Operation != types.VirtualDeviceConfigSpecOperationEdit || !ok {
			return nil, fmt.Errorf("spec.location.deviceChange[%d]: an instant clone may only edit network cards", i)
		}
		e := card.GetVirtualEthernetCard()
		if _, ok := devices.FindByKey(e.Key).(types.BaseVirtualEthernetCard); !ok {
			return nil, fmt.Errorf("spec.location.deviceChange[%d]: the source VM has no network card with key %d", i, e.Key)
		}
		edits[e.Key] = e
	}
	return edits, nil
}

// runFork does the clone: freeze the parent's guest, clone its read/write
// disks, thaw; create the child with the cloned and shared disks; power it
// on (its guest starts from the cloned disks). The child's create and
// power-on are the simulator's own tasks, waited for as they end
// (waitTask), not through a property collector.
func (d *Datacenter) runFork(ctx context.Context, p *forkPlan) (_ types.ManagedObjectReference, err error) {
	var none types.ManagedObjectReference
	began := time.Now()
	var claimed, created time.Duration
	// The parent's booted standby, when it has one, becomes the child's
	// guest; the next one boots meanwhile.
	sb, ok := d.claimStandby(p)
	defer d.refillStandby(p)
	if ok {
		defer func() {
			if err != nil {
				d.guests.DropStandby(sb.Key)
			}
		}()
	} else if err := d.cloneDisks(p); err != nil {
		return none, fmt.Errorf("instant clone of %s: %w", p.parentName, err)
	}
	claimed = time.Since(began)
	vc, err := d.client(ctx)
	if err != nil {
		return none, err
	}
	folder := object.NewFolder(vc, p.folder)
	task, err := folder.CreateVM(ctx, p.spec, object.NewResourcePool(vc, p.pool), object.NewHostSystem(vc, p.host))
	if err != nil {
		return none, fmt.Errorf("instant clone of %s: create %s: %w", p.parentName, p.spec.Name, err)
	}
	res, err := d.waitTask(ctx, task.Reference())
	if err != nil {
		return none, fmt.Errorf("instant clone of %s: create %s: %w", p.parentName, p.spec.Name, err)
	}
	ref, isRef := res.(types.ManagedObjectReference)
	if !isRef {
		return none, fmt.Errorf("instant clone of %s: create %s: result is %T, not a VM", p.parentName, p.spec.Name, res)
	}
	created = time.Since(began)
	d.forkMu.Lock()
	if d.forks == nil {
		d.forks = map[string]string{}
	}
	d.forks[ref.Value] = p.parentKey
	if ok {
		if d.standbyOf == nil {
			d.standbyOf = map[string]string{}
		}
		d.standbyOf[ref.Value] = sb.Key
	}
	d.forkMu.Unlock()
	ptask, err := object.NewVirtualMachine(vc, ref).PowerOn(ctx)
	if err == nil {
		_, err = d.waitTask(ctx, ptask.Reference())
	}
	d.forkMu.Lock()
	delete(d.standbyOf, ref.Value) // a later power-on boots
	d.forkMu.Unlock()
	if err != nil {
		return ref, fmt.Errorf("instant clone of %s: power on %s: %w", p.parentName, p.spec.Name, err)
	}
	d.debugLog("instant clone", "vm", p.spec.Name, "parent", p.parentName, "standby", ok,
		"disks_ms", ms(claimed), "create_ms", ms(created-claimed), "power_on_ms", ms(time.Since(began)-created))
	return ref, nil
}

// client is the datacenter's own client of the model (no network, no
// login: the calls go straight to the simulator's service), made once.
func (d *Datacenter) client(ctx context.Context) (*vim25.Client, error) {
	d.inprocOnce.Do(func() {
		d.inproc, d.inprocErr = vim25.NewClient(ctx, d.model.Service)
	})
	return d.inproc, d.inprocErr
}

// ms is a duration in milliseconds, for logs.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// ForkedFrom names the VM (key) a VM was instant-cloned from, "" for a VM
// that was not.
func (d *Datacenter) ForkedFrom(key string) string {
	d.forkMu.Lock()
	defer d.forkMu.Unlock()
	return d.forks[key]
}

// cloneDisks clones the parent's read/write disks into the child's
// directory while the parent's guest is frozen.
func (d *Datacenter) cloneDisks(p *forkPlan) error {
	if len(p.copies) == 0 {
		return nil
	}
	if d.guests != nil {
		resume, err := d.guests.Pause(p.parentKey)
		if err != nil {
			return err
		}
		defer resume()
	}
	for _, c := range p.copies {
		f, err := d.filesOf(c)
		if err != nil {
			return err
		}
		if err := cowCopy(f.desc, f.childDesc); err != nil {
			return err
		}
		if f.flat != f.desc {
			if err := cowCopy(f.flat, f.childFlat); err != nil {
				return err
			}
		}
	}
	return nil
}

// diskFiles are the local files of one read/write disk an instant clone
// gets: the parent's descriptor and flat extent (one file for a monolithic
// disk) and the child's names for them.
type diskFiles struct{ desc, flat, childDesc, childFlat string }

// filesOf maps a planned copy (parent → child datastore path) to its
// files and makes the child's directory.
func (d *Datacenter) filesOf(c [2]string) (diskFiles, error) {
	var f diskFiles
	var err error
	if f.desc, err = d.localPath(c[0]); err != nil {
		return f, err
	}
	if f.childDesc, err = d.localPath(c[1]); err != nil {
		return f, err
	}
	if f.flat, err = d.flatExtent(c[0]); err != nil {
		return f, err
	}
	// The descriptor names its extent relative to itself: keeping both
	// side by side under the parent's base names keeps that true.
	f.childFlat = filepath.Join(filepath.Dir(f.childDesc), filepath.Base(f.flat))
	return f, os.MkdirAll(filepath.Dir(f.childDesc), 0o755)
}

// localPath maps a datastore path to the file on this machine.
func (d *Datacenter) localPath(dsPath string) (string, error) {
	var p object.DatastorePath
	if !p.FromString(dsPath) {
		return "", fmt.Errorf("%q is not a datastore path", dsPath)
	}
	ds, err := d.Datastore(p.Datastore)
	if err != nil {
		return "", err
	}
	return filepath.Join(ds.Dir, filepath.FromSlash(p.Path)), nil
}

// cowCopy copies src to dst sharing blocks where the filesystem can
// (FICLONE), and otherwise copying only the ranges that hold data, so a
// sparse disk stays sparse and costs what it holds.
func cowCopy(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		return nil
	}
	size := st.Size()
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) {
				break // only a hole is left
			}
			return fmt.Errorf("seek data in %s: %w", src, err)
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole in %s: %w", src, err)
		}
		if _, err := io.Copy(io.NewOffsetWriter(out, data), io.NewSectionReader(in, data, hole-data)); err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
		off = hole
	}
	return out.Truncate(size)
}
