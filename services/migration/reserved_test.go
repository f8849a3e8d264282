package migration

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bustest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// Every way a target reservation can reach the migration service ends with
// the migration taken up (queued and run) or released and failed with a
// reason; none leaves the record Pending with room held on the target.
// These tests reproduce the orders a NATS node restart and the replicas'
// restarts produce, one at a time.

// flakyKV stands between the service and KV `migrations` as a three-node
// cluster can: a read of a record answered by a NATS node that has not
// applied the record's latest writes yet (a KV read is a direct get, which
// any replica answers, and the restarted one is behind), and a write that
// is stored but whose answer is lost (the client times out while a node
// restarts). One server cannot lag behind itself, so this is the fake for
// what the real part cannot express here; every write goes to the real
// bucket.
type flakyKV struct {
	jetstream.KeyValue
	mu sync.Mutex
	// missAt: the n-th next read of the key answers "no such key".
	missAt map[string]int
	reads  map[string]int
	// loseAnswer: the next update of the key that writes this phase is
	// stored, and the caller is told it failed.
	loseAnswer map[string]string
	// slow: the updates of the key that write this phase take this long,
	// as a write to a cluster busy electing a leader can.
	slow map[string]slowWrite
	// beforeCreate: runs once before the key's next creation, as another
	// replica's write landing between a handler's read and its create.
	beforeCreate map[string]func()
}

type slowWrite struct {
	phase string
	by    time.Duration
}

func newFlakyKV(kv jetstream.KeyValue) *flakyKV {
	return &flakyKV{KeyValue: kv, missAt: map[string]int{}, reads: map[string]int{}, loseAnswer: map[string]string{}, slow: map[string]slowWrite{},
		beforeCreate: map[string]func(){}}
}

// createFirst makes fn run before the next creation of migration id's
// record.
func (k *flakyKV) createFirst(id string, fn func()) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.beforeCreate[events.MigrationRecordKey(id)] = fn
}

func (k *flakyKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	k.mu.Lock()
	fn := k.beforeCreate[key]
	delete(k.beforeCreate, key)
	k.mu.Unlock()
	if fn != nil {
		fn()
	}
	return k.KeyValue.Create(ctx, key, value, opts...)
}

// miss makes the n-th next read of migration id's record miss it.
func (k *flakyKV) miss(id string, n int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	key := events.MigrationRecordKey(id)
	k.missAt[key], k.reads[key] = n, 0
}

// loseWriteAnswer makes the next write of migration id's record into phase
// land without the caller hearing so.
func (k *flakyKV) loseWriteAnswer(id, phase string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.loseAnswer[events.MigrationRecordKey(id)] = phase
}

func (k *flakyKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	k.mu.Lock()
	if n, ok := k.missAt[key]; ok {
		k.reads[key]++
		if k.reads[key] == n {
			delete(k.missAt, key)
			k.mu.Unlock()
			return nil, jetstream.ErrKeyNotFound
		}
	}
	k.mu.Unlock()
	return k.KeyValue.Get(ctx, key)
}

// slowWrites makes the writes of migration id's record into phase take d.
func (k *flakyKV) slowWrites(id, phase string, d time.Duration) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.slow[events.MigrationRecordKey(id)] = slowWrite{phase: phase, by: d}
}

func (k *flakyKV) Update(ctx context.Context, key string, value []byte, last uint64) (uint64, error) {
	k.mu.Lock()
	sw, ok := k.slow[key]
	k.mu.Unlock()
	if ok {
		var r events.MigrationRecord
		if json.Unmarshal(value, &r) == nil && r.Phase == sw.phase {
			time.Sleep(sw.by)
		}
	}
	rev, err := k.KeyValue.Update(ctx, key, value, last)
	if err != nil {
		return rev, err
	}
	var r events.MigrationRecord
	_ = json.Unmarshal(value, &r)
	k.mu.Lock()
	defer k.mu.Unlock()
	if phase, ok := k.loseAnswer[key]; ok && phase == r.Phase {
		delete(k.loseAnswer, key)
		return 0, errors.New("nats: timeout")
	}
	return rev, nil
}

