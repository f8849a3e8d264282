package nativevm_test

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner/nativevm"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/sim"
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

// runWithDataDisk declares the class small and the image vmos, and runs
// vm1 (vmDecl("small", "")) with a 64 MiB data disk on the first host
// until it is Ready; it returns the declaration, for the test to change,
// the host and the record.
func (e *env) runWithDataDisk() (*events.VMDeclared, sim.HostSpec, *events.VMRecord) {
	e.t.Helper()
	e.declareSmall()
	host := e.dc.Hosts()[0]
	decl := vmDecl("small", "")
	decl.VM.Spec.Disks = []events.VMDisk{{Name: "data", Size: "64Mi"}}
	return decl, host, e.runOn(decl, host)
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

// vmDisk is a disk of a VM as vCenter reports it.
type vmDisk struct {
	File     string
	Unit     int32
	Capacity int64
}

// disks are vm's disks by file name (root.vmdk, data.vmdk, ...), read
// from vCenter, and its configuration's change version.
func (e *env) disks(vm *object.VirtualMachine) (map[string]vmDisk, string) {
	e.t.Helper()
	var m mo.VirtualMachine
	if err := vm.Properties(context.Background(), vm.Reference(), []string{"config"}, &m); err != nil {
		e.t.Fatal(err)
	}
	out := map[string]vmDisk{}
	for _, d := range object.VirtualDeviceList(m.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
		disk := d.(*types.VirtualDisk)
		file := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo).GetVirtualDeviceFileBackingInfo().FileName
		out[path.Base(file)] = vmDisk{File: file, Unit: *disk.UnitNumber, Capacity: disk.CapacityInBytes}
	}
	return out, m.Config.ChangeVersion
}

// wantDisks fails the test unless vm has exactly the disks want (file name
// → unit and capacity), each in the VM's directory on datastore ds.
func (e *env) wantDisks(vm *object.VirtualMachine, r *events.VMRecord, want map[string]vmDisk) {
	e.t.Helper()
	got, _ := e.disks(vm)
	for name, w := range want {
		w.File = fmt.Sprintf("[%s] %s/%s", r.Status.Datastores[0], events.NativeVMName(r.UID), name)
		want[name] = w
	}
	if !maps.Equal(got, want) {
		e.t.Fatalf("the VM's disks in vCenter:\n%v\nwant\n%v", got, want)
	}
}

// apply publishes decl, a changed declaration of a VM that exists, places
// its new generation on host and waits until it is Ready at it.
func (e *env) apply(decl *events.VMDeclared, host sim.HostSpec) *events.VMRecord {
	e.t.Helper()
	return e.applyWith(decl, host, defaultNIC)
}

// applyWith is apply with the networks network-config attached as nics.
func (e *env) applyWith(decl *events.VMDeclared, host sim.HostSpec, nics ...events.NetworkAttachment) *events.VMRecord {
	e.t.Helper()
	ns, name := decl.VM.Metadata.Namespace, decl.VM.Metadata.Name
	cur, _, err := e.vms.Get(context.Background(), events.VMRecordKey(ns, name))
	if err != nil || cur == nil {
		e.t.Fatalf("no record of %s/%s (%v)", ns, name, err)
	}
	gen := cur.Generation + 1
	e.publish("podvisor/cli", decl)
	r := e.waitRecordOf(ns, name, fmt.Sprintf("generation %d", gen), func(r *events.VMRecord) bool { return r.Generation == gen })
	e.placeWith(r, host, nics...)
	return e.waitRecordOf(ns, name, fmt.Sprintf("generation %d Ready", gen), func(r *events.VMRecord) bool {
		return r.Status.Phase == events.VMPhaseReady && r.Status.Generation == gen
	})
}

// hardwareSynced fails the test unless the record's HardwareSynced
// condition has status.
func hardwareSynced(t *testing.T, r *events.VMRecord, status string) events.PodCondition {
	t.Helper()
	c, ok := r.Condition(events.VMConditionHardwareSynced)
	if !ok || c.Status != status {
		t.Fatalf("HardwareSynced = %+v, want %s", c, status)
	}
	return c
}

// rejections collects the vm.rejected events published from now on.
func (e *env) rejections() <-chan *events.VMRejected {
	e.t.Helper()
	k, _ := events.Lookup(events.TypeVMRejected)
	msgs := make(chan *nats.Msg, 16)
	sub, err := e.bus.Conn().ChanSubscribe(k.Subject+".>", msgs)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = sub.Unsubscribe() })
	sub2, err := e.bus.Conn().ChanSubscribe(k.Subject, msgs)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = sub2.Unsubscribe() })
	if err := e.bus.Conn().Flush(); err != nil {
		e.t.Fatal(err)
	}
	out := make(chan *events.VMRejected, 16)
	go func() {
		for m := range msgs {
			ev, err := bus.DecodeMessage(m)
			if err != nil {
				continue
			}
			var rj events.VMRejected
			if ev.DataAs(&rj) == nil {
				out <- &rj
			}
		}
	}()
	return out
}

