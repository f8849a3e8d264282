package sim

import (
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"sync"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vmdk"
)

// Disk locks.
//
// A host locks the disks of a VM it runs, every file of every disk's
// backing chain (the parents a delta or linked clone reads from too), for
// as long as the VM is powered on. vCenter then refuses to delete them:
// FileManager.DeleteDatastoreFile_Task on such a file fails with FileLocked
// ("Unable to access file ... since it is locked"), on a folder holding one
// with CannotDeleteFile, and VirtualDiskManager.DeleteVirtualDisk_Task on
// the disk with FileLocked. vcsim removes the files whatever uses them, so
// a service deleting a running VM's disk would pass its tests and fail, or
// pull a disk from under a guest, on a real site.
//
// Here both delete methods are refused as vCenter refuses them: the call
// returns a task, and the task fails with the fault (fault.Is finds
// FileLocked in either case: a folder's CannotDeleteFile carries it as
// its cause). The lock is the VM's while it is powered on, whatever its
// host's state; a powered-off VM's disks can be deleted, and the VM is left
// pointing at missing files, as on vSphere. The files Destroy_Task deletes
// are not checked: vcsim deletes them itself, not through these calls (and
// refuses to destroy a powered-on VM).
//
// The check is made when the call arrives, before vcsim takes the
// manager's lock: it reads every VM under its own lock, so a delete waits
// for the VM tasks in flight (SetTaskDelay), and none is taken while the
// manager's lock is held (a VM's Destroy_Task holds the VM's and then
// wants the manager's).

// refusedDeletes holds the fault of each delete call refused, by request,
// from the registry's Handler to the method that answers the call. The
// requests are the calls' own decoded bodies, unique to each call, so one
// map serves every datacenter in the process. A refused call that never
// reaches its method (a fault injected on it) leaves its entry behind,
// never read again.
var refusedDeletes sync.Map // *types.DeleteDatastoreFile_Task or *types.DeleteVirtualDisk_Task → types.BaseMethodFault

// diskLockHandler checks a delete call against the disks of powered-on
// VMs. When it refuses one, the manager's wrapper (lockingFileManager,
// lockingDiskManager) goes into the calling session's registry, which vcsim
// prefers to the global one, and answers the call with a failed task.
// The wrapper stays there, answering the session's other calls as the
// manager does, rather than taking itself out after the call as
// instantCloner does: taken out by one call while a concurrent call of the
// same session is being routed, it would send that call, refused or not,
// to the bare manager.
func diskLockHandler(ctx *simulator.Context, m *simulator.Method) {
	var name string
	switch req := m.Body.(type) {
	case *types.DeleteDatastoreFile_Task:
		name = req.Name
	case *types.DeleteVirtualDisk_Task:
		name = req.Name
	default:
		return
	}
	if ctx.Session == nil {
		return // vcsim answers NotAuthenticated
	}
	fault := lockedFileFault(ctx, name)
	if fault == nil {
		return
	}
	switch obj := ctx.Map.Get(m.This).(type) {
	case *simulator.FileManager:
		if w, ok := ctx.Session.Registry.Get(m.This).(*lockingFileManager); !ok || w.FileManager != obj {
			ctx.Session.Registry.Put(&lockingFileManager{FileManager: obj})
		}
	case *simulator.VirtualDiskManager:
		if w, ok := ctx.Session.Registry.Get(m.This).(*lockingDiskManager); !ok || w.VirtualDiskManager != obj {
			ctx.Session.Registry.Put(&lockingDiskManager{VirtualDiskManager: obj})
		}
	default:
		return // vcsim answers ManagedObjectNotFound or MethodNotFound
	}
	refusedDeletes.Store(m.Body, fault)
}

// lockingFileManager is the FileManager with deletes of locked files
// refused. Its other methods are the manager's own.
type lockingFileManager struct {
	*simulator.FileManager
}

// DeleteDatastoreFileTask is the method (vcsim's naming: Foo_Task →
// FooTask). The manager is taken from the call's registry: the in-process
// session's registry is shared by every datacenter in the process.
func (f *lockingFileManager) DeleteDatastoreFileTask(ctx *simulator.Context, req *types.DeleteDatastoreFile_Task) soap.HasFault {
	fm := ctx.Map.FileManager()
	fault, refused := refusedDeletes.LoadAndDelete(req)
	if !refused {
		return fm.DeleteDatastoreFileTask(ctx, req)
	}
	task := simulator.CreateTask(fm, "deleteDatastoreFile", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, fault.(types.BaseMethodFault)
	})
	return &methods.DeleteDatastoreFile_TaskBody{Res: &types.DeleteDatastoreFile_TaskResponse{Returnval: task.Run(ctx)}}
}

// lockingDiskManager is the VirtualDiskManager with deletes of locked disks
// refused. Its other methods are the manager's own.
type lockingDiskManager struct {
	*simulator.VirtualDiskManager
}

// DeleteVirtualDiskTask is the method; see DeleteDatastoreFileTask.
func (m *lockingDiskManager) DeleteVirtualDiskTask(ctx *simulator.Context, req *types.DeleteVirtualDisk_Task) soap.HasFault {
	vdm := ctx.Map.VirtualDiskManager()
	fault, refused := refusedDeletes.LoadAndDelete(req)
	if !refused {
		return vdm.DeleteVirtualDiskTask(ctx, req)
	}
	task := simulator.CreateTask(vdm, "deleteVirtualDisk", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, fault.(types.BaseMethodFault)
	})
	return &methods.DeleteVirtualDisk_TaskBody{Res: &types.DeleteVirtualDisk_TaskResponse{Returnval: task.Run(ctx)}}
}

