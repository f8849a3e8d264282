package sim_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/sim"
)

// diskLockSite is a VM whose disk is a linked clone of a base disk, as an
// image chain is, with a disk no VM uses beside them, all on shared-ds.
type diskLockSite struct {
	d   *sim.Datacenter
	c   *govmomi.Client
	dc  *object.Datacenter
	vm  *object.VirtualMachine
	dir string // shared-ds on this machine
}

func newDiskLockSite(t *testing.T) diskLockSite {
	t.Helper()
	d := start(t, sim.Config{Clusters: 1, HostsPerCluster: 1})
	c := client(t, d)
	ctx := context.Background()
	dc, err := find.NewFinder(c.Client, true).Datacenter(ctx, sim.DatacenterName)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := d.Datastore(sim.SharedDatastore)
	if err != nil {
		t.Fatal(err)
	}
	s := diskLockSite{d: d, c: c, dc: dc, dir: ds.Dir}
	fm := object.NewFileManager(c.Client)
	vdm := object.NewVirtualDiskManager(c.Client)
	for _, name := range []string{"base/base.vmdk", "spare/spare.vmdk"} {
		if err := fm.MakeDirectory(ctx, s.path(filepath.Dir(name)), dc, true); err != nil {
			t.Fatal(err)
		}
		task, err := vdm.CreateVirtualDisk(ctx, s.path(name), dc, &types.FileBackedVirtualDiskSpec{
			VirtualDiskSpec: types.VirtualDiskSpec{DiskType: string(types.VirtualDiskTypeThin), AdapterType: string(types.VirtualDiskAdapterTypeLsiLogic)},
			CapacityKb:      1024})
		if err == nil {
			err = task.Wait(ctx)
		}
		if err != nil {
			t.Fatalf("create disk %s: %v", name, err)
		}
	}

	s.vm = createVM(t, c, d, d.Hosts()[0], "locker")
	base := &types.VirtualDiskFlatVer2BackingInfo{
		VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: s.path("base/base.vmdk")},
		DiskMode:                     string(types.VirtualDiskModePersistent),
	}
	task, err := s.vm.Reconfigure(ctx, types.VirtualMachineConfigSpec{
		DeviceChange: sim.AddDiskOnNewSCSI(t, s.path("locker/locker.vmdk"), base)})
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatalf("add the linked clone disk: %v", err)
	}
	return s
}

// path is "[shared-ds] name".
func (s diskLockSite) path(name string) string {
	return fmt.Sprintf("[%s] %s", sim.SharedDatastore, name)
}

func (s diskLockSite) power(t *testing.T, on bool) {
	t.Helper()
	ctx := context.Background()
	op := s.vm.PowerOff
	if on {
		op = s.vm.PowerOn
	}
	task, err := op(ctx)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatalf("power on=%v: %v", on, err)
	}
}

// deleteFile deletes name with the method given: "file"
// (DeleteDatastoreFile_Task) or "disk" (DeleteVirtualDisk_Task), and
// returns the task's error.
func (s diskLockSite) deleteFile(c *govmomi.Client, method, name string) error {
	ctx := context.Background()
	var task *object.Task
	var err error
	if method == "disk" {
		task, err = object.NewVirtualDiskManager(c.Client).DeleteVirtualDisk(ctx, name, s.dc)
	} else {
		task, err = object.NewFileManager(c.Client).DeleteDatastoreFile(ctx, name, s.dc)
	}
	if err != nil {
		return fmt.Errorf("the call itself failed (vCenter returns a task that fails): %w", err)
	}
	return task.Wait(ctx)
}