// TestDisksFollowTheSpecOfARunningVM: spec.disks changed on a VM that
// runs, as a VM Operator user changes it. A disk added is created in the
// VM's directory and hot-added at the next SCSI unit, a disk grown is
// extended in place, both without a power cycle; HardwareSynced says True
// once vCenter reports those devices. A disk declared smaller is refused
// naming it and both sizes, and the VM stays as it is. Applying the same
// declaration again changes nothing, nor does a converge of it.
func TestDisksFollowTheSpecOfARunningVM(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	decl, host, r := e.runWithDataDisk()
	vm := e.vm(r)
	boot, _ := e.disks(vm)
	root := boot["root.vmdk"]
	e.wantDisks(vm, r, map[string]vmDisk{"root.vmdk": {Unit: 0, Capacity: root.Capacity}, "data.vmdk": {Unit: 1, Capacity: 64 << 20}})
	running, ok := e.dc.Guests().Guest(vm.Reference().Value)
	if !ok {
		t.Fatal("the VM's guest does not run")
	}

	decl.VM.Spec.Disks = []events.VMDisk{{Name: "data", Size: "128Mi"}, {Name: "logs", Size: "32Mi"}}
	r = e.apply(decl, host)
	e.wantDisks(vm, r, map[string]vmDisk{"root.vmdk": {Unit: 0, Capacity: root.Capacity},
		"data.vmdk": {Unit: 1, Capacity: 128 << 20}, "logs.vmdk": {Unit: 2, Capacity: 32 << 20}})
	hardwareSynced(t, r, events.ConditionTrue)
	if r.Status.VM != vm.Reference().Value || r.Status.PowerState != events.PowerStatePoweredOn {
		t.Errorf("status %+v: want the same VM, powered on", r.Status)
	}
	if g, ok := e.dc.Guests().Guest(vm.Reference().Value); !ok || g.PID != running.PID {
		t.Errorf("the guest was restarted (pid %d, before %d): disks are hot-added and extended", g.PID, running.PID)
	}

	// Shrinking is refused when declared: the VM keeps its disks.
	rejected := e.rejections()
	shrunk := vmDecl("small", "")
	shrunk.VM.Spec.Disks = []events.VMDisk{{Name: "data", Size: "64Mi"}, {Name: "logs", Size: "32Mi"}}
	e.publish("podvisor/cli", shrunk)
	select {
	case rj := <-rejected:
		if rj.Reason != "Invalid" || rj.Field != "spec.disks[0].size" ||
			!strings.Contains(rj.Message, "disk data is 128Mi (128 MiB) and cannot shrink to 64Mi (64 MiB)") {
			t.Errorf("vm.rejected %+v: want spec.disks[0].size refused naming the disk and both sizes", rj)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("a shrunk disk was not refused")
	}

	// The same declaration again is no new generation, and a converge of
	// the VM as it is (a drift repair after a power-off) reconfigures
	// nothing.
	_, version := e.disks(vm)
	e.publish("podvisor/cli", decl)
	e.powerOff(vm)
	if repaired, err := e.ctl.Resync(ctx); err != nil || repaired[nativevm.RepairPower] != 1 {
		t.Fatalf("Resync = %v, %v; want the VM powered on again", repaired, err)
	}
	r = e.waitRecord("Ready again", func(r *events.VMRecord) bool {
		return r.Status.Phase == events.VMPhaseReady && r.Status.PowerState == events.PowerStatePoweredOn
	})
	if r.Generation != 2 {
		t.Errorf("generation %d after the same declaration and a refused one, want 2", r.Generation)
	}
	hardwareSynced(t, r, events.ConditionTrue)
	e.wantDisks(vm, r, map[string]vmDisk{"root.vmdk": {Unit: 0, Capacity: root.Capacity},
		"data.vmdk": {Unit: 1, Capacity: 128 << 20}, "logs.vmdk": {Unit: 2, Capacity: 32 << 20}})
	if _, now := e.disks(vm); now != version {
		t.Errorf("the VM was reconfigured (change version %s, before %s): nothing differed", now, version)
	}
	// Powered on again, the guest has the disk added and the one grown
	// as block devices of their sizes.
	g, ok := e.dc.Guests().Guest(vm.Reference().Value)
	if !ok {
		t.Fatal("the VM's guest does not run")
	}
	sizes := map[string]int64{}
	for _, d := range g.VM.Disks {
		if fi, err := os.Stat(d.Path); err == nil && fi.Size() == d.CapacityBytes {
			sizes[filepath.Base(d.Path)] = d.CapacityBytes
		}
	}
	if sizes["data-flat.vmdk"] != 128<<20 || sizes["logs-flat.vmdk"] != 32<<20 {
		t.Errorf("the guest's disks %v: want data of 128 MiB and logs of 32 MiB", sizes)
	}
}

// TestADiskRemovedFromTheSpecIsDetachedAndKept: a disk removed from
// spec.disks is detached from the running VM and its file kept in the
// VM's directory (the VM owns its disks: they go with the VM, not with an
// edit); declared again it is attached as it was, with its data, and
// extended first when declared larger. Declared smaller than its file, it
// is refused on the VM's status (DiskShrinkRefused, naming it and both
// sizes) and not attached. Deleting the VM removes its directory, the
// detached disk's file with it.
func TestADiskRemovedFromTheSpecIsDetachedAndKept(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.declareSmall()
	host := e.dc.Hosts()[0]
	decl := func(disks ...events.VMDisk) *events.VMDeclared {
		d := vmDecl("small", "")
		d.VM.Spec.Disks = disks
		return d
	}
	data, logs := events.VMDisk{Name: "data", Size: "64Mi"}, events.VMDisk{Name: "logs", Size: "32Mi"}
	r := e.runOn(decl(data, logs), host)
	vm := e.vm(r)
	name := events.NativeVMName(r.UID)
	boot, _ := e.disks(vm)
	root := boot["root.vmdk"]
	store, err := e.s.DatastoreByName(ctx, r.Status.Datastores[0])
	if err != nil {
		t.Fatal(err)
	}
	dataFile := fmt.Sprintf("[%s] %s/data.vmdk", r.Status.Datastores[0], name)

	r = e.apply(decl(logs), host)
	e.wantDisks(vm, r, map[string]vmDisk{"root.vmdk": {Unit: 0, Capacity: root.Capacity}, "logs.vmdk": {Unit: 2, Capacity: 32 << 20}})
	hardwareSynced(t, r, events.ConditionTrue)
	dc, err := find.NewFinder(e.s.Vim()).DefaultDatacenter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := object.NewVirtualDiskManager(e.s.Vim()).QueryVirtualDiskUuid(ctx, dataFile, dc); err != nil {
		t.Fatalf("the detached disk's file %s: %v; want it kept", dataFile, err)
	}
	// What the guest wrote on it while it was attached.
	const written = "written before the disk was detached"
	if err := store.Upload(ctx, strings.NewReader(written), name+"/data-flat.vmdk", &soap.DefaultUpload); err != nil {
		t.Fatal(err)
	}

	r = e.apply(decl(data, logs), host)
	e.wantDisks(vm, r, map[string]vmDisk{"root.vmdk": {Unit: 0, Capacity: root.Capacity},
		"data.vmdk": {Unit: 1, Capacity: 64 << 20}, "logs.vmdk": {Unit: 2, Capacity: 32 << 20}})
	hardwareSynced(t, r, events.ConditionTrue)
	rc, _, err := store.Download(ctx, name+"/data-flat.vmdk", &soap.DefaultDownload)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !strings.HasPrefix(string(got), written) {
		t.Errorf("the disk declared again holds %q, want what was written on it", got)
	}

	// Removed, then declared again smaller than its file: refused, and
	// the VM left as it was.
	e.apply(decl(logs), host)
	e.publish("podvisor/cli", decl(events.VMDisk{Name: "data", Size: "32Mi"}, logs))
	r = e.waitRecord("generation 5", func(r *events.VMRecord) bool { return r.Generation == 5 })
	e.place(r, host)
	r = e.waitRecord("refused", func(r *events.VMRecord) bool { return r.Status.Phase == events.VMPhaseFailed })
	c := hardwareSynced(t, r, events.ConditionFalse)
	if c.Reason != "DiskShrinkRefused" || !strings.Contains(c.Message, "disk data is 64 MiB and cannot shrink to 32Mi (32 MiB)") {
		t.Errorf("HardwareSynced = %+v: want DiskShrinkRefused naming the disk and both sizes", c)
	}
	e.wantDisks(vm, r, map[string]vmDisk{"root.vmdk": {Unit: 0, Capacity: root.Capacity}, "logs.vmdk": {Unit: 2, Capacity: 32 << 20}})

	// Declared larger than its file: extended, then attached.
	r = e.apply(decl(events.VMDisk{Name: "data", Size: "96Mi"}, logs), host)
	e.wantDisks(vm, r, map[string]vmDisk{"root.vmdk": {Unit: 0, Capacity: root.Capacity},
		"data.vmdk": {Unit: 1, Capacity: 96 << 20}, "logs.vmdk": {Unit: 2, Capacity: 32 << 20}})
	hardwareSynced(t, r, events.ConditionTrue)

	// Detached again, then the VM deleted: its directory goes, the
	// detached disk with it.
	e.apply(decl(logs), host)
	e.publish("podvisor/cli", &events.VMDeleteRequested{Namespace: "team-a", Name: "vm1"})
	eventually(t, "the record removed", func() bool {
		rec, _, _ := e.vms.Get(ctx, events.VMRecordKey("team-a", "vm1"))
		return rec == nil
	})
	if _, err := store.Stat(ctx, name); err == nil {
		t.Errorf("the directory of the deleted VM is still on %s", r.Status.Datastores[0])
	}
}