// startFlaky runs the service with KV `migrations` behind a flakyKV.
func (w *world) startFlaky(cfg Config) *flakyKV {
	w.T.Helper()
	svc := w.newService(cfg)
	kv := newFlakyKV(svc.store.migs)
	svc.store.migs = kv
	w.runService(svc)
	return kv
}

// reserve publishes the scheduler's reservation of target for a pod's
// migration from p.host, as the scheduler would, and returns its sequence.
func (w *world) reserve(id string, p pod, target string) uint64 {
	w.T.Helper()
	cluster := w.ClusterOf(target)
	return w.Send("podvisor/scheduler", events.TypeMigrationTargetReserved, &events.MigrationTargetReserved{
		MigrationRef:  events.MigrationRef{ID: id, Namespace: p.ns, Pod: p.name},
		MigrationMove: events.MigrationMove{UID: p.uid, SourceHost: p.host, TargetHost: target, TargetCluster: cluster, TargetPool: "/DC0/host/" + cluster + "/Resources"},
	})
}

// handled waits until the service has settled the message at seq on
// stream MIGRATIONS: what its handler did or did not do is final.
func (w *world) handled(seq uint64) {
	w.T.Helper()
	w.WaitHandled(events.StreamMigrations, Name+"-"+events.StreamMigrations, seq)
}

// silence keeps the stand-in scheduler from answering a migration's
// request.
func (s *scheduler) silence(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.silent[id] = true
}

// requestSilently publishes a migration request the stand-in scheduler does
// not answer (the test answers it) and waits until it is recorded Pending.
func (w *world) requestSilently(id string, p pod) {
	w.T.Helper()
	w.sched.silence(id)
	w.migrate(id, p, "")
	w.Eventually("the request is recorded Pending", func() bool { return w.migrationPhase(id) == events.MigrationPhasePending })
}

// TestReservationMeetingALaggingReadIsQueued is the 07:16 run's lost
// reservations: the record of the request is read, then the write that
// queues it reads it again from a NATS node that has not applied its
// creation yet ("no such key"). The handler took that for "nothing to
// queue" and acknowledged the reservation: the migration stayed Pending
// until the reservation timeout failed it (NoReservation), and a drain
// waited on it that long.
func TestReservationMeetingALaggingReadIsQueued(t *testing.T) {
	w := newWorld(t, 1, 3)
	kv := w.startFlaky(testConfig())
	h := w.clusterHosts(0)
	p := w.runPod("lag", h[0])
	w.requestSilently("lag-1", p)
	// Read 1: the handler's look at the record; read 2: the queueing
	// write's.
	kv.miss("lag-1", 2)
	w.reserve("lag-1", p, h[1])
	w.wantCompletedOnly("lag-1", p, h[1])
}

// TestReservationWhoseQueueingAnswerWasLostIsQueued: the write that queues
// the migration is stored but its answer lost, so the delivery fails and
// comes again; the redelivery finds the record Queued. It took that for
// "queued already" and acknowledged, though this process never put the
// migration in its queue: only the repair sweep's next pass would. With
// the sweep a minute away, the redelivery must take it up itself.
func TestReservationWhoseQueueingAnswerWasLostIsQueued(t *testing.T) {
	w := newWorld(t, 1, 3)
	cfg := testConfig()
	cfg.SweepInterval = time.Minute
	kv := w.startFlaky(cfg)
	h := w.clusterHosts(0)
	p := w.runPod("lost", h[0])
	w.requestSilently("lost-1", p)
	kv.loseWriteAnswer("lost-1", events.PhaseQueued)
	w.reserve("lost-1", p, h[1])
	w.wantCompletedOnly("lost-1", p, h[1])
}

