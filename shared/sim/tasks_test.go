package sim

import (
	"errors"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/task"
	"github.com/vmware/govmomi/vim25/types"
)

// waitTask, the datacenter's own wait for its tasks, returns a task's
// result once it ended (also when it ended before the wait began) and its
// fault as a client's WaitForResult would; an unknown task is not found.
func TestWaitTaskReturnsResultsAndFaults(t *testing.T) {
	ctx, d, vc, dc := startInproc(t)
	folders, err := dc.Folders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h := d.Hosts()[0]
	create, err := folders.VmFolder.CreateVM(ctx, types.VirtualMachineConfigSpec{
		Name: "waited", GuestId: string(types.VirtualMachineGuestOsIdentifierOtherLinux64Guest), NumCPUs: 1, MemoryMB: 64,
		Files: &types.VirtualMachineFileInfo{VmPathName: "[" + SharedDatastore + "] waited"},
	}, object.NewResourcePool(vc, d.clusters[0].ResourcePool), object.NewHostSystem(vc, h.Ref))
	if err != nil {
		t.Fatal(err)
	}
	res, err := d.waitTask(ctx, create.Reference())
	ref, ok := res.(types.ManagedObjectReference)
	if err != nil || !ok || ref.Type != "VirtualMachine" {
		t.Fatalf("create: result %v (%T), %v; want the new VM", res, res, err)
	}
	// Ended long before this wait: seen at once.
	if again, err := d.waitTask(ctx, create.Reference()); err != nil || again != res {
		t.Fatalf("the ended create waited for again: %v, %v; want %v", again, err, res)
	}

	vm := object.NewVirtualMachine(vc, ref)
	on, err := vm.PowerOn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.waitTask(ctx, on.Reference()); err != nil {
		t.Fatalf("power on: %v", err)
	}
	// Powering on a VM that is on fails in the task: its fault comes back.
	twice, err := vm.PowerOn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.waitTask(ctx, twice.Reference())
	var te task.Error
	if !errors.As(err, &te) {
		t.Fatalf("second power on: %v (%T), want the task's fault", err, err)
	}
	if _, ok := te.Fault().(*types.InvalidPowerState); !ok {
		t.Fatalf("second power on: fault %T, want InvalidPowerState", te.Fault())
	}

	if _, err := d.waitTask(ctx, types.ManagedObjectReference{Type: "Task", Value: "task-none"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("an unknown task: %v, want not found", err)
	}
	d.tasks.mu.Lock()
	left := len(d.tasks.waiting)
	d.tasks.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d waits left registered after every wait returned", left)
	}
}
