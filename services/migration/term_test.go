package migration

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
)

// TestAFailedConsumerEndsTheTermAndItsDrains is the full run's stall, as
// a goroutine dump of the stalled leader showed it: a consumer failed (a
// NATS node killed), which stopped the dispatcher, the sweep and the
// runners; the term then waited for its drains, which lived on, waiting
// for migrations nobody would start, with the lease renewed all along, so
// no other replica took over. Now the term ends with its drains: Run
// returns the consumer's error and releases the lease.
func TestAFailedConsumerEndsTheTermAndItsDrains(t *testing.T) {
	w := newWorld(t, 1, 3)
	h := w.clusterHosts(0)
	p := w.runPod("held", h[0])
	// The scheduler does not answer the drain's migration: the drain waits.
	w.sched.silence(drainMigrationID(h[0], 1, p.uid))
	svc := w.newService(testConfig())
	w.svc = svc
	fail := make(chan struct{})
	svc.hooks.consume = func(ctx context.Context, run func(context.Context) error) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- run(ctx) }()
		select {
		case <-fail:
			cancel()
			<-done
			return errors.New("consumer migration-MIGRATIONS: nats: no responders available for request")
		case err := <-done:
			return err
		}
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	ended := make(chan error, 1)
	go func() { ended <- svc.Run(ctx) }()

	w.Send("podvisor/cli", events.TypeHostDrainRequested, &events.HostDrainRequested{Name: h[0]})
	w.Eventually("the drain waits for its migration", func() bool {
		return w.migrationPhase(drainMigrationID(h[0], 1, p.uid)) == events.MigrationPhasePending
	})
	close(fail)
	select {
	case err := <-ended:
		if err == nil {
			t.Error("Run returned nil after its consumers failed, want their error")
		}
		t.Logf("Run: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("15s after its consumers failed the term still runs (its drain holds it, the lease renewed)")
	}
	if rec := w.drainRecord(h[0]); rec.Phase != events.DrainPhaseDraining {
		t.Errorf("the drain record is %s after the term ended, want Draining (for the next leader to resume)", rec.Phase)
	}
	if e, err := svc.store.migs.Get(context.Background(), events.MigrationLeaderKey); err == nil && e.Operation() == 0 {
		t.Errorf("the lease is still held after the term ended: %s", e.Value())
	}
}
