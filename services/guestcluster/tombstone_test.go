package guestcluster

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// deleteRequest is the CLI's `delete guestcluster gc1 -n team-a`.
func deleteRequest() *events.GuestClusterDeleteRequested {
	return &events.GuestClusterDeleteRequested{GuestClusterRef: events.GuestClusterRef{Namespace: "team-a", Name: "gc1"}}
}

// stored counts the events stored on subject in GUESTCLUSTERS.
func (h *harness) stored(t *testing.T, subject string) uint64 {
	t.Helper()
	st, err := h.b.JetStream().Stream(t.Context(), events.StreamGuestClusters)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(t.Context(), jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects[subject]
}

// requestHeldToFail publishes req and returns once its control plane's
// Ensure is held (its workers are declared by then). Let go by release,
// that Ensure fails, once: the request's delivery is retried at once,
// behind what was delivered for the guest cluster meanwhile.
func (h *harness) requestHeldToFail(t *testing.T, req *events.GuestClusterRequested) (release func()) {
	t.Helper()
	gate, entered := make(chan struct{}), make(chan string, 1)
	h.cps.mu.Lock()
	h.cps.gate, h.cps.entered, h.cps.failOnce = gate, entered, errors.New("control plane busy")
	h.cps.mu.Unlock()
	h.publishSeq(t, events.TypeGuestClusterRequested, req.ObjectKey(), req)
	select {
	case <-entered:
	case <-time.After(20 * time.Second):
		t.Fatalf("the request of %s never reached its control plane", req.ObjectKey())
	}
	return func() {
		h.cps.mu.Lock()
		h.cps.gate, h.cps.entered = nil, nil
		h.cps.mu.Unlock()
		close(gate)
	}
}

// TestARequestRetriedAfterItsDeleteDoesNothing: a request whose delivery
// is retried after the guest cluster's delete (stored after it) finished
// finds no record, but the deletion's tombstone: it is acked and makes
// nothing, no record, no VM, no control plane. A request stored after the
// delete makes the guest cluster again.
func TestARequestRetriedAfterItsDeleteDoesNothing(t *testing.T) {
	h := start(t)
	// The request's delivery, retried behind the delete in the guest
	// cluster's queue.
	req := guestCluster()
	req.GuestCluster.Spec.Workers = events.GuestClusterNodes{Replicas: 1, ClassName: "small", ImageName: "vmos"}
	release := h.requestHeldToFail(t, req)
	declaredNamed(t, h, "gc1-worker-0")
	del := h.publishSeq(t, events.TypeGuestClusterDeleteRequested, "team-a/gc1", deleteRequest())
	h.waitConsumer(t, events.StreamGuestClusters, "the request and the delete delivered", func(i *jetstream.ConsumerInfo) bool {
		return i.NumPending == 0 && i.NumAckPending == 2
	})
	release()
	h.await(t, events.TypeGuestClusterDeleted)
	h.waitConsumer(t, events.StreamGuestClusters, "the request retried and settled", func(i *jetstream.ConsumerInfo) bool {
		return i.NumPending == 0 && i.NumAckPending == 0 && i.AckFloor.Stream >= del
	})

	if rec, _, err := h.svc.clusters.Get(t.Context(), events.GuestClusterRecordKey("team-a", "gc1")); err != nil || rec != nil {
		t.Fatalf("record after the request came again: %+v (%v), want none", rec, err)
	}
	if names := h.declaredSince(t, "marker"); len(names) != 0 {
		t.Errorf("the request, come again after the delete, declared %v; want nothing", names)
	}
	h.cps.mu.Lock()
	_, ensured := h.cps.ensured["team-a/gc1"]
	h.cps.mu.Unlock()
	if ensured {
		t.Error("the request, come again after the delete, started a control plane")
	}
	if n := h.stored(t, events.SubjectGuestClusterReady); n != 0 {
		t.Errorf("%d guestcluster.ready stored, want none", n)
	}

	// Applied again after the delete: made again.
	h.requestReady(t, req)
	if rec := h.record(t, "team-a", "gc1"); rec.Phase != events.GuestClusterPhaseReady {
		t.Errorf("a request stored after the delete: phase %s, want Ready", rec.Phase)
	}
	if names := h.declaredSince(t, "marker-2"); !slices.Equal(names, []string{"gc1-worker-0"}) {
		t.Errorf("a request stored after the delete declared %v, want [gc1-worker-0]", names)
	}
}

// TestAnOlderDeleteLeavesANewerRequest: a delete handled after a request
// stored after it made the guest cluster (a replica that took the delete
// late, its delivery retried) does nothing: the newer request stands.
func TestAnOlderDeleteLeavesANewerRequest(t *testing.T) {
	h := start(t)
	key := events.GuestClusterRecordKey("team-a", "gc1")
	h.requestReady(t, guestCluster())
	// The delete's delivery, as the handler gets it, behind the newer
	// request the record took.
	h.storeAsReplica(t, key, h.record(t, "team-a", "gc1").Spec, func(r *clusterRecord) {
		r.Generation, r.GenerationAt = r.Generation+1000, r.GenerationAt.Add(time.Hour)
	})
	del := h.publishSeq(t, events.TypeGuestClusterDeleteRequested, "team-a/gc1", deleteRequest())
	h.waitConsumer(t, events.StreamGuestClusters, "the delete settled", func(i *jetstream.ConsumerInfo) bool {
		return i.NumPending == 0 && i.NumAckPending == 0 && i.AckFloor.Stream >= del
	})
	if rec := h.record(t, "team-a", "gc1"); rec.Phase != events.GuestClusterPhaseReady {
		t.Errorf("after an older delete: phase %s, want Ready", rec.Phase)
	}
	if n := h.stored(t, events.SubjectGuestClusterDeleted); n != 0 {
		t.Errorf("%d guestcluster.deleted stored, want none", n)
	}
}

// TestResyncFinishesADeletionLeftDeleting: a record marked Deleting whose
// delete's handler went with its process (its delete is in flight
// nowhere) is finished by the resync: control plane removed, kubeconfig
// and record gone, guestcluster.deleted. Two resyncs at once (two
// replicas) finish it once.
func TestResyncFinishesADeletionLeftDeleting(t *testing.T) {
	h := start(t)
	ctx := t.Context()
	req := guestCluster()
	req.GuestCluster.Spec.Workers.Replicas = 0
	h.requestReady(t, req)
	key := events.GuestClusterRecordKey("team-a", "gc1")
	now := time.Now().UTC()
	if _, err := h.svc.clusters.Mutate(ctx, key, func(r *clusterRecord) error {
		r.Phase, r.DeletionRequestedAt = events.GuestClusterPhaseDeleting, &now
		r.Generation, r.GenerationAt = r.Generation+1, now
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() { errs[i] = h.svc.resync(ctx) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if rec, _, err := h.svc.clusters.Get(ctx, key); err != nil || rec != nil {
		t.Fatalf("record after the resync: %+v (%v), want none", rec, err)
	}
	kkv, _ := h.b.KV(ctx, events.BucketGuestClusterKubeconfigs)
	if _, err := kkv.Get(ctx, key); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("kubeconfig after the resync: %v, want none", err)
	}
	h.cps.mu.Lock()
	removed := slices.Contains(h.cps.removed, "team-a/gc1")
	h.cps.mu.Unlock()
	if !removed {
		t.Error("the resync did not remove the control plane")
	}
	h.await(t, events.TypeGuestClusterDeleted)
	if n := h.stored(t, events.SubjectGuestClusterDeleted); n != 1 {
		t.Errorf("%d guestcluster.deleted stored, want 1", n)
	}
}

// TestDeletionCauseIsTheDeleteRequest: the resync finishes a deletion as
// the effect of the delete request the record took, read back from the
// stream (the ids its handler gives what it publishes); a generation the
// stream holds no delete request of gives the deletion's own id.
func TestDeletionCauseIsTheDeleteRequest(t *testing.T) {
	h := start(t)
	ref := events.GuestClusterRef{Namespace: "team-a", Name: "gc9"}
	ev, err := bus.NewEvent("podvisor/cli", events.TypeGuestClusterDeleteRequested, ref.ObjectKey(), &events.GuestClusterDeleteRequested{GuestClusterRef: ref})
	if err != nil {
		t.Fatal(err)
	}
	seq, err := h.b.PublishSeq(t.Context(), ev)
	if err != nil {
		t.Fatal(err)
	}
	st, err := h.b.JetStream().Stream(t.Context(), events.StreamGuestClusters)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetMsg(t.Context(), seq)
	if err != nil {
		t.Fatal(err)
	}
	rec := &clusterRecord{GuestClusterRecord: events.GuestClusterRecord{Namespace: ref.Namespace, Name: ref.Name}, Generation: seq, GenerationAt: m.Time}
	if got := h.svc.deletionCause(t.Context(), rec); got.ID() != ev.ID() {
		t.Errorf("cause of the deletion = %s, want the delete request %s", got.ID(), ev.ID())
	}
	rec.GenerationAt = m.Time.Add(-time.Hour) // another stream's sequence
	if got := h.svc.deletionCause(t.Context(), rec); got.ID() == ev.ID() || got.ID() != h.svc.deletionCause(t.Context(), rec).ID() {
		t.Errorf("cause of a deletion whose request is gone = %s, want an id of its own, the same each time", got.ID())
	}
}
