package migration

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/vmware/govmomi/simulator"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// stepFaults makes chosen steps of chosen migrations fail (as if NATS or
// vCenter had not answered there) or stop the process (the step blocks
// until the service stops, and nothing after it runs: a SIGKILL between
// two steps).
type stepFaults struct {
	mu sync.Mutex
	// fail counts down, per migration and step, the errors still to give.
	fail map[[2]string]int
	// kill names the migration and step where the process "dies".
	kill    [2]string
	reached chan struct{}
	calls   map[[2]string]int
}

func newStepFaults() *stepFaults {
	return &stepFaults{fail: map[[2]string]int{}, calls: map[[2]string]int{}, reached: make(chan struct{}, 1)}
}

func (f *stepFaults) step(ctx context.Context, id, at string) error {
	k := [2]string{id, at}
	f.mu.Lock()
	f.calls[k]++
	if f.kill == k {
		f.mu.Unlock()
		f.reached <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	}
	if f.fail[k] > 0 {
		f.fail[k]--
		f.mu.Unlock()
		return errors.New("nats: no responders available for request")
	}
	f.mu.Unlock()
	return nil
}

func (f *stepFaults) count(id, at string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[[2]string{id, at}]
}

// migrateUntilKilled runs the service until migration id of p reaches
// step, where the process "dies": the service stops and nothing after the
// step runs.
func (w *world) migrateUntilKilled(cfg Config, id, step string, p pod, to string) {
	w.T.Helper()
	f := newStepFaults()
	f.kill = [2]string{id, step}
	w.startWithFaults(cfg, f)
	w.migrate(id, p, to)
	select {
	case <-f.reached:
	case <-time.After(20 * time.Second):
		w.T.Fatalf("migration %s never reached step %s", id, step)
	}
	w.stop()
}

// wantDrainedOnePod checks that host's drain moved its one pod p away and
// ended Drained.
func (w *world) wantDrainedOnePod(host string, p pod) {
	w.T.Helper()
	d := w.waitDrained(host)
	if d.Migrated != 1 || len(d.Unmovable) != 0 {
		w.T.Fatalf("drained = %+v, want the one pod moved", d)
	}
	if got, _ := w.vmHost(p.vm); got == host {
		w.T.Errorf("the pod is still on the drained host")
	}
	if r := w.drainRecord(host); r.Phase != events.DrainPhaseDrained {
		w.T.Errorf("drain record %s, want Drained", r.Phase)
	}
}

func (w *world) startWithFaults(cfg Config, f *stepFaults) *Service {
	w.T.Helper()
	svc := w.newService(cfg)
	svc.hooks.step = f.step
	return w.runService(svc)
}

// cordon marks a host cordoned in its record, as the scheduler does when a
// drain of it begins.
func (w *world) cordon(host string) {
	w.T.Helper()
	h := testenv.Get[events.HostRecord](w.Env, events.BucketHosts, events.HostRecordKey(host))
	if h == nil {
		w.T.Fatalf("no host record of %s", host)
	}
	h.Cordoned = true
	testenv.Put(w.Env, events.BucketHosts, events.HostRecordKey(host), h)
}

// ended lists the final events published for a migration, by type.
func (w *world) ended(id string) map[string]int {
	out := map[string]int{}
	for _, e := range w.Events.Distinct() {
		switch v := e.Payload.(type) {
		case *events.MigrationCompleted:
			if v.ID == id {
				out[e.Event.Type()]++
			}
		case *events.MigrationFailed:
			if v.ID == id {
				out[e.Event.Type()]++
			}
		}
	}
	return out
}

// wantCompletedOnly checks that a migration ended completed, announced
// once, never failed, with the VM on the target and the record final.
func (w *world) wantCompletedOnly(id string, p pod, target string) {
	w.T.Helper()
	w.wantEnd(id, events.TypeMigrationCompleted)
	w.Eventually("the record is Completed", func() bool { return w.migrationPhase(id) == events.MigrationPhaseCompleted })
	if got, _ := w.vmHost(p.vm); got != target {
		w.T.Errorf("VM on %s, want %s", got, target)
	}
	if got := w.ended(id); got[events.TypeMigrationCompleted] != 1 || got[events.TypeMigrationFailed] != 0 {
		w.T.Errorf("final events of %s: %v; want one migration.completed and no migration.failed", id, got)
	}
}

// TestKilledWhileFinalizingIsFinishedByTheNextLeader: the process dies
// after recording Finalizing (the VM is on the target, nothing announced),
// and a drain cordons the target meanwhile. The next leader completes the
// migration: a cordon keeps new pods off a host, it does not undo a move
// that already happened (before, the resumed prechecks refused the cordoned
// target and failed the migration with its VM there).
func TestKilledWhileFinalizingIsFinishedByTheNextLeader(t *testing.T) {
	w := newWorld(t, 1, 3)
	cfg := testConfig()
	h := w.clusterHosts(0)
	p := w.runPod("fin", h[0])
	w.migrateUntilKilled(cfg, "fin-1", stepFinalizing, p, h[1])
	if got := w.migrationPhase("fin-1"); got != events.PhaseFinalizing {
		t.Fatalf("after the kill the record is %q, want Finalizing", got)
	}
	w.cordon(h[1])

	w.start(cfg)
	w.wantCompletedOnly("fin-1", p, h[1])
}

