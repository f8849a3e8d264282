package migration

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/testenv"
)

// replica is one instance of the service with its own bus connection, as
// a second pod of the Deployment would be.
type replica struct {
	svc  *Service
	stop func()
}

func (w *world) startReplica(cfg Config) *replica {
	w.T.Helper()
	ctx := context.Background()
	b, err := bus.Connect(ctx, w.Bus.Conn().ConnectedUrl())
	if err != nil {
		w.T.Fatalf("connect: %v", err)
	}
	w.T.Cleanup(b.Close)
	svc, err := newService(cfg, b, w.vm, testenv.Logger().With("test", w.T.Name()))
	if err != nil {
		w.T.Fatalf("new service: %v", err)
	}
	r := &replica{svc: svc}
	r.stop = testenv.Run(w.T, Name+"-replica", svc.Run)
	return r
}

// leading reports whether the replica is in a term as leader.
func (r *replica) leading() bool {
	r.svc.mu.Lock()
	defer r.svc.mu.Unlock()
	return r.svc.runCtx != nil
}

func (w *world) leaseHolder() string {
	w.T.Helper()
	e, err := w.KV(events.BucketMigrations).Get(context.Background(), events.MigrationLeaderKey)
	if err != nil {
		return ""
	}
	var v struct{ Holder string }
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		w.T.Fatalf("lease value %q: %v", e.Value(), err)
	}
	return v.Holder
}

// TestTwoReplicasActiveStandby: two instances on one bus. Ten concurrent
// requests for one pod run one migration (nine AlreadyMigrating), which
// only holds if one process admits them all; the standby does nothing.
// When the active instance stops, the standby takes over well within the
// lease TTL and completes a new migration.
func TestTwoReplicasActiveStandby(t *testing.T) {
	w := newWorld(t, 1, 4)
	w.relocateDelay(100 * time.Millisecond)
	cfg := testConfig()
	cfg.LeaseTTL = 3 * time.Second
	a := w.startReplica(cfg)
	b := w.startReplica(cfg)
	w.Eventually("one replica leads", func() bool { return a.leading() != b.leading() })
	active, standby := a, b
	if b.leading() {
		active, standby = b, a
	}
	// The harness reads records through w.svc.
	w.svc = active.svc
	if got := w.leaseHolder(); got != active.svc.holder {
		t.Fatalf("lease holder %q, want the active replica %q", got, active.svc.holder)
	}

	h := w.clusterHosts(0)
	p := w.runPod("single", h[0])
	w.raceForOnePod(p, h[1:4])
	if standby.leading() {
		t.Fatal("the standby led while the active replica ran")
	}
	// The lease shares the bucket with the records; listings skip it.
	recs, err := active.svc.store.migrations(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 10 {
		t.Errorf("%d migration records listed, want 10", len(recs))
	}
	for _, r := range recs {
		if r.ID == "" || !strings.HasPrefix(r.ID, "race-") {
			t.Errorf("listing returned a record that is no migration: %+v", r)
		}
	}

	// The final events go out before the records are final; stopping in
	// between would leave the next leader to finish the record first.
	w.Eventually("every record is final", func() bool {
		for i := range 10 {
			if !events.MigrationPhaseFinal(w.migrationPhase(fmt.Sprintf("race-%d", i))) {
				return false
			}
		}
		return true
	})
	stopped := time.Now()
	active.stop()
	w.Eventually("the standby leads", standby.leading)
	// The active replica released the lease on its way out, so the standby
	// did not wait for it to expire.
	if took := time.Since(stopped); took > cfg.LeaseTTL {
		t.Errorf("standby took over %s after the active replica stopped, want well under the TTL %s", took, cfg.LeaseTTL)
	}
	if got := w.leaseHolder(); got != standby.svc.holder {
		t.Fatalf("lease holder %q, want the former standby %q", got, standby.svc.holder)
	}
	w.svc = standby.svc
	from, _ := w.vmHost(p.vm)
	to := h[0]
	if from == to {
		to = h[1]
	}
	w.migrate("after-failover", p, to)
	w.wantEnd("after-failover", events.TypeMigrationCompleted)
	if got, _ := w.vmHost(p.vm); got != to {
		t.Errorf("vCenter has the VM on %s, want %s", got, to)
	}
}

// TestLeaderKeyIsNoMigrationID: the lease key is one no migration request
// can name, so it cannot collide with a record.
func TestLeaderKeyIsNoMigrationID(t *testing.T) {
	err := (&events.MigrationRequested{MigrationRef: events.MigrationRef{ID: events.MigrationLeaderKey, Namespace: "default", Pod: "web"}}).Validate()
	if err == nil {
		t.Fatalf("a migration may be named %q, the leader lease's key", events.MigrationLeaderKey)
	}
}

func TestLeaseTTLFromEnv(t *testing.T) {
	t.Setenv(EnvLeaseTTL, "30s")
	cfg, err := ConfigFromEnv()
	if err != nil || cfg.LeaseTTL != 30*time.Second {
		t.Fatalf("ConfigFromEnv with %s=30s: LeaseTTL %s, err %v", EnvLeaseTTL, cfg.LeaseTTL, err)
	}
	t.Setenv(EnvLeaseTTL, "200ms")
	if _, err := ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), "LeaseTTL") {
		t.Fatalf("ConfigFromEnv with a 200ms lease: err %v, want one naming LeaseTTL", err)
	}
	if DefaultConfig().LeaseTTL != 10*time.Second {
		t.Fatalf("default LeaseTTL %s, want 10s", DefaultConfig().LeaseTTL)
	}
}
