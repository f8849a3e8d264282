package sim

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

// vcsim gives every in-process client one session, whose registry is
// shared by every datacenter in the process: the managers' wrappers that
// a refused delete leaves there must answer another datacenter's calls on
// that datacenter's files, and still refuse its own locked disks.
func TestDiskLocksOfTwoDatacentersInProcess(t *testing.T) {
	ctx, d1, vc1, dc1 := startInproc(t)
	_, d2, vc2, dc2 := startInproc(t)

	for _, s := range []struct {
		d  *Datacenter
		vc *vim25.Client
		dc *object.Datacenter
	}{{d1, vc1, dc1}, {d2, vc2, dc2}} {
		runningVMWithDisk(ctx, t, s.d, s.vc, s.dc, "locker")
		if err := object.NewFileManager(s.vc).MakeDirectory(ctx, "["+SharedDatastore+"] free", s.dc, true); err != nil {
			t.Fatal(err)
		}
	}
	del := func(vc *vim25.Client, dc *object.Datacenter, name string) error {
		task, err := object.NewFileManager(vc).DeleteDatastoreFile(ctx, name, dc)
		if err != nil {
			return err
		}
		return task.Wait(ctx)
	}
	if err := del(vc1, dc1, "["+SharedDatastore+"] locker/locker.vmdk"); !fault.Is(err, &types.FileLocked{}) {
		t.Fatalf("first datacenter: delete of a running VM's disk: %v, want FileLocked", err)
	}
	if err := del(vc2, dc2, "["+SharedDatastore+"] free"); err != nil {
		t.Fatalf("second datacenter: delete of a free folder: %v", err)
	}
	if err := del(vc2, dc2, "["+SharedDatastore+"] locker"); !fault.Is(err, &types.FileLocked{}) {
		t.Fatalf("second datacenter: delete of a running VM's folder: %v, want FileLocked", err)
	}

	ds1, err := d1.Datastore(SharedDatastore)
	if err != nil {
		t.Fatal(err)
	}
	ds2, err := d2.Datastore(SharedDatastore)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(ds1.Dir, "free")); err != nil {
		t.Errorf("the first datacenter's folder of the same name: %v, want it kept", err)
	}
	if _, err := os.Stat(filepath.Join(ds2.Dir, "free")); !os.IsNotExist(err) {
		t.Errorf("the second datacenter's deleted folder: %v, want it gone", err)
	}
	for _, dir := range []string{ds1.Dir, ds2.Dir} {
		if _, err := os.Stat(filepath.Join(dir, "locker", "locker-flat.vmdk")); err != nil {
			t.Errorf("a running VM's disk after refused deletes: %v", err)
		}
	}
}

// runningVMWithDisk creates a powered-on VM name with one disk,
// [shared-ds] name/name.vmdk.
func runningVMWithDisk(ctx context.Context, t *testing.T, d *Datacenter, vc *vim25.Client, dc *object.Datacenter, name string) {
	t.Helper()
	folders, err := dc.Folders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h := d.Hosts()[0]
	task, err := folders.VmFolder.CreateVM(ctx, types.VirtualMachineConfigSpec{
		Name: name, GuestId: string(types.VirtualMachineGuestOsIdentifierOtherLinux64Guest), NumCPUs: 1, MemoryMB: 256,
		Files:        &types.VirtualMachineFileInfo{VmPathName: "[" + SharedDatastore + "] " + name},
		DeviceChange: AddDiskOnNewSCSI(t, "["+SharedDatastore+"] "+name+"/"+name+".vmdk", nil),
	}, object.NewResourcePool(vc, d.Clusters()[0].ResourcePool), object.NewHostSystem(vc, h.Ref))
	if err != nil {
		t.Fatal(err)
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		t.Fatalf("create VM %s: %v", name, err)
	}
	vm := object.NewVirtualMachine(vc, info.Result.(types.ManagedObjectReference))
	if task, err = vm.PowerOn(ctx); err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatalf("power on %s: %v", name, err)
	}
}

// AddDiskOnNewSCSI is the device changes that add a paravirtual SCSI
// controller and, on it, a thin 1 MiB disk created at the datastore path
// file, a linked clone of parent where parent is set. It is exported for
// the tests of package sim_test.
func AddDiskOnNewSCSI(t *testing.T, file string, parent *types.VirtualDiskFlatVer2BackingInfo) []types.BaseVirtualDeviceConfigSpec {
	t.Helper()
	var devices object.VirtualDeviceList
	scsi, err := devices.CreateSCSIController("pvscsi")
	if err != nil {
		t.Fatal(err)
	}
	devices = append(devices, scsi)
	disk := &types.VirtualDisk{
		VirtualDevice: types.VirtualDevice{Key: -2, Backing: &types.VirtualDiskFlatVer2BackingInfo{
			VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: file},
			DiskMode:                     string(types.VirtualDiskModePersistent),
			ThinProvisioned:              types.NewBool(true),
			Parent:                       parent,
		}},
		CapacityInKB: 1024,
	}
	devices.AssignController(disk, scsi.(types.BaseVirtualController))
	return []types.BaseVirtualDeviceConfigSpec{
		&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: scsi},
		&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd,
			FileOperation: types.VirtualDeviceConfigSpecFileOperationCreate, Device: disk},
	}
}
