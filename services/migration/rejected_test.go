package migration

import (
	"context"
	"testing"

	"github.com/podvisor/podvisor/events"
)

// recordPendingElsewhere is another replica's request handler recording
// migration id of p Pending: run by flakyKV.createFirst, it lands between
// this replica's read of the record and its create.
func (w *world) recordPendingElsewhere(id string, p pod) func() {
	return func() {
		if err := w.svc.store.createMigration(context.Background(), &events.MigrationRecord{
			ID: id, Namespace: p.ns, Pod: p.name, Phase: events.MigrationPhasePending,
			Message: "waiting for the scheduler to reserve a target",
		}); err != nil {
			w.T.Errorf("the other replica's record: %v", err)
		}
	}
}

// TestRefusalRacingItsRequestEndsTheMigration is the fault run's migration
// left Pending for the whole reservation timeout. The scheduler refused the
// request (the pod was not placed yet) while the migration service's
// replicas handled the request and the refusal at once: the refusal's
// handler read no record, the request's handler (the other replica)
// recorded the migration Pending, and the refusal's create then found the
// key taken and gave up, so the Pending record waited for an answer given
// already.
func TestRefusalRacingItsRequestEndsTheMigration(t *testing.T) {
	w := newWorld(t, 1, 3)
	kv := w.startFlaky(testConfig())
	h := w.clusterHosts(0)
	p := w.runPod("raced", h[0])
	kv.createFirst("raced-1", w.recordPendingElsewhere("raced-1", p))
	seq := w.Send("podvisor/scheduler", events.TypeMigrationRejected, &events.MigrationRejected{
		MigrationRef: events.MigrationRef{ID: "raced-1", Namespace: p.ns, Pod: p.name},
		Reason:       "NotScheduled", Message: "pod default/raced is not placed on a host yet (phase Pending)",
	})
	w.handled(seq)
	r := w.migration("raced-1")
	if r.Phase != events.MigrationPhaseRejected || r.Reason != "NotScheduled" {
		t.Fatalf("after the refusal the record is %s (%s: %s), want Rejected (NotScheduled)", r.Phase, r.Reason, r.Message)
	}
}

// TestPodHeldForAMigrationEndedElsewhereIsFree: a replica holds the pod
// for the migration it recorded Pending; another replica ends that
// migration (the scheduler's refusal handled there). The pod's next
// migration, handled by the first replica, is taken, not refused
// AlreadyMigrating for a migration that ended.
func TestPodHeldForAMigrationEndedElsewhereIsFree(t *testing.T) {
	w, h := runningWorld(t, 1, 3)
	p := w.runPod("held", h[0])
	w.requestSilently("held-1", p)
	// The other replica's refusal: the record ends; this replica's memory
	// still holds the pod for held-1.
	if _, err := w.svc.store.updateMigration(context.Background(), "held-1", func(r *events.MigrationRecord) bool {
		r.Phase, r.Reason, r.EndedAt = events.MigrationPhaseRejected, "NotScheduled", w.svc.now().UTC()
		return true
	}); err != nil {
		t.Fatal(err)
	}
	w.migrate("held-2", p, h[1])
	w.wantCompletedOnly("held-2", p, h[1])
}

// TestOwnRefusalAppliesToARecordMadeMeanwhile: this replica refuses a
// request (the pod is migrating already) while another replica, handling
// the same request delivered again, records it Pending. The refusal is
// published either way; the record must say so too, or the migration waits
// for a scheduler's answer it will never need.
func TestOwnRefusalAppliesToARecordMadeMeanwhile(t *testing.T) {
	w := newWorld(t, 1, 3)
	kv := w.startFlaky(testConfig())
	h := w.clusterHosts(0)
	p := w.runPod("busy", h[0])
	w.requestSilently("busy-1", p)
	w.sched.silence("busy-2")
	kv.createFirst("busy-2", w.recordPendingElsewhere("busy-2", p))
	w.handled(w.migrate("busy-2", p, ""))
	if r := w.migration("busy-2"); r.Phase != events.MigrationPhaseRejected || r.Reason != ReasonAlreadyMigrating {
		t.Fatalf("busy-2 is %s (%s: %s), want Rejected (%s)", r.Phase, r.Reason, r.Message, ReasonAlreadyMigrating)
	}
}
