package migration

import (
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
)

// TestRelocationPastItsDeadlineFreesItsSlot is the full run's stall: a
// relocation that does not end held its per-host slot, and the drain's
// migrations queued behind it waited for good. Here vCenter takes 10 s
// over a vMotion (and holds the VM meanwhile: reading it waits, as a
// vCenter not answering would) while the timeout is 300 ms. Before, the
// runner waited the timeout, cancelled, waited the timeout again, then
// read the VM with no bound: the slot stayed taken until vCenter let go
// of the VM, and the next migration from that host waited as long. Now the
// wait ends at the deadline counted from when vCenter queued the task,
// every vCenter call is bounded, and the runner gives its slot up: the
// next migration runs and completes while the first is still stuck, and
// the first ends by where its VM is once vCenter answers.
func TestRelocationPastItsDeadlineFreesItsSlot(t *testing.T) {
	w := newWorld(t, 1, 3)
	defer func(d time.Duration) { cancelGrace = d }(cancelGrace)
	cancelGrace = 200 * time.Millisecond
	cfg := testConfig()
	cfg.Limits.PerSourceHost = 1
	cfg.RelocateTimeout = 300 * time.Millisecond
	cfg.PrecheckTimeout = 2 * time.Second
	w.start(cfg)
	h := w.clusterHosts(0)
	stuck, next := w.runPod("stuck", h[0]), w.runPod("next", h[0])

	const stuckFor = 10 * time.Second
	w.relocateDelay(stuckFor)
	w.migrate("stuck-1", stuck, h[1])
	w.Eventually("the first migration relocates", func() bool { return w.migrationPhase("stuck-1") == events.PhaseRelocating })
	relocating := time.Now()
	w.relocateDelay(0)
	w.migrate("next-1", next, h[2])
	w.wantEnd("next-1", events.TypeMigrationCompleted) // the one queued behind the stuck one
	// Reading the stuck VM waits for vCenter; the clock says whether the
	// next migration went first.
	if took := time.Since(relocating); took >= stuckFor {
		t.Fatalf("the migration behind the stuck one completed %s after it began relocating, not before vCenter let go of it (%s): it waited for its slot", took.Round(time.Millisecond), stuckFor)
	}
	if got, _ := w.vmHost(next.vm); got != h[2] {
		t.Errorf("the next pod's VM on %s, want %s", got, h[2])
	}
	// vCenter moves the first VM once its task runs after all (vcsim
	// ignores the cancel): the migration ends by where the VM is.
	w.wantCompletedOnly("stuck-1", stuck, h[1])
}
