package vmotion_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/services/migration/vmotion"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
)

// TestAgainstTheSimulator walks a pod VM through what the migration
// service asks of vCenter: host state with pool and datastores, the VM's
// placement and guestinfo, a cross-cluster relocation, maintenance mode
// (refused while the VM runs there), and removal.
func TestAgainstTheSimulator(t *testing.T) {
	ctx := t.Context()
	dc, vc, dco, c := start(t, 2)
	clusters := dc.Clusters()
	src, dst := clusters[0].Hosts[0], clusters[1].Hosts[1]

	h, err := c.Host(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	if !h.Connected() || h.Maintenance || h.Pool != clusters[1].ResourcePool || !slices.Contains(h.Datastores, sim.SharedDatastore) {
		t.Fatalf("Host(%s) = %+v, want connected, cluster-2's pool, %s mounted", dst, h, sim.SharedDatastore)
	}
	if _, err := c.Host(ctx, "esx-9-09"); !errors.Is(err, vmotion.ErrNotFound) {
		t.Fatalf("unknown host: %v, want ErrNotFound", err)
	}

	// A pod VM as the provisioner makes it.
	folders, err := dco.Folders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	spec := types.VirtualMachineConfigSpec{
		Name: "pv-u1", GuestId: "otherGuest64", NumCPUs: 1, MemoryMB: 128,
		Files: &types.VirtualMachineFileInfo{VmPathName: "[" + sim.SharedDatastore + "]"},
		ExtraConfig: []types.BaseOptionValue{
			&types.OptionValue{Key: vmotion.UIDKey, Value: "u1"},
			&types.OptionValue{Key: vmotion.NamespaceKey, Value: "default"},
			&types.OptionValue{Key: vmotion.PodKey, Value: "web"},
		},
	}
	srcSpec, _ := dc.Host(src)
	task, err := folders.VmFolder.CreateVM(ctx, spec, object.NewResourcePool(vc.Client, clusters[0].ResourcePool), object.NewHostSystem(vc.Client, srcSpec.Ref))
	if err != nil {
		t.Fatal(err)
	}
	info, err := task.WaitForResult(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ref := info.Result.(types.ManagedObjectReference)
	vmo := object.NewVirtualMachine(vc.Client, ref)
	if pt, err := vmo.PowerOn(ctx); err != nil || pt.Wait(ctx) != nil {
		t.Fatalf("power on: %v", err)
	}

	vm, err := c.VM(ctx, ref.Value)
	if err != nil {
		t.Fatal(err)
	}
	if vm.Host != src || vm.UID != "u1" || vm.Namespace != "default" || vm.Pod != "web" || !slices.Contains(vm.Datastores, sim.SharedDatastore) {
		t.Fatalf("VM = %+v", vm)
	}
	on, err := c.VMsOnHost(ctx, src)
	if err != nil || len(on) != 1 || on[0].Ref != ref {
		t.Fatalf("VMsOnHost(%s) = %+v, %v", src, on, err)
	}
	if err := c.EnterMaintenance(ctx, src); err == nil {
		t.Fatal("maintenance mode entered with a powered-on VM on the host")
	}

	tref, err := c.StartRelocate(ctx, vmotion.Move{VM: ref.Value, Host: h.Ref, Pool: h.Pool})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(ctx, tref, nil); err != nil {
		t.Fatal(err)
	}
	if vm, err = c.VM(ctx, ref.Value); err != nil || vm.Host != dst {
		t.Fatalf("after relocation: %+v, %v; want on %s", vm, err, dst)
	}
	var pool types.ManagedObjectReference
	if p, err := vmo.ResourcePool(ctx); err == nil {
		pool = p.Reference()
	}
	if pool != clusters[1].ResourcePool {
		t.Errorf("VM in pool %v, want cluster-2's %v", pool, clusters[1].ResourcePool)
	}
	if on, _ := c.VMsOnHost(ctx, src); len(on) != 0 {
		t.Errorf("VMsOnHost(%s) still lists %d VMs after the move", src, len(on))
	}

	if err := c.EnterMaintenance(ctx, src); err != nil {
		t.Fatalf("maintenance mode on the emptied host: %v", err)
	}
	if h, _ := c.Host(ctx, src); !h.Maintenance {
		t.Error("host not in maintenance mode")
	}
	if err := c.ExitMaintenance(ctx, src); err != nil {
		t.Fatal(err)
	}
	if err := c.Destroy(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if err := c.Destroy(ctx, ref); err != nil {
		t.Errorf("second Destroy: %v, want nil (already gone)", err)
	}
	if _, err := c.VM(ctx, ref.Value); !errors.Is(err, vmotion.ErrNotFound) {
		t.Errorf("VM after Destroy: %v, want ErrNotFound", err)
	}
}

// TestTaskStateAndSlicedWait: a relocation's state is read from vCenter
// (running with its age by vCenter's clock, then success; a cancelled one
// ended, cancelled, with its fault), and Wait, made of slices far shorter
// than the task, still returns when the task ends.
func TestTaskStateAndSlicedWait(t *testing.T) {
	ctx := t.Context()
	dc, vc, _, c := start(t, 1)
	hosts := dc.Clusters()[0].Hosts
	src, _ := dc.Host(hosts[0])
	dst, err := c.Host(ctx, hosts[1])
	if err != nil {
		t.Fatal(err)
	}
	newVM := func(name string) types.ManagedObjectReference {
		vm, _, err := simtest.NewPodVM(ctx, vc, dc, simtest.PodVM{Name: name, Host: src, NumCPUs: 1, MemoryMB: 128, PowerOn: true})
		if err != nil {
			t.Fatal(err)
		}
		return vm.Reference()
	}
	a, b := newVM("pv-a"), newVM("pv-b")
	if err := dc.SetTaskDelay("RelocateVm", 700*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	defer func(d time.Duration) { vmotion.WaitSlice = d }(vmotion.WaitSlice)
	vmotion.WaitSlice = 50 * time.Millisecond

	ref, err := c.StartRelocate(ctx, vmotion.Move{VM: a.Value, Host: dst.Ref, Pool: dst.Pool})
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Task(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if st.Done() || st.Err != nil || st.Age < 0 || st.Age > time.Minute {
		t.Fatalf("a relocation just started: %+v; want running, no fault, a small age", st)
	}
	if err := c.Wait(ctx, ref, nil); err != nil {
		t.Fatalf("sliced wait: %v", err)
	}
	if st, err := c.Task(ctx, ref); err != nil || st.State != string(types.TaskInfoStateSuccess) || st.Age < 700*time.Millisecond {
		t.Fatalf("after the wait: %+v, %v; want success, at least the task's 700ms old", st, err)
	}

	ref, err = c.StartRelocate(ctx, vmotion.Move{VM: b.Value, Host: dst.Ref, Pool: dst.Pool})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CancelTask(ctx, ref); err != nil {
		t.Fatal(err)
	}
	st, err = c.Task(ctx, ref)
	if err != nil || !st.Done() || !st.Cancelled || st.Err == nil {
		t.Fatalf("a cancelled relocation: %+v, %v; want ended, cancelled, with its fault", st, err)
	}
	if err := c.Wait(ctx, ref, nil); err == nil {
		t.Error("waiting on a cancelled relocation returned no error")
	}
	if _, err := c.Task(ctx, types.ManagedObjectReference{Type: "Task", Value: "task-none"}); !errors.Is(err, vmotion.ErrNotFound) {
		t.Errorf("an unknown task: %v, want ErrNotFound", err)
	}
}

// Destroying a pod VM (a leftover of a lost host) keeps the disks it shares
// with other VMs: an image disk and the boot disk live outside the VM's
// directory, and vCenter deletes the files of every disk still attached.
func TestDestroyKeepsSharedDisks(t *testing.T) {
	ctx := t.Context()
	dc, vc, dco, c := start(t, 1)
	const shared = "[" + sim.SharedDatastore + "] podvisor-images/app.vmdk"
	simtest.CreateDisks(t, vc, dco, "["+sim.SharedDatastore+"] podvisor-images", shared)
	host, _ := dc.Host(dc.Clusters()[0].Hosts[0])
	vm, _ := simtest.CreatePodVM(t, vc, dc, simtest.PodVM{Name: "pv-leftover", Host: host, NumCPUs: 1, MemoryMB: 128, PowerOn: true,
		Disks: []simtest.PodVMDisk{{File: "ephemeral.vmdk", CapacityBytes: 8 << 20}, {Shared: shared, ReadOnly: true}}})
	if err := c.Destroy(ctx, vm.Reference()); err != nil {
		t.Fatal(err)
	}
	ds, err := dc.Datastore(sim.SharedDatastore)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"podvisor-images/app.vmdk", "podvisor-images/app-flat.vmdk"} {
		if _, err := os.Stat(filepath.Join(ds.Dir, f)); err != nil {
			t.Errorf("shared disk file %s after the destroy: %v", f, err)
		}
	}
	if _, err := os.Stat(filepath.Join(ds.Dir, "pv-leftover")); !os.IsNotExist(err) {
		t.Errorf("the VM's own directory after the destroy: %v, want it gone", err)
	}
}

// start runs a simulated datacenter of clusters × 2 hosts and returns it
// with a client, its datacenter and the migration service's client on it.
func start(t *testing.T, clusters int) (*sim.Datacenter, *govmomi.Client, *object.Datacenter, *vmotion.Client) {
	t.Helper()
	dc := simtest.Start(t, sim.Config{Clusters: clusters, HostsPerCluster: 2, Seed: 3})
	vc := simtest.Client(t, dc)
	dco, err := find.NewFinder(vc.Client).DefaultDatacenter(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return dc, vc, dco, vmotion.New(vc.Client, dco)
}
