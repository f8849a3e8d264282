package sim

import (
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// bootClock keeps a VM's boot time as vCenter keeps it: runtime.bootTime
// and summary.runtime.bootTime are the time of the VM's last power-on
// while it runs, and unset while it does not. Clients tell one boot of a
// guest from the next by it (a native VM's status says which network data
// its guest read when it booted). vcsim sets only summary.runtime.bootTime,
// and only in its own power task; every change of a VM's power state here
// (vcsim's tasks, an instant clone's child powered on, a VM of a failed
// host forced off) passes through this observer, which sets both.
//
// A suspended VM has no boot time here, and its resume is a new boot:
// the simulated guest of a suspended VM is stopped and boots again when
// the VM is powered on (guestBridge), unlike a real guest, which resumes
// (vCenter keeps its boot time through a suspend).
type bootClock struct{ m *simulator.Registry }

var bootClockRef = types.ManagedObjectReference{Type: "PodvisorBootClock", Value: "boot"}

func (b *bootClock) Reference() types.ManagedObjectReference { return bootClockRef }

func (b *bootClock) PutObject(*simulator.Context, mo.Reference) {}

func (b *bootClock) RemoveObject(*simulator.Context, types.ManagedObjectReference) {}

// UpdateObject runs inside the change of power state, with the VM's lock
// held: the boot time is set in the same critical section, so no reader
// sees a running VM without it.
func (b *bootClock) UpdateObject(ctx *simulator.Context, obj mo.Reference, changes []types.PropertyChange) {
	vm, ok := obj.(*mo.VirtualMachine)
	if !ok {
		return
	}
	powered := false
	for _, ch := range changes {
		if ch.Name == "runtime.powerState" {
			powered = true
		}
	}
	if !powered {
		return
	}
	if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
		if vm.Runtime.BootTime == nil && vm.Summary.Runtime.BootTime == nil {
			return
		}
		b.m.Update(ctx, vm, []types.PropertyChange{
			{Name: "runtime.bootTime", Val: nil},
			{Name: "summary.runtime.bootTime", Val: nil},
		})
		return
	}
	// vcsim's power task sets summary.runtime.bootTime in the same
	// change; one boot has one time, in both properties.
	at := time.Now()
	if t := vm.Summary.Runtime.BootTime; t != nil && bootTimeChanged(changes) {
		at = *t
	}
	b.m.Update(ctx, vm, []types.PropertyChange{
		{Name: "runtime.bootTime", Val: at},
		{Name: "summary.runtime.bootTime", Val: at},
	})
}

// bootTimeChanged says a change of power state set the boot time too.
func bootTimeChanged(changes []types.PropertyChange) bool {
	for _, ch := range changes {
		if ch.Name == "summary.runtime.bootTime" && ch.Val != nil {
			return true
		}
	}
	return false
}