// TestReservationBeforeItsRequestIsTakenUp: the reservation is handled
// before the request (the request's delivery failed while a NATS node
// restarted and comes back later). The reservation adopts the migration;
// the late request changes nothing.
func TestReservationBeforeItsRequestIsTakenUp(t *testing.T) {
	w, h := runningWorld(t, 1, 3)
	p := w.runPod("early", h[0])
	w.sched.silence("early-1")
	w.reserve("early-1", p, h[1])
	w.wantCompletedOnly("early-1", p, h[1])
	w.handled(w.migrate("early-1", p, ""))
	if got := w.migrationPhase("early-1"); got != events.MigrationPhaseCompleted {
		t.Errorf("after the late request the record is %s, want Completed", got)
	}
}

// TestReservationAcrossALeaderChangeIsTakenUp: the leader records the
// request and stops; the reservation arrives while no replica leads; the
// next leader (a new process, nothing in memory) takes it up.
func TestReservationAcrossALeaderChangeIsTakenUp(t *testing.T) {
	w := newWorld(t, 1, 3)
	cfg := testConfig()
	w.start(cfg)
	h := w.clusterHosts(0)
	p := w.runPod("handover", h[0])
	w.requestSilently("handover-1", p)
	w.stop()
	w.reserve("handover-1", p, h[1])
	w.start(cfg)
	w.wantCompletedOnly("handover-1", p, h[1])
}

// stalledKV's watchers replay nothing and never mark the end of the
// replay, as an ordered consumer lost with a NATS node can leave them.
// TestAStalledListingEndsInAnError: listing a bucket is bounded. The 06:59
// run's drain stayed Draining for eight minutes without a line in the
// log: a listing that never ends holds a drain, the sweep or a new
// leader's recovery for good (the lease renewed all along), and nothing
// retries it.
func TestAStalledListingEndsInAnError(t *testing.T) {
	w := newWorld(t, 1, 2)
	svc := w.newService(testConfig())
	defer func(d time.Duration) { listTimeout = d }(listTimeout)
	listTimeout = 200 * time.Millisecond
	done := make(chan error, 1)
	go func() {
		_, err := records[events.DrainRecord](bustest.StalledKV{KeyValue: svc.store.drains}, "drain", nil).Scan(context.Background())
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a listing whose replay never ended returned no error")
		}
		t.Logf("listing: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("a listing whose replay never ends is still waiting after 10s")
	}
}

// TestLateReservationOfACompletedMigrationIsReleased is the 11:25 full
// run's two reservations held for good: the scheduler handled a
// migration's request a second time (its first delivery's answer lost, the
// request delivered again 30 s later) after the migration had completed.
// The pod then ran on the old target, so the scheduler reserved room for
// the same migration on another host, the pod's old source. The migration
// service took a reservation of a Completed migration for its own (which
// migration.completed promotes) and let it be: that room stayed held.
func TestLateReservationOfACompletedMigrationIsReleased(t *testing.T) {
	w, h := runningWorld(t, 1, 3)
	p := w.runPod("late", h[0])
	w.migrate("late-1", p, h[1])
	w.wantCompletedOnly("late-1", p, h[1])

	moved := p
	moved.host = h[1]
	w.reserve("late-1", moved, h[0])
	s := w.WaitSeen(20*time.Second, "the late reservation released", func(s testenv.Seen) bool {
		v, ok := s.Payload.(*events.MigrationCancelled)
		return ok && v.ID == "late-1" && v.TargetHost == h[0]
	})
	if v := s.Payload.(*events.MigrationCancelled); v.UID != p.uid {
		t.Errorf("release names uid %q, want %q", v.UID, p.uid)
	}
	if got := w.migrationPhase("late-1"); got != events.MigrationPhaseCompleted {
		t.Errorf("after the late reservation the record is %s, want Completed", got)
	}

	// A reservation of the migration's own target seen again (a
	// redelivery) is the one migration.completed promoted: no release.
	w.handled(w.reserve("late-1", p, h[1]))
	for _, e := range w.Events.Distinct() {
		if v, ok := e.Payload.(*events.MigrationCancelled); ok && v.ID == "late-1" && v.TargetHost == h[1] {
			t.Errorf("the completed migration's own target was released: %+v", v)
		}
	}
}
