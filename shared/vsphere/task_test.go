package vsphere_test

import (
	"context"
	"testing"
	"time"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// WaitTask reads an ended task in one call, waits for a running one through
// the property collector, and returns a failed task's fault and a forgotten
// task's ManagedObjectNotFound as WaitForResult does.
func TestWaitTask(t *testing.T) {
	ctx := context.Background()
	d := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 1})
	c := simtest.Client(t, d).Client
	h := d.Hosts()[0]
	dc, err := find.NewFinder(c).Datacenter(ctx, sim.DatacenterName)
	if err != nil {
		t.Fatal(err)
	}
	folders, err := dc.Folders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	create, err := folders.VmFolder.CreateVM(ctx, types.VirtualMachineConfigSpec{
		Name: "waited", GuestId: "otherGuest64", NumCPUs: 1, MemoryMB: 64,
		Files: &types.VirtualMachineFileInfo{VmPathName: "[" + h.Datastores[0] + "]"},
	}, object.NewResourcePool(c, d.Clusters()[0].ResourcePool), object.NewHostSystem(c, h.Ref))
	if err != nil {
		t.Fatal(err)
	}
	created, err := vsphere.WaitTask(ctx, c, create.Reference())
	if err != nil {
		t.Fatal(err)
	}

	// calls runs wait and returns the calls it made.
	calls := func(wait func()) map[string]int64 {
		before := d.Calls()
		wait()
		return sim.CallsSince(before, d.Calls())
	}

	t.Run("ended", func(t *testing.T) {
		var info *types.TaskInfo
		got := calls(func() { info, err = vsphere.WaitTask(ctx, c, create.Reference()) })
		if err != nil {
			t.Fatal(err)
		}
		if ref, ok := info.Result.(types.ManagedObjectReference); !ok || ref.Type != "VirtualMachine" {
			t.Errorf("result = %#v, want the VM's reference", info.Result)
		}
		if sim.TotalCalls(got) != 1 || got["RetrievePropertiesEx"] != 1 {
			t.Errorf("calls = %v, want one RetrievePropertiesEx", got)
		}
	})

	vm := object.NewVirtualMachine(c, created.Result.(types.ManagedObjectReference))
	t.Run("running", func(t *testing.T) {
		if err := d.SetTaskDelay("PowerOn", 300*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.SetTaskDelay("PowerOn", 0) })
		on, err := vm.PowerOn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var info *types.TaskInfo
		got := calls(func() { info, err = vsphere.WaitTask(ctx, c, on.Reference()) })
		if err != nil || info.State != types.TaskInfoStateSuccess {
			t.Fatalf("WaitTask = %+v, %v; want success", info, err)
		}
		if got["RetrievePropertiesEx"] != 1 || got["WaitForUpdatesEx"] < 1 || got["CreatePropertyCollector"] != 1 || got["DestroyPropertyCollector"] != 1 {
			t.Errorf("calls = %v, want one read, then a wait through a property collector of its own", got)
		}
	})

	t.Run("failed", func(t *testing.T) {
		again, err := vm.PowerOn(ctx) // already on: the task fails
		if err != nil {
			t.Fatal(err)
		}
		// Let it end first, so the one read sees the fault.
		if _, err := again.WaitForResult(ctx); !fault.Is(err, &types.InvalidPowerState{}) {
			t.Fatalf("power on twice: %v, want InvalidPowerState", err)
		}
		info, err := vsphere.WaitTask(ctx, c, again.Reference())
		if !fault.Is(err, &types.InvalidPowerState{}) || info == nil || info.State != types.TaskInfoStateError {
			t.Errorf("WaitTask = %+v, %v; want the task's InvalidPowerState", info, err)
		}
	})

	t.Run("forgotten", func(t *testing.T) {
		_, err := vsphere.WaitTask(ctx, c, types.ManagedObjectReference{Type: "Task", Value: "task-forgotten"})
		if !fault.Is(err, &types.ManagedObjectNotFound{}) {
			t.Errorf("WaitTask of an unknown task = %v, want ManagedObjectNotFound", err)
		}
	})
}
