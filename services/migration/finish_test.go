package migration

import (
	"context"
	"testing"
	"time"

	"github.com/vmware/govmomi/simulator"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// TestRequestRightAfterAFailureIsTaken: a client that hears
// migration.failed and asks again at once must find the pod free. Before,
// the failure was published first and the record made final after, so a
// request handled in between (here the final write takes a second, as a
// write to a busy cluster can) was rejected AlreadyMigrating. Now the
// record is final and the pod free before the failure is published.
func TestRequestRightAfterAFailureIsTaken(t *testing.T) {
	w := newWorld(t, 1, 3)
	kv := w.startFlaky(testConfig())
	h := w.clusterHosts(0)
	p := w.runPod("again", h[0])
	kv.slowWrites("again-1", events.MigrationPhaseFailed, time.Second)
	simtest.Fault(t, w.DC, simulator.FaultInjectionRule{MethodName: "RelocateVM_Task", Probability: 1, MaxCount: 1,
		FaultType: simulator.FaultTypeInsufficientResourcesFault})
	asked := make(chan struct{})
	w.Follow(func(s testenv.Seen) {
		if f, ok := s.Payload.(*events.MigrationFailed); ok && f.ID == "again-1" {
			if _, err := w.TryPublish("podvisor/cli", events.TypeMigrationRequested, p.key(),
				&events.MigrationRequested{MigrationRef: events.MigrationRef{ID: "again-2", Namespace: p.ns, Pod: p.name}, TargetHost: h[1]}); err != nil {
				t.Errorf("ask again: %v", err)
			}
			close(asked)
		}
	})
	w.migrate("again-1", p, h[1])
	w.wantEnd("again-1", events.TypeMigrationFailed) // vCenter refused the vMotion
	select {
	case <-asked:
	case <-time.After(20 * time.Second):
		t.Fatal("the follower never asked again")
	}
	w.wantEnd("again-2", events.TypeMigrationCompleted) // the request made on hearing the failure
	w.Eventually("again-1's announcement no longer pending", func() bool {
		r, err := w.svc.store.migration(context.Background(), "again-1")
		return err == nil && r != nil && !r.AnnouncePending
	})
}

// TestKilledBeforeAnnouncingIsAnnouncedByTheNextLeader: the process dies
// with the record final and the end not yet published. The next leader's
// sweep publishes it, once, so the scheduler still moves the pod's room.
func TestKilledBeforeAnnouncingIsAnnouncedByTheNextLeader(t *testing.T) {
	w := newWorld(t, 1, 2)
	cfg := testConfig()
	h := w.clusterHosts(0)
	p := w.runPod("mute", h[0])
	w.migrateUntilKilled(cfg, "mute-1", stepAnnounce, p, h[1])
	if r := w.migration("mute-1"); r.Phase != events.MigrationPhaseCompleted || !r.AnnouncePending {
		t.Fatalf("after the kill the record is %s (announcement pending %v), want Completed and pending", r.Phase, r.AnnouncePending)
	}
	if got := w.ended("mute-1"); len(got) != 0 {
		t.Fatalf("announced before the kill: %v", got)
	}
	w.start(cfg)
	w.wantCompletedOnly("mute-1", p, h[1])
	w.Eventually("the announcement no longer pending", func() bool { return !w.migration("mute-1").AnnouncePending })
}
