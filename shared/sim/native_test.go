package sim_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/shared/ociregistry"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/sim/guest"
	"github.com/podvisor/podvisor/shared/simtest"
)

// stageVMOS writes the sample VM image's root filesystem into a directory.
func stageVMOS(t *testing.T) string {
	t.Helper()
	stage := t.TempDir()
	bb, err := os.ReadFile(ociregistry.BusyboxPath)
	if err != nil {
		t.Fatal(err)
	}
	write := func(p string, body []byte, mode os.FileMode) {
		full := filepath.Join(stage, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, body, mode); err != nil {
			t.Fatal(err)
		}
	}
	write("bin/busybox", bb, 0o755)
	for _, a := range ociregistry.VMOSApplets() {
		if err := os.Symlink("busybox", filepath.Join(stage, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range ociregistry.VMOSFiles() {
		write(f.Path, f.Body, os.FileMode(f.Mode))
	}
	return stage
}

// TestNativeGuestBootsItsInit: a VM that is not a pod VM and whose first
// disk holds a filesystem boots that disk's /sbin/init, which reads the
// cloud-init data from guestinfo and runs the user data.
func TestNativeGuestBootsItsInit(t *testing.T) {
	privtest.RequireTools(t, "mkfs.ext4", "debugfs", "busybox")
	d, _ := startGuests(t)
	c := client(t, d)
	ctx := context.Background()
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	vm, extents := simtest.CreatePodVM(t, c, d, simtest.PodVM{
		Name: "nv-native", Host: d.Hosts()[0], NumCPUs: 1, MemoryMB: 128,
		Disks: []simtest.PodVMDisk{{File: "root.vmdk", CapacityBytes: 64 << 20}},
		ExtraConfig: map[string]string{
			"guestinfo.userdata":          b64("#!/bin/sh\nmkdir -p /var/lib\necho hello from user data > /var/lib/hello\n"),
			"guestinfo.userdata.encoding": "base64",
			"guestinfo.metadata":          b64("instance-id: nv-native\nlocal-hostname: vm1\n"),
			"guestinfo.metadata.encoding": "base64",
		},
	})
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", stageVMOS(t), extents[0], "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	task, err := vm.PowerOn(ctx)
	if err != nil || task.Wait(ctx) != nil {
		t.Fatalf("power on: %v", err)
	}
	if _, console := waitNativeReady(t, d, vm.Reference().Value, "init: ready vm1"); !strings.Contains(console, "user data script exited 0") {
		t.Errorf("console:\n%s\nwant the user data script to have run", console)
	}
	task, err = vm.PowerOff(ctx)
	if err != nil || task.Wait(ctx) != nil {
		t.Fatalf("power off: %v", err)
	}
	if _, ok := d.Guests().Guest(vm.Reference().Value); ok {
		t.Fatal("the guest still runs after power-off")
	}
	// What the guest wrote is on its disk, as on a VM's.
	out, err := exec.Command("debugfs", "-R", "cat /var/lib/hello", extents[0]).Output()
	if err != nil || strings.TrimSpace(string(out)) != "hello from user data" {
		t.Errorf("/var/lib/hello on the boot disk = %q (%v), want the user data's line", out, err)
	}
}

// TestNativeGuestSeesDisksHotPlugged: a reconfigure of a running native VM
// reaches its guest as vSphere's hot-plug does, without a power cycle: a
// disk added is a new block device at once, under the next free name; a
// disk grown has its new size; a disk removed is gone from the guest and
// its loop device detached; an existing disk file attached again is a
// device again. Power-off leaves no loop device behind.
func TestNativeGuestSeesDisksHotPlugged(t *testing.T) {
	privtest.RequireTools(t, "mkfs.ext4", "busybox", "nsenter", "losetup")
	d, _ := startGuests(t)
	c := client(t, d)
	ctx := context.Background()
	vm, extents := simtest.CreatePodVM(t, c, d, simtest.PodVM{
		Name: "nv-hotplug", Host: d.Hosts()[0], NumCPUs: 1, MemoryMB: 128,
		Disks: []simtest.PodVMDisk{{File: "root.vmdk", CapacityBytes: 64 << 20}, {File: "data.vmdk", CapacityBytes: 32 << 20}},
	})
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", stageVMOS(t), extents[0], "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	logsExtent := filepath.Join(filepath.Dir(extents[1]), "logs-flat.vmdk")
	logsFile := "[" + sim.SharedDatastore + "] nv-hotplug/logs.vmdk"
	run := func(task *object.Task, err error) {
		t.Helper()
		if err == nil {
			err = task.Wait(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	run(vm.PowerOn(ctx))
	key := vm.Reference().Value
	g, _ := waitNativeReady(t, d, key, "init: ready")
	if got := guestDevices(t, g.PID); got["sdb"] != 32<<20 || len(got) != 1 {
		t.Fatalf("the guest's disks at boot %v, want sdb of 32 MiB", got)
	}

	// One reconfigure hot-adds a disk and grows the data disk.
	devices, err := vm.Device(ctx)
	if err != nil {
		t.Fatal(err)
	}
	data := diskByFile(t, devices, "data.vmdk")
	data.CapacityInBytes, data.CapacityInKB = 48<<20, 48<<10
	logs := hotDisk(data, logsFile, 2, 16<<20)
	run(vm.Reconfigure(ctx, types.VirtualMachineConfigSpec{DeviceChange: []types.BaseVirtualDeviceConfigSpec{
		&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationEdit, Device: data},
		&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd,
			FileOperation: types.VirtualDeviceConfigSpecFileOperationCreate, Device: logs},
	}}))
	waitDevices(t, g.PID, map[string]int64{"sdb": 48 << 20, "sdc": 16 << 20})

	// Hot-removed (the file kept): gone from the guest, its loop device
	// detached.
	devices, err = vm.Device(ctx)
	if err != nil {
		t.Fatal(err)
	}
	run(vm.Reconfigure(ctx, types.VirtualMachineConfigSpec{DeviceChange: []types.BaseVirtualDeviceConfigSpec{
		&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationRemove, Device: diskByFile(t, devices, "logs.vmdk")},
	}}))
	waitDevices(t, g.PID, map[string]int64{"sdb": 48 << 20})
	for deadline := time.Now().Add(5 * time.Second); loopsOf(t, logsExtent) != ""; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the removed disk's loop device is still attached: %s", loopsOf(t, logsExtent))
		}
	}

	// The existing file attached again: a device again.
	run(vm.Reconfigure(ctx, types.VirtualMachineConfigSpec{DeviceChange: []types.BaseVirtualDeviceConfigSpec{
		&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd,
			Device: hotDisk(data, logsFile, 2, 16<<20)},
	}}))
	waitDevices(t, g.PID, map[string]int64{"sdb": 48 << 20, "sdc": 16 << 20})
	if now, ok := d.Guests().Guest(key); !ok || now.PID != g.PID {
		t.Fatalf("the guest was restarted (pid %d, before %d)", now.PID, g.PID)
	}

	run(vm.PowerOff(ctx))
	for _, f := range []string{extents[1], logsExtent} {
		if loops := loopsOf(t, f); loops != "" {
			t.Errorf("%s is still behind a loop device after power-off: %s", filepath.Base(f), loops)
		}
	}
}

