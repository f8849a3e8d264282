package sim_test

import (
	"context"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/shared/ociregistry"
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
	info, ok := d.Guests().Guest(vm.Reference().Value)
	if !ok || info.VM.Native == nil {
		t.Fatalf("the VM runs no native guest (running %v)", ok)
	}
	console := filepath.Join(info.Dir, "console.log")
	deadline := time.Now().Add(15 * time.Second)
	for {
		b, _ := os.ReadFile(console)
		if strings.Contains(string(b), "init: ready vm1") {
			if !strings.Contains(string(b), "user data script exited 0") {
				t.Errorf("console:\n%s\nwant the user data script to have run", b)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest's init did not get ready within 15s; console:\n%s", b)
		}
		time.Sleep(20 * time.Millisecond)
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
