package migration

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/testenv"
)

// TestTenRequestsForOnePodRunOne: ten concurrent requests for one pod →
// one migration runs, nine are rejected as AlreadyMigrating, and the
// reservations the scheduler made for the nine are released.
func TestTenRequestsForOnePodRunOne(t *testing.T) {
	w := newWorld(t, 1, 4)
	w.relocateDelay(100 * time.Millisecond)
	w.start(testConfig())
	h := w.clusterHosts(0)
	p := w.runPod("single", h[0])

	done := w.raceForOnePod(p, h[1:4])
	// Each rejected duplicate's reservation is released by its own id, uid
	// and target (migration.cancelled), whichever scheduler replica reads it
	// and in whatever order; none names the migration that ran.
	released := map[string]bool{}
	for _, c := range testenv.Distinct[events.MigrationCancelled](w.Env, nil) {
		if c.ID == done || c.UID != p.uid || c.TargetHost == "" {
			t.Errorf("migration.cancelled %+v; want one per rejected duplicate, with the uid and target", c)
		}
		released[c.ID] = true
	}
	if len(released) != 9 {
		t.Errorf("%d reservations released, want the 9 duplicates'", len(released))
	}
	var moved int
	for _, pr := range testenv.Distinct[events.MigrationProgress](w.Env, nil) {
		if pr.Phase == events.PhaseRelocating && pr.Percent == 0 {
			moved++
		}
	}
	if moved != 1 {
		t.Errorf("%d relocations started, want 1", moved)
	}
}

// TestFiftyRequestsRespectTheLimits: 50 migrations over 8 hosts in 2
// clusters never run more than 2 from one host or 5 in one cluster, queue
// with visible positions, and all complete.
func TestFiftyRequestsRespectTheLimits(t *testing.T) {
	w := newWorld(t, 2, 4)
	w.relocateDelay(40 * time.Millisecond)
	w.start(testConfig())
	var hosts []string
	for i := range 2 {
		hosts = append(hosts, w.clusterHosts(i)...)
	}
	var pods []pod
	for i := range 50 {
		pods = append(pods, w.runPod(fmt.Sprintf("p%02d", i), hosts[i%len(hosts)]))
	}
	for i, p := range pods {
		w.migrate(fmt.Sprintf("bulk-%02d", i), p, "")
	}
	for i := range pods {
		w.wantEnd(fmt.Sprintf("bulk-%02d", i), events.TypeMigrationCompleted)
	}

	// Replay the stream of events: a migration holds room from its
	// Prechecking to its end.
	type move struct{ source, sourceCluster, targetCluster string }
	moves := map[string]move{}
	for _, r := range testenv.Distinct[events.MigrationTargetReserved](w.Env, nil) {
		moves[r.ID] = move{r.SourceHost, w.ClusterOf(r.SourceHost), r.TargetCluster}
	}
	active := map[string]move{}
	maxHost, maxCluster, queuedBehind := 0, 0, 0
	for _, e := range w.Events.Distinct() {
		switch v := e.Payload.(type) {
		case *events.MigrationProgress:
			if v.Phase == events.PhaseQueued && v.QueuePosition > 0 {
				queuedBehind++
			}
			if v.Phase != events.PhasePrechecking {
				continue
			}
			active[v.ID] = moves[v.ID]
			byHost, byCluster := map[string]int{}, map[string]int{}
			for _, m := range active {
				byHost[m.source]++
				byCluster[m.sourceCluster]++
				if m.targetCluster != m.sourceCluster {
					byCluster[m.targetCluster]++
				}
			}
			for _, n := range byHost {
				maxHost = max(maxHost, n)
			}
			for _, n := range byCluster {
				maxCluster = max(maxCluster, n)
			}
		case *events.MigrationCompleted:
			delete(active, v.ID)
		case *events.MigrationFailed:
			delete(active, v.ID)
		}
	}
	if maxHost > 2 || maxCluster > 5 {
		t.Errorf("at most %d migrations from one host and %d in one cluster ran at once, want ≤ 2 and ≤ 5", maxHost, maxCluster)
	}
	if maxCluster < 5 {
		t.Errorf("at most %d migrations ran at once in a cluster: the limits were never reached, so the test proves nothing", maxCluster)
	}
	if queuedBehind == 0 {
		t.Error("no migration was reported queued behind others")
	}
	for _, p := range pods {
		if got, _ := w.vmHost(p.vm); got == p.host {
			t.Errorf("%s still on %s", p.name, got)
		}
	}
	t.Logf("peak concurrency: %d per host, %d per cluster; %d queued behind others", maxHost, maxCluster, queuedBehind)
}