// waitNativeReady waits until the native guest of VM key has run its
// init, its console showing ready (the init's last line is "init: ready
// <hostname>"), and returns the guest and its console then.
func waitNativeReady(t *testing.T, d *sim.Datacenter, key, ready string) (guest.Info, string) {
	t.Helper()
	info, ok := d.Guests().Guest(key)
	if !ok || info.VM.Native == nil {
		t.Fatalf("the VM runs no native guest (running %v)", ok)
	}
	console := filepath.Join(info.Dir, "console.log")
	deadline := time.Now().Add(15 * time.Second)
	for {
		b, _ := os.ReadFile(console)
		if strings.Contains(string(b), ready) {
			return info, string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest's init did not get ready within 15s; console:\n%s", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// guestDevices lists the block devices sd* in the /dev of the guest whose
// PID 1 is pid, with their sizes as the guest's own blockdev reads them.
func guestDevices(t *testing.T, pid int) map[string]int64 {
	t.Helper()
	sh := `for d in /dev/sd*; do [ -b "$d" ] && echo "${d#/dev/} $(blockdev --getsize64 "$d")"; done; true`
	out, err := exec.Command("nsenter", "--target", strconv.Itoa(pid), "--mount", "--root", "/bin/busybox", "sh", "-c",
		"PATH=/bin; "+sh).CombinedOutput()
	if err != nil {
		t.Fatalf("list the guest's disks: %v: %s", err, out)
	}
	got := map[string]int64{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var name string
		var size int64
		if _, err := fmt.Sscan(line, &name, &size); err == nil {
			got[name] = size
		}
	}
	return got
}

// waitDevices waits until the guest's block devices are want.
func waitDevices(t *testing.T, pid int, want map[string]int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := guestDevices(t, pid)
		if maps.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the running guest's disks %v, want %v", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// loopsOf lists the loop devices over a file, "" when there are none.
func loopsOf(t *testing.T, file string) string {
	t.Helper()
	out, err := exec.Command("losetup", "--associated", file).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup --associated %s: %v: %s", file, err, out)
	}
	return strings.TrimSpace(string(out))
}

// diskByFile is the VM's disk whose file is name (data.vmdk).
func diskByFile(t *testing.T, devices object.VirtualDeviceList, name string) *types.VirtualDisk {
	t.Helper()
	for _, dev := range devices.SelectByType((*types.VirtualDisk)(nil)) {
		disk := dev.(*types.VirtualDisk)
		if b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok && path.Base(b.FileName) == name {
			return disk
		}
	}
	t.Fatalf("the VM has no disk %s", name)
	return nil
}

// hotDisk is a disk on the controller of sibling at unit, backed by file.
func hotDisk(sibling *types.VirtualDisk, file string, unit int32, capacity int64) *types.VirtualDisk {
	return &types.VirtualDisk{
		VirtualDevice: types.VirtualDevice{
			Key: -1, ControllerKey: sibling.ControllerKey, UnitNumber: &unit,
			Backing: &types.VirtualDiskFlatVer2BackingInfo{
				VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: file},
				DiskMode:                     string(types.VirtualDiskModePersistent), ThinProvisioned: types.NewBool(true),
			},
		},
		CapacityInBytes: capacity,
		CapacityInKB:    capacity >> 10,
	}
}
