package nativevm_test

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/events"
)

// TestDataDiskFormattedAndMountedByTheGuest is an extra disk as a VM
// Operator user meets it: the VM gets it as its second SCSI disk, the
// guest sees it as /dev/sdb, and cloud-init user data (fs_setup, mounts,
// runcmd) formats it, mounts it on /data and writes there; what the guest
// wrote is on the VM's disk file once it is powered off, and the guest's
// block device is gone with it.
func TestDataDiskFormattedAndMountedByTheGuest(t *testing.T) {
	privtest.RequireTools(t, "debugfs", "losetup")
	e := newEnv(t)
	client := "podvisor/cli"
	e.declareClass("small", events.VirtualMachineClassSpec{CPUs: 1, Memory: "512Mi"})
	e.declareImage(events.VirtualMachineImageSpec{OCI: e.img})
	decl := func(power string) *events.VMDeclared {
		return withDataDisk(power, "echo kept on the data disk > /data/hello", "df /data > /data/df")
	}
	r := e.runOn(decl(events.PowerStatePoweredOn), e.dc.Hosts()[0])
	vm := e.vm(r)
	console := e.waitConsole(vm.Reference().Value, "init: formatted /dev/sdb", "init: /dev/sdb mounted on /data", "cloud-config applied")
	if strings.Contains(console, "runcmd exited") {
		t.Errorf("runcmd failed:\n%s", console)
	}
	data := e.dataDisk(vm.Reference().Value)

	e.publish(client, decl(events.PowerStatePoweredOff))
	r = e.waitRecord("generation 2", func(r *events.VMRecord) bool { return r.Generation == 2 })
	e.place(r, e.dc.Hosts()[0])
	e.waitRecord("powered off", func(r *events.VMRecord) bool { return r.Status.PowerState == events.PowerStatePoweredOff })
	if got, err := exec.Command("debugfs", "-R", "cat /hello", data).Output(); err != nil || !strings.Contains(string(got), "kept on the data disk") {
		t.Errorf("/hello on the data disk = %q (%v)", got, err)
	}
	if got, err := exec.Command("debugfs", "-R", "cat /df", data).Output(); err != nil || !strings.Contains(string(got), "/data") {
		t.Errorf("df in the guest = %q (%v), want /data a mount of its own", got, err)
	}
	eventually(t, "the data disk's loop device detached", func() bool {
		out, _ := exec.Command("losetup", "--associated", data).Output()
		return strings.TrimSpace(string(out)) == ""
	})
}

// withDataDisk is vmDecl("small", power) with a 64 MiB data disk that
// cloud-init formats (unless it has a filesystem already) and mounts on
// /data, then runs runcmd.
func withDataDisk(power string, runcmd ...string) *events.VMDeclared {
	d := vmDecl("small", power)
	d.VM.Spec.Disks = []events.VMDisk{{Name: "data", Size: "64Mi"}}
	d.VM.Spec.UserData = "#cloud-config\nfs_setup:\n- {device: /dev/sdb, filesystem: ext4}\nmounts:\n- [/dev/sdb, /data]\nruncmd:\n"
	for _, c := range runcmd {
		d.VM.Spec.UserData += "- " + c + "\n"
	}
	return d
}

// dataDisk is the file of the data disk the guest of VM ref sees as sdb.
func (e *env) dataDisk(ref string) string {
	e.t.Helper()
	g, _ := e.dc.Guests().Guest(ref)
	for _, d := range g.VM.Disks {
		if strings.HasSuffix(d.Path, "data-flat.vmdk") {
			return d.Path
		}
	}
	e.t.Fatalf("the guest of %s has no data disk: %+v", ref, g.VM.Disks)
	return ""
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 15s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