// TestCancel: a queued migration is cancelled (its reservation released),
// one still prechecking is cancelled at the checkpoint before the vMotion,
// and a cancel that comes once relocating began is refused.
func TestCancel(t *testing.T) {
	w := newWorld(t, 1, 4)
	w.relocateDelay(300 * time.Millisecond)
	cfg := testConfig()
	cfg.Limits.PerSourceHost = 1
	svc := w.newService(cfg)
	gate := make(chan struct{})
	held := make(chan struct{}, 1)
	svc.hooks.beforeRelocate = func(id string) {
		if id == "held" {
			held <- struct{}{}
			<-gate
		}
	}
	w.runService(svc)
	h := w.clusterHosts(0)
	first, second := w.runPod("first", h[0]), w.runPod("second", h[0])
	third := w.runPod("third", h[1])

	// "moving" relocates (300 ms); "waiting" queues behind it on h[0].
	w.migrate("moving", first, h[2])
	testenv.Wait(w.Env, func(v *events.MigrationProgress) bool { return v.ID == "moving" && v.Phase == events.PhaseRelocating })
	w.migrate("waiting", second, h[3])
	w.Eventually("waiting is queued", func() bool { return w.migrationPhase("waiting") == events.PhaseQueued })
	w.Send("podvisor/cli", events.TypeMigrationCancelRequested, &events.MigrationCancelRequested{MigrationRef: events.MigrationRef{ID: "waiting", Namespace: "default", Pod: "second"}})
	w.Send("podvisor/cli", events.TypeMigrationCancelRequested, &events.MigrationCancelRequested{MigrationRef: events.MigrationRef{ID: "moving", Namespace: "default", Pod: "first"}})

	typ, payload := w.waitEnd("waiting")
	if c, ok := payload.(*events.MigrationCancelled); typ != events.TypeMigrationCancelled || !ok || c.TargetHost != h[3] {
		t.Errorf("waiting ended with %s %+v, want cancelled releasing %s", typ, payload, h[3])
	}
	if typ, payload := w.waitEnd("moving"); typ != events.TypeMigrationCompleted {
		t.Errorf("moving ended with %s %+v: a cancel after relocating began must be refused", typ, payload)
	}
	w.Eventually("moving's record is final", func() bool { return w.migrationPhase("moving") == events.MigrationPhaseCompleted })
	if r := w.migration("moving"); !r.CancelRequested || r.Phase != events.MigrationPhaseCompleted {
		t.Errorf("moving record %s, cancelRequested %v: want Completed with the refused cancel noted", r.Phase, r.CancelRequested)
	}
	if got, _ := w.vmHost(second.vm); got != h[0] {
		t.Errorf("cancelled pod moved to %s", got)
	}

	// "held" passes its prechecks and waits at the hook; the cancel lands
	// before the vMotion starts.
	w.migrate("held", third, h[2])
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("held never reached the relocation checkpoint")
	}
	w.Send("podvisor/cli", events.TypeMigrationCancelRequested, &events.MigrationCancelRequested{MigrationRef: events.MigrationRef{ID: "held", Namespace: "default", Pod: "third"}})
	w.Eventually("the cancel is recorded", func() bool { return w.migration("held").CancelRequested })
	close(gate)
	if typ, payload := w.waitEnd("held"); typ != events.TypeMigrationCancelled {
		t.Errorf("held ended with %s %+v, want cancelled", typ, payload)
	}
	if got, _ := w.vmHost(third.vm); got != h[1] {
		t.Errorf("cancelled pod moved to %s", got)
	}
	w.Eventually("held's record says Cancelled", func() bool { return w.migrationPhase("held") == events.MigrationPhaseCancelled })
}

// raceForOnePod sends ten migration requests for p at once (race-0 …
// race-9, to the targets in turn) and checks that one ran and nine were
// rejected as AlreadyMigrating; it returns the id of the one that ran.
func (w *world) raceForOnePod(p pod, targets []string) (done string) {
	t := w.T
	t.Helper()
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.migrate(fmt.Sprintf("race-%d", i), p, targets[i%len(targets)])
		}()
	}
	wg.Wait()
	completed, rejected := 0, 0
	for i := range 10 {
		typ, payload := w.waitEnd(fmt.Sprintf("race-%d", i))
		switch typ {
		case events.TypeMigrationCompleted:
			completed++
			done = fmt.Sprintf("race-%d", i)
		case events.TypeMigrationRejected:
			if r := payload.(*events.MigrationRejected); r.Reason != ReasonAlreadyMigrating || !strings.Contains(r.Message, "already migrating") {
				t.Errorf("rejected = %+v, want %s", r, ReasonAlreadyMigrating)
			}
			rejected++
		default:
			t.Errorf("race-%d ended with %s %+v", i, typ, payload)
		}
	}
	if completed != 1 || rejected != 9 {
		t.Fatalf("%d completed and %d rejected, want 1 and 9", completed, rejected)
	}
	return done
}