// As on vSphere, a powered-on VM's disks, parents in its backing chain
// included, cannot be deleted, nor the folders holding them: the delete's
// task fails with FileLocked (a folder's with CannotDeleteFile caused by
// it) and the files stay. Files no running VM uses are deleted as before.
func TestDisksOfAPoweredOnVMAreLocked(t *testing.T) {
	s := newDiskLockSite(t)
	s.power(t, true)

	tests := []struct {
		name, method, file string
		wantFolder         bool   // CannotDeleteFile caused by FileLocked, else FileLocked
		wantFault          bool   // false: the delete succeeds
		stays              string // a file on shared-ds that must survive
	}{
		{name: "the VM's disk", method: "file", file: "locker/locker.vmdk", wantFault: true, stays: "locker/locker.vmdk"},
		{name: "the VM's disk's extent", method: "file", file: "locker/locker-flat.vmdk", wantFault: true, stays: "locker/locker-flat.vmdk"},
		{name: "the VM's folder", method: "file", file: "locker", wantFault: true, wantFolder: true, stays: "locker/locker.vmdk"},
		{name: "the parent disk", method: "file", file: "base/base.vmdk", wantFault: true, stays: "base/base.vmdk"},
		{name: "the parent's folder", method: "file", file: "base", wantFault: true, wantFolder: true, stays: "base/base-flat.vmdk"},
		{name: "the datastore's root", method: "file", file: "", wantFault: true, wantFolder: true, stays: "base/base.vmdk"},
		{name: "the VM's disk by the disk manager", method: "disk", file: "locker/locker.vmdk", wantFault: true, stays: "locker/locker-flat.vmdk"},
		{name: "the parent disk by the disk manager", method: "disk", file: "base/base.vmdk", wantFault: true, stays: "base/base.vmdk"},
		{name: "a disk no VM uses", method: "disk", file: "spare/spare.vmdk"},
		{name: "a folder no VM uses", method: "file", file: "spare"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := s.path(tt.file)
			if tt.file == "" {
				name = "[" + sim.SharedDatastore + "]"
			}
			err := s.deleteFile(s.c, tt.method, name)
			switch {
			case !tt.wantFault:
				if err != nil {
					t.Fatalf("delete %s: %v, want it deleted", name, err)
				}
				if _, err := os.Stat(filepath.Join(s.dir, tt.file)); !os.IsNotExist(err) {
					t.Errorf("%s after its delete: %v, want it gone", tt.file, err)
				}
				return
			case err == nil:
				t.Fatalf("delete %s succeeded, want it refused", name)
			case !fault.Is(err, &types.FileLocked{}):
				t.Errorf("delete %s: %v, want FileLocked", name, err)
			case tt.wantFolder && !fault.Is(err, &types.CannotDeleteFile{}):
				t.Errorf("delete of folder %s: %v, want CannotDeleteFile", name, err)
			}
			if _, err := os.Stat(filepath.Join(s.dir, tt.stays)); err != nil {
				t.Errorf("%s after a refused delete: %v", tt.stays, err)
			}
		})
	}

	// Once the VM is off, vSphere deletes its disks and leaves it pointing
	// at files that are gone.
	s.power(t, false)
	for _, file := range []string{"locker/locker.vmdk", "base"} {
		method := "disk"
		if file == "base" {
			method = "file"
		}
		if err := s.deleteFile(s.c, method, s.path(file)); err != nil {
			t.Errorf("delete %s of a powered-off VM: %v", file, err)
		}
		if _, err := os.Stat(filepath.Join(s.dir, file)); !os.IsNotExist(err) {
			t.Errorf("%s after its delete: %v, want it gone", file, err)
		}
	}
	devices, err := s.vm.Device(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n := len(devices.SelectByType((*types.VirtualDisk)(nil))); n != 1 {
		t.Errorf("the powered-off VM has %d disks after its files went, want it still to list 1", n)
	}
}

// Deletes racing in one session, and in sessions of their own, are each
// refused or carried out on their own merits: none of a locked disk gets
// through, every one of a free file does.
func TestDiskLocksHoldUnderConcurrentDeletes(t *testing.T) {
	s := newDiskLockSite(t)
	s.power(t, true)
	ctx := context.Background()
	fm := object.NewFileManager(s.c.Client)
	const n = 16
	for i := range n {
		if err := fm.MakeDirectory(ctx, s.path(fmt.Sprintf("free-%d", i)), s.dc, true); err != nil {
			t.Fatal(err)
		}
	}
	other := client(t, s.d)

	var wg sync.WaitGroup
	errs := make(chan error, 4*n)
	for i := range n {
		c := s.c
		if i%2 == 1 {
			c = other
		}
		wg.Go(func() {
			if err := s.deleteFile(c, "disk", s.path("base/base.vmdk")); !fault.Is(err, &types.FileLocked{}) {
				errs <- fmt.Errorf("delete of the locked parent disk: %v, want FileLocked", err)
			}
		})
		wg.Go(func() {
			if err := s.deleteFile(c, "file", s.path("locker")); !fault.Is(err, &types.FileLocked{}) {
				errs <- fmt.Errorf("delete of the running VM's folder: %v, want FileLocked", err)
			}
		})
		wg.Go(func() {
			if err := s.deleteFile(c, "file", s.path(fmt.Sprintf("free-%d", i))); err != nil {
				errs <- fmt.Errorf("delete of a free folder: %v", err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, file := range []string{"base/base.vmdk", "base/base-flat.vmdk", "locker/locker.vmdk", "locker/locker-flat.vmdk"} {
		if _, err := os.Stat(filepath.Join(s.dir, file)); err != nil {
			t.Errorf("%s after refused deletes: %v", file, err)
		}
	}
}
