package scheduler_test

import (
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler"
)

// legacyVM writes what a scheduler of the version before the VM flag left
// for a native VM running on host: its record and its allocation there
// without the flag (so it counts as a pod).
func (e *env) legacyVM(name, host string) *events.VMRecord {
	e.T.Helper()
	size := events.VMSize{CPUs: 1, MemoryMiB: 1024}
	vm := e.waitingVM(name, 1, size, func(r *events.VMRecord) {
		r.Status.Conditions, r.ScheduledGeneration, r.Status.Phase, r.Status.Host = nil, 1, events.VMPhaseReady, host
	})
	e.holdBound(host, name, vm.UID, size.CPUMilli(), size.MemoryBytes())
	return vm
}

// waitFlagged waits for the ledger to flag the VM's allocation on host.
func (e *env) waitFlagged(host string, vm *events.VMRecord) {
	e.T.Helper()
	e.EventuallyWithin("the VM's allocation flagged", 10*time.Second, func() bool {
		entry, err := e.led.Get(e.T.Context(), host)
		return err == nil && entry.Allocations[vm.UID].VM
	})
}

// A native VM's allocation written before VMs were told apart counts as a
// pod; a scheduler starting flags it (before the sweep's first pass, 15 s
// away here), so the pod cap of 1 leaves room for a pod beside the VM.
func TestAVMAllocationWithoutTheFlagIsFlaggedAtStart(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 1, cfg: func(c *scheduler.Config) { c.MaxPodsPerHost = 1 }})
	host := e.HostNames("")[0]
	e.stop()
	vm := e.legacyVM("legacy", host)
	e.stop = e.startScheduler()
	e.waitFlagged(host, vm)
	pod := e.accept(testPod("beside", "100m", "64Mi"))
	if s := e.waitScheduled(pod.ObjectKey()); s.Host != host {
		t.Fatalf("pod placed on %s, want %s beside the VM", s.Host, host)
	}
}

// An allocation that loses its flag while the scheduler runs (a replica of
// the older version rewrote the entry during a rollout) is flagged again
// by the sweep.
func TestAVMAllocationThatLostItsFlagIsFlaggedAgainByTheSweep(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 1, cfg: func(c *scheduler.Config) {
		c.MaxPodsPerHost, c.PendingRescan = 1, 200*time.Millisecond
	}})
	host := e.HostNames("")[0]
	vm := e.legacyVM("rewritten", host)
	e.waitFlagged(host, vm)
	pod := e.accept(testPod("beside", "100m", "64Mi"))
	if s := e.waitScheduled(pod.ObjectKey()); s.Host != host {
		t.Fatalf("pod placed on %s, want %s beside the VM", s.Host, host)
	}
}