// lockedFileFault is the fault vCenter gives a delete of name ("[ds]
// path"), nil when no powered-on VM holds it: FileLocked when name is a
// file of a locked disk, CannotDeleteFile caused by FileLocked when it is
// a folder holding one. A name vcsim cannot resolve is left to vcsim's own
// fault.
func lockedFileFault(ctx *simulator.Context, name string) types.BaseMethodFault {
	var p object.DatastorePath
	if !p.FromString(name) {
		return nil
	}
	roots := datastoreRoots(ctx)
	root, ok := roots[p.Datastore]
	if !ok {
		return nil
	}
	// vcsim resolves a name the same way (path.Join cleans it).
	target := path.Join(root, p.Path)
	for _, e := range ctx.Map.All("VirtualMachine") {
		vm, ok := e.(*simulator.VirtualMachine)
		if !ok {
			continue
		}
		var vmName string
		var disks []string
		ctx.WithLock(vm, func() {
			if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn || vm.Config == nil {
				return
			}
			vmName = vm.Name
			for _, dev := range vm.Config.Hardware.Device {
				if disk, ok := dev.(*types.VirtualDisk); ok {
					disks = append(disks, backingChain(disk.Backing)...)
				}
			}
		})
		for _, disk := range disks {
			var dp object.DatastorePath
			if !dp.FromString(disk) {
				continue
			}
			dsRoot, ok := roots[dp.Datastore]
			if !ok {
				continue
			}
			desc := path.Join(dsRoot, dp.Path)
			switch {
			case target == desc || strings.HasPrefix(target, path.Dir(desc)+"/") && isExtentOf(target, desc):
				return fileLocked(name, vmName)
			case strings.HasPrefix(desc, target+"/"):
				return &types.CannotDeleteFile{FileFault: types.FileFault{
					VimFault: types.VimFault{MethodFault: types.MethodFault{
						FaultCause: &types.LocalizedMethodFault{Fault: fileLocked(disk, vmName), LocalizedMessage: lockedMessage(disk, vmName)},
						FaultMessage: []types.LocalizableMessage{{Key: "podvisor.sim.cannotDeleteFile",
							Message: fmt.Sprintf("Cannot delete file %s: it holds %s, a disk of powered-on VM %s", name, disk, vmName)}},
					}},
					File: name,
				}}
			}
		}
	}
	return nil
}

func fileLocked(file, vm string) *types.FileLocked {
	return &types.FileLocked{FileFault: types.FileFault{
		VimFault: types.VimFault{MethodFault: types.MethodFault{FaultMessage: []types.LocalizableMessage{{
			Key: "podvisor.sim.fileLocked", Message: lockedMessage(file, vm)}}}},
		File: file,
	}}
}

func lockedMessage(file, vm string) string {
	return fmt.Sprintf("Unable to access file %s since it is locked (a disk of powered-on VM %s)", file, vm)
}

// backingChain lists the datastore paths of a disk's files: its own and
// those of the parents its backing reads through.
func backingChain(b types.BaseVirtualDeviceBackingInfo) []string {
	var chain []string
	for b != nil {
		fb, ok := b.(types.BaseVirtualDeviceFileBackingInfo)
		if !ok {
			break
		}
		if name := fb.GetVirtualDeviceFileBackingInfo().FileName; name != "" {
			chain = append(chain, name)
		}
		b = nil
		switch x := fb.(type) {
		case *types.VirtualDiskFlatVer2BackingInfo:
			if x.Parent != nil {
				b = x.Parent
			}
		case *types.VirtualDiskSeSparseBackingInfo:
			if x.Parent != nil {
				b = x.Parent
			}
		case *types.VirtualDiskSparseVer2BackingInfo:
			if x.Parent != nil {
				b = x.Parent
			}
		case *types.VirtualDiskRawDiskMappingVer1BackingInfo:
			if x.Parent != nil {
				b = x.Parent
			}
		case *types.VirtualDiskFlatVer1BackingInfo:
			if x.Parent != nil {
				b = x.Parent
			}
		case *types.VirtualDiskSparseVer1BackingInfo:
			if x.Parent != nil {
				b = x.Parent
			}
		}
	}
	return chain
}

// isExtentOf reports whether file holds the data of the disk whose
// descriptor is desc: an extent the descriptor names, or the name vcsim
// gives its extent (disk-flat.vmdk).
func isExtentOf(file, desc string) bool {
	dir := path.Dir(desc)
	if file == path.Join(dir, strings.Replace(path.Base(desc), ".vmdk", "-flat.vmdk", 1)) {
		return true
	}
	f, err := os.Open(desc)
	if err != nil {
		return false
	}
	defer f.Close()
	// A descriptor is a few hundred bytes; a monolithic disk is one big
	// file whose descriptor is embedded at its start.
	parsed, err := vmdk.ParseDescriptor(io.LimitReader(f, 64<<10))
	if err != nil {
		return false
	}
	for _, e := range parsed.Extent {
		if name := strings.Trim(e.Info, `"`); name != "" && file == path.Join(dir, name) {
			return true
		}
	}
	return false
}

// datastoreRoots maps each datastore's name to the directory holding its
// files, as vcsim resolves a datastore path (summary.url).
func datastoreRoots(ctx *simulator.Context) map[string]string {
	roots := map[string]string{}
	for _, e := range ctx.Map.All("Datastore") {
		ds, ok := e.(*simulator.Datastore)
		if !ok {
			continue
		}
		ctx.WithLock(ds, func() { roots[ds.Name] = ds.Summary.Url })
	}
	return roots
}
