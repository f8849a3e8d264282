package migration

import (
	"fmt"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/testenv"
)

// TestRestartResumesMigrations: a service stopped with one migration
// relocating and two queued behind it is replaced by a new one, which
// finishes all three from the records (nothing lost, nothing moved twice).
func TestRestartResumesMigrations(t *testing.T) {
	w := newWorld(t, 1, 4)
	w.relocateDelay(300 * time.Millisecond)
	cfg := testConfig()
	cfg.Limits.PerSourceHost = 1
	w.start(cfg)
	h := w.clusterHosts(0)
	pods := w.runPods("r", 3, h[0])
	for i, p := range pods {
		w.migrate(fmt.Sprintf("resume-%d", i), p, h[1+i])
	}
	w.Eventually("one relocates and two are queued", func() bool {
		relocating, queued := 0, 0
		for i := range pods {
			switch w.migrationPhase(fmt.Sprintf("resume-%d", i)) {
			case events.PhaseRelocating:
				relocating++
			case events.PhaseQueued:
				queued++
			}
		}
		return relocating == 1 && queued == 2
	})
	w.stop()

	w.start(cfg)
	for i, p := range pods {
		id := fmt.Sprintf("resume-%d", i)
		w.wantEnd(id, events.TypeMigrationCompleted)
		if got, _ := w.vmHost(p.vm); got != h[1+i] {
			t.Errorf("%s on %s, want %s", p.name, got, h[1+i])
		}
	}
	completed := map[string]int{}
	for _, c := range testenv.Distinct[events.MigrationCompleted](w.Env, nil) {
		completed[c.ID]++
	}
	for id, n := range completed {
		if n != 1 {
			t.Errorf("%s announced completed %d times, want once", id, n)
		}
	}
}

// TestRelocationOutlivingItsTimeout: when the vMotion outlives
// RelocateTimeout the service cancels the task and reports where the VM
// really is. The simulator's cancel marks the task cancelled but the
// relocation still happens (and reading the VM waits for it), so here the
// truthful outcome is Completed with the VM on the target — what a real
// vCenter reports when the switch-over began before the cancel.
func TestRelocationOutlivingItsTimeout(t *testing.T) {
	w := newWorld(t, 1, 2)
	w.relocateDelay(1500 * time.Millisecond)
	cfg := testConfig()
	cfg.RelocateTimeout = 200 * time.Millisecond
	w.start(cfg)
	h := w.clusterHosts(0)
	p := w.runPod("slow", h[0])
	start := time.Now()
	w.migrate("slow-1", p, h[1])
	w.wantEnd("slow-1", events.TypeMigrationCompleted) // the VM did move
	if got, _ := w.vmHost(p.vm); got != h[1] {
		t.Errorf("reported completed but the VM is on %s", got)
	}
	if d := time.Since(start); d < 1500*time.Millisecond {
		t.Errorf("completed after %s, before the relocation could have ended", d)
	}
}