// TestTransientErrorsWhileFinishingAreRepaired: the bus does not take the
// completion, then not the failure either; before, the runner gave up and
// the record stayed Finalizing under the same leader until the next one
// (the pod Migrating, the target's reservation held). The repair sweep
// queues it again and it completes.
func TestTransientErrorsWhileFinishingAreRepaired(t *testing.T) {
	w := newWorld(t, 1, 2)
	f := newStepFaults()
	f.fail[[2]string{"ann-1", stepAnnounce}] = 2
	w.startWithFaults(testConfig(), f)
	h := w.clusterHosts(0)
	p := w.runPod("ann", h[0])
	w.migrate("ann-1", p, h[1])
	w.wantCompletedOnly("ann-1", p, h[1])
	if n := f.count("ann-1", stepAnnounce); n != 3 {
		t.Errorf("announced %d times, want 3 (two refused, then taken)", n)
	}
}

// TestRelocationAnswerLostCompletes: the vMotion happened but its answer
// was lost (an error once the task ended). Neither a transient error nor
// a refusal may fail a migration whose VM is on the target.
func TestRelocationAnswerLostCompletes(t *testing.T) {
	w := newWorld(t, 1, 3)
	f := newStepFaults()
	f.fail[[2]string{"lost-1", stepRelocated}] = 1
	svc := w.startWithFaults(testConfig(), f)
	h := w.clusterHosts(0)
	p := w.runPod("lost", h[0])
	w.migrate("lost-1", p, h[1])
	w.wantCompletedOnly("lost-1", p, h[1])

	// A refusal after the move: conclude looks where the VM is.
	svc.hooks.step = func(ctx context.Context, id, at string) error {
		if id == "lost-2" && at == stepRelocated {
			return refuse(ReasonRelocateFailed, "vCenter: connection reset")
		}
		return nil
	}
	w.sched.update(p.name, func(r *events.PodRecord) { r.Host = h[1] })
	w.migrate("lost-2", p, h[2])
	w.wantCompletedOnly("lost-2", p, h[2])
}

// TestRelocateFaultFailsAndFreesThePod: vCenter refuses the vMotion
// (InsufficientResourcesFault, as --vcenter-faults injects). The migration
// fails once, naming the target and uid so the scheduler releases exactly
// that reservation; the VM stays on the source, and the pod is free for the
// next migration.
func TestRelocateFaultFailsAndFreesThePod(t *testing.T) {
	w, h := runningWorld(t, 1, 3)
	p := w.runPod("vfault", h[0])
	simtest.Fault(t, w.DC, simulator.FaultInjectionRule{MethodName: "RelocateVM_Task", Probability: 1, MaxCount: 1,
		FaultType: simulator.FaultTypeInsufficientResourcesFault})
	w.migrate("vf-1", p, h[1])
	fl := w.waitFailed("vf-1")
	if fl.Reason != ReasonRelocateFailed || fl.UID != p.uid || fl.TargetHost != h[1] || fl.SourceHost != h[0] {
		t.Errorf("migration.failed = %+v; want RelocateFailed for uid %s from %s to %s", fl, p.uid, h[0], h[1])
	}
	if got := w.ended("vf-1"); got[events.TypeMigrationFailed] != 1 || got[events.TypeMigrationCompleted] != 0 {
		t.Errorf("final events: %v, want one migration.failed", got)
	}
	if got, _ := w.vmHost(p.vm); got != h[0] {
		t.Errorf("VM on %s after a refused vMotion, want %s", got, h[0])
	}
	w.migrate("vf-2", p, h[1])
	w.wantCompletedOnly("vf-2", p, h[1])
}

// TestDrainWithoutARunnerIsResumed: a drain record says Draining but no
// runner works on it (its runner stopped on an error the KV store gave).
// Before, it stayed so until the next leader; the repair sweep resumes it
// and the host is drained.
func TestDrainWithoutARunnerIsResumed(t *testing.T) {
	w, h := runningWorld(t, 1, 3)
	p := w.runPod("orphaned", h[0])
	rec := &events.DrainRecord{Host: h[0], Phase: events.DrainPhaseDraining, RequestID: "lost-runner",
		Message: "cordoned; moving pods away", StartedAt: time.Now().UTC()}
	if _, err := w.svc.store.putDrain(context.Background(), rec, 0); err != nil {
		t.Fatal(err)
	}
	w.wantDrainedOnePod(h[0], p)
}
