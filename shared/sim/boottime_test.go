package sim_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
)

// bootTimes reads a VM's power state and both boot times over the API,
// and fails the test unless the two times agree.
func bootTimes(t *testing.T, vm *object.VirtualMachine) (types.VirtualMachinePowerState, *time.Time) {
	t.Helper()
	var m mo.VirtualMachine
	if err := vm.Properties(context.Background(), vm.Reference(), []string{"runtime", "summary.runtime"}, &m); err != nil {
		t.Fatal(err)
	}
	rt, st := m.Runtime.BootTime, m.Summary.Runtime.BootTime
	if (rt == nil) != (st == nil) || rt != nil && !rt.Equal(*st) {
		t.Fatalf("runtime.bootTime %v, summary.runtime.bootTime %v: want one boot time in both", rt, st)
	}
	return m.Runtime.PowerState, rt
}

// TestBootTimeIsEachPowerOnsTime: vCenter sets a VM's runtime.bootTime and
// summary.runtime.bootTime when it powers on and unsets them when it powers
// off; a client tells one boot from the next by them. A power cycle is a
// new boot time, and an instant clone's child, powered on as it is made,
// has its own.
func TestBootTimeIsEachPowerOnsTime(t *testing.T) {
	ctx := context.Background()
	d := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 1, Seed: 1})
	c := simtest.Client(t, d)
	vm, _ := simtest.CreatePodVM(t, c, d, simtest.PodVM{
		Name: "pv-boot", Host: d.Hosts()[0], NumCPUs: 1, MemoryMB: 128, Spec: forkSpec("uid-b", "b", "sha256:"+strings.Repeat("b", 64)),
		Disks: []simtest.PodVMDisk{{File: "ephemeral.vmdk", CapacityBytes: 1 << 20}},
	})
	if state, at := bootTimes(t, vm); state != types.VirtualMachinePowerStatePoweredOff || at != nil {
		t.Fatalf("a VM made powered off: %s, boot time %v; want none", state, at)
	}
	power := func(want types.VirtualMachinePowerState) {
		t.Helper()
		task, err := vm.PowerOn(ctx)
		if want == types.VirtualMachinePowerStatePoweredOff {
			task, err = vm.PowerOff(ctx)
		}
		if err == nil {
			err = task.Wait(ctx)
		}
		if err != nil {
			t.Fatalf("power %s: %v", want, err)
		}
	}

	before := time.Now()
	power(types.VirtualMachinePowerStatePoweredOn)
	_, first := bootTimes(t, vm)
	if first == nil || first.Before(before) || first.After(time.Now()) {
		t.Fatalf("boot time %v after a power-on at %v: want the power-on's time", first, before)
	}
	power(types.VirtualMachinePowerStatePoweredOff)
	if _, at := bootTimes(t, vm); at != nil {
		t.Fatalf("boot time %v of a powered-off VM: want none", at)
	}
	power(types.VirtualMachinePowerStatePoweredOn)
	_, second := bootTimes(t, vm)
	if second == nil || !second.After(*first) {
		t.Fatalf("boot time %v after a power cycle, first boot %v: want a later one", second, first)
	}

	task, err := vm.InstantClone(ctx, types.VirtualMachineInstantCloneSpec{Name: "pv-boot-child"})
	if err != nil {
		t.Fatal(err)
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		t.Fatalf("instant clone: %v", err)
	}
	child := object.NewVirtualMachine(c.Client, info.Result.(types.ManagedObjectReference))
	if state, at := bootTimes(t, child); state != types.VirtualMachinePowerStatePoweredOn || at == nil || !at.After(*second) {
		t.Fatalf("instant clone child: %s, boot time %v; want running since its own power-on, after its parent's %v", state, at, second)
	}
	if _, at := bootTimes(t, vm); at == nil || !at.Equal(*second) {
		t.Fatalf("the parent's boot time %v after an instant clone, want its own boot's %v", at, second)
	}
}
