package lease_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
	"github.com/podvisor/podvisor/shared/lease"
)

const ttl = 1500 * time.Millisecond

func bucket(t *testing.T) jetstream.KeyValue {
	t.Helper()
	return bucketOn(t, bustest.Start(t))
}

// bucketOn is bucket on a bus the test controls (to shut its server down).
func bucketOn(t *testing.T, b *bus.Bus) jetstream.KeyValue {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := b.JetStream().CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "lease-test", History: 16})
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// replica runs one Lease in the background and records when its function
// starts and stops.
type replica struct {
	name    string
	cancel  context.CancelFunc
	done    chan struct{} // closed when Run returned
	err     error         // what Run returned
	started chan time.Time
	stopped chan error // the function context's cause
}

func startReplica(t *testing.T, kv jetstream.KeyValue, name string, active, maxActive *atomic.Int32) *replica {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{name: name, cancel: cancel, done: make(chan struct{}), started: make(chan time.Time, 10), stopped: make(chan error, 10)}
	l := &lease.Lease{KV: kv, Key: "leader", Holder: name, TTL: ttl}
	go func() {
		defer close(r.done)
		r.err = l.Run(ctx, func(ctx context.Context) error {
			n := active.Add(1)
			for {
				m := maxActive.Load()
				if n <= m || maxActive.CompareAndSwap(m, n) {
					break
				}
			}
			r.started <- time.Now()
			<-ctx.Done()
			// Hold on a moment, as a service draining its work would: the
			// other replica must not start before this returns.
			time.Sleep(50 * time.Millisecond)
			active.Add(-1)
			r.stopped <- context.Cause(ctx)
			return nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(5 * time.Second):
			t.Errorf("%s: Run did not return after its context ended", name)
		}
	})
	return r
}

// startLeader starts a lone replica and waits until its function runs.
func startLeader(t *testing.T, kv jetstream.KeyValue, name string) *replica {
	t.Helper()
	var active, maxActive atomic.Int32
	r := startReplica(t, kv, name, &active, &maxActive)
	select {
	case <-r.started:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s did not start leading", name)
	}
	return r
}

func holderOf(t *testing.T, kv jetstream.KeyValue) string {
	t.Helper()
	e, err := kv.Get(context.Background(), "leader")
	if err != nil {
		t.Fatalf("get lease: %v", err)
	}
	var v struct{ Holder string }
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		t.Fatal(err)
	}
	return v.Holder
}

// renewals waits until the lease key has been written n more times.
func renewals(t *testing.T, kv jetstream.KeyValue, n uint64) {
	t.Helper()
	revision := func() uint64 {
		e, err := kv.Get(context.Background(), "leader")
		if err != nil {
			t.Fatalf("get lease: %v", err)
		}
		return e.Revision()
	}
	want := revision() + n
	for deadline := time.Now().Add(10 * ttl); revision() < want; time.Sleep(ttl / 10) {
		if time.Now().After(deadline) {
			t.Fatalf("the lease was not renewed %d times within %s", n, 10*ttl)
		}
	}
}

// released reports whether the lease key's history holds a delete marker.
func released(t *testing.T, kv jetstream.KeyValue) bool {
	t.Helper()
	h, err := kv.History(context.Background(), "leader")
	if err != nil {
		t.Fatalf("lease history: %v", err)
	}
	for _, e := range h {
		if e.Operation() == jetstream.KeyValueDelete {
			return true
		}
	}
	return false
}

func TestOneLeaderAtATimeAndFastHandover(t *testing.T) {
	kv := bucket(t)
	var active, maxActive atomic.Int32
	a := startReplica(t, kv, "a", &active, &maxActive)
	b := startReplica(t, kv, "b", &active, &maxActive)

	var leader, standby *replica
	select {
	case <-a.started:
		leader, standby = a, b
	case <-b.started:
		leader, standby = b, a
	case <-time.After(5 * time.Second):
		t.Fatal("no replica started leading")
	}
	// Several renewals pass (the key's revision moves on twice); the
	// standby must stay idle all along.
	renewals(t, kv, 2)
	select {
	case <-standby.started:
		t.Fatalf("%s started while %s led", standby.name, leader.name)
	default:
	}
	if got := holderOf(t, kv); got != leader.name {
		t.Fatalf("lease holder = %q, want %q", got, leader.name)
	}

	stoppedAt := time.Now()
	leader.cancel()
	select {
	case at := <-standby.started:
		// The leader deleted the key on its way out (its delete marker is
		// in the key's history), so the standby did not wait for the TTL.
		if !released(t, kv) {
			t.Fatalf("%s stopped without deleting the lease key", leader.name)
		}
		if took := at.Sub(stoppedAt); took >= ttl {
			t.Fatalf("handover took %s, want under the TTL %s", took, ttl)
		}
	case <-time.After(2 * ttl):
		t.Fatalf("%s did not take over after %s stopped", standby.name, leader.name)
	}
	<-leader.done
	if leader.err != nil {
		t.Fatalf("leader's Run after cancel = %v, want nil", leader.err)
	}
	if got := holderOf(t, kv); got != standby.name {
		t.Fatalf("lease holder = %q, want %q", got, standby.name)
	}
	if m := maxActive.Load(); m != 1 {
		t.Fatalf("at most %d functions ran at once, want 1", m)
	}
}

func TestManyReplicasNeverOverlap(t *testing.T) {
	kv := bucket(t)
	var active, maxActive atomic.Int32
	var reps []*replica
	for _, n := range []string{"a", "b", "c", "d"} {
		reps = append(reps, startReplica(t, kv, n, &active, &maxActive))
	}
	// Stop the leader three times; each time one other replica takes over.
	var wg sync.WaitGroup
	stopped := map[string]bool{}
	for round := range 3 {
		var leader *replica
		deadline := time.After(3 * ttl)
		for leader == nil {
			for _, r := range reps {
				if stopped[r.name] {
					continue
				}
				select {
				case <-r.started:
					leader = r
				default:
				}
			}
			select {
			case <-deadline:
				t.Fatalf("round %d: no leader", round)
			case <-time.After(10 * time.Millisecond):
			}
		}
		stopped[leader.name] = true
		wg.Add(1)
		go func() { defer wg.Done(); leader.cancel(); <-leader.done }()
	}
	wg.Wait()
	if m := maxActive.Load(); m != 1 {
		t.Fatalf("at most %d functions ran at once, want 1", m)
	}
}

func TestOverwrittenLeaseStopsTheLeader(t *testing.T) {
	kv := bucket(t)
	a := startLeader(t, kv, "a")
	// Another holder writes the key from outside, as a replica that took
	// over an expired lease would.
	other, _ := json.Marshal(map[string]any{"holder": "intruder", "expires": time.Now().Add(time.Hour)})
	wrote := time.Now()
	rev, err := kv.Put(context.Background(), "leader", other)
	if err != nil {
		t.Fatal(err)
	}
	// The intruder renews its lease as a leader does (a standby takes over
	// a lease whose revision stood still for a TTL, whatever its value
	// says), until the test removes it below.
	renewing, renewed := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(renewed)
		for {
			select {
			case <-renewing:
				return
			case <-time.After(ttl / 4):
			}
			r, err := kv.Update(context.Background(), "leader", other, rev)
			if err != nil {
				return // a wrote it: the holder check below fails and says so
			}
			rev = r
		}
	}()
	stopRenewing := sync.OnceFunc(func() { close(renewing); <-renewed })
	defer stopRenewing()
	select {
	case cause := <-a.stopped:
		if !errors.Is(cause, lease.ErrLost) {
			t.Fatalf("function's context cause = %v, want ErrLost", cause)
		}
		// The next renewal (every TTL/3) notices.
		if took := time.Since(wrote); took > ttl/3+ttl/2 {
			t.Fatalf("leader stopped %s after losing the lease, want within one renewal", took)
		}
	case <-time.After(2 * ttl):
		t.Fatal("leader kept running after its lease was overwritten")
	}
	// It stands by now: the intruder holds a lease it renews.
	select {
	case <-a.started:
		t.Fatal("a led again while another holder's lease was valid")
	case <-time.After(ttl):
	}
	if got := holderOf(t, kv); got != "intruder" {
		t.Fatalf("lease holder = %q, want intruder (a must not delete a lease it lost)", got)
	}
	// Once the key goes, a leads again.
	stopRenewing()
	if err := kv.Delete(context.Background(), "leader"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.started:
	case <-time.After(2 * ttl):
		t.Fatal("a did not lead again after the other lease was removed")
	}
}

// A lease nobody renews is taken over once its revision has stood still
// for a TTL, whatever expiry its value claims: the standby's own clock
// decides, never the holder's.
func TestUnrenewedLeaseIsTakenOverAfterTTL(t *testing.T) {
	kv := bucket(t)
	dead, _ := json.Marshal(map[string]any{"holder": "crashed", "expires": time.Now().Add(time.Hour)})
	if _, err := kv.Put(context.Background(), "leader", dead); err != nil {
		t.Fatal(err)
	}
	begun := time.Now()
	var active, maxActive atomic.Int32
	a := startReplica(t, kv, "a", &active, &maxActive)
	select {
	case <-a.started:
		if took := time.Since(begun); took < ttl {
			t.Fatalf("took over after %s, before a whole TTL (%s) without renewal", took, ttl)
		}
	case <-time.After(3 * ttl):
		t.Fatal("a lease nobody renews was not taken over")
	}
	if got := holderOf(t, kv); got != "a" {
		t.Fatalf("lease holder = %q, want a", got)
	}
}

// A lease that keeps being renewed is respected however old the expiry its
// value claims.
func TestRenewedLeaseIsRespected(t *testing.T) {
	kv := bucket(t)
	stale, _ := json.Marshal(map[string]any{"holder": "other", "expires": time.Now().Add(-time.Hour)})
	rev, err := kv.Put(context.Background(), "leader", stale)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		tick := time.NewTicker(ttl / 4)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if next, err := kv.Update(ctx, "leader", stale, rev); err == nil {
					rev = next
				}
			}
		}
	}()
	var active, maxActive atomic.Int32
	a := startReplica(t, kv, "a", &active, &maxActive)
	select {
	case <-a.started:
		t.Fatal("took over a lease its holder keeps renewing")
	case <-time.After(2 * ttl):
	}
}

// Fence renews the lease at the revision the leader wrote; once another
// holder has written the key, Fence fails with ErrLost (the guarded action
// is not taken) and the leader stops.
func TestFenceFailsOnceTheLeaseIsTaken(t *testing.T) {
	kv := bucket(t)
	l := &lease.Lease{KV: kv, Key: "leader", Holder: "a", TTL: ttl}
	if err := l.Fence(context.Background()); !errors.Is(err, lease.ErrLost) {
		t.Fatalf("Fence before leading = %v, want ErrLost", err)
	}
	fenced := make(chan error, 2)
	done := make(chan error, 1)
	runCtx, stop := context.WithCancel(context.Background())
	t.Cleanup(func() { stop(); <-done })
	go func() {
		done <- l.Run(runCtx, func(ctx context.Context) error {
			fenced <- l.Fence(ctx)
			other, _ := json.Marshal(map[string]any{"holder": "intruder", "expires": time.Now()})
			if _, err := kv.Put(ctx, "leader", other); err != nil {
				return err
			}
			fenced <- l.Fence(ctx)
			<-ctx.Done()
			return errors.New("stopped")
		})
	}()
	if err := <-fenced; err != nil {
		t.Fatalf("Fence while leading = %v", err)
	}
	if err := <-fenced; !errors.Is(err, lease.ErrLost) {
		t.Fatalf("Fence after the key was taken = %v, want ErrLost", err)
	}
	select {
	case err := <-done:
		done <- err
		t.Fatal("Run returned; it should stand by after a lost lease")
	case <-time.After(ttl / 2):
	}
	if got := holderOf(t, kv); got != "intruder" {
		t.Fatalf("holder %q, want intruder (a lost lease is not released)", got)
	}
}

func TestFunctionErrorReleasesAndReturns(t *testing.T) {
	kv := bucket(t)
	boom := errors.New("boom")
	l := &lease.Lease{KV: kv, Key: "leader", TTL: ttl}
	err := l.Run(context.Background(), func(context.Context) error { return boom })
	if !errors.Is(err, boom) {
		t.Fatalf("Run = %v, want the function's error", err)
	}
	if _, err := kv.Get(context.Background(), "leader"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("lease key after release: err = %v, want ErrKeyNotFound", err)
	}
}

func TestValidation(t *testing.T) {
	err := (&lease.Lease{TTL: -time.Second}).Run(context.Background(), func(context.Context) error { return nil })
	if err == nil {
		t.Fatal("Run accepted an empty lease")
	}
	for _, want := range []string{"KV: required", "Key: required", "TTL: must be positive"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestNewHolderIsUnique(t *testing.T) {
	a, b := lease.NewHolder(), lease.NewHolder()
	if a == b || a == "" {
		t.Fatalf("NewHolder gave %q and %q, want two distinct names", a, b)
	}
}

// TestUnreachableServerStopsTheLeaderBeforeExpiry: when renewals fail
// because the server is gone, the leader stops before its lease could
// expire, so a standby that takes over at the expiry never overlaps it.
func TestUnreachableServerStopsTheLeaderBeforeExpiry(t *testing.T) {
	srv := bustest.StartServer(t)
	kv := bucketOn(t, bustest.Connect(t, srv))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := startLeader(t, kv, "a")
	e, err := kv.Get(ctx, "leader")
	if err != nil {
		t.Fatal(err)
	}
	var v struct{ Expires time.Time }
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		t.Fatal(err)
	}
	srv.Shutdown()
	select {
	case cause := <-a.stopped:
		if !errors.Is(cause, lease.ErrLost) {
			t.Fatalf("function's context cause = %v, want ErrLost", cause)
		}
	case <-time.After(2 * ttl):
		t.Fatal("leader kept running with no server to renew its lease")
	}
	// v.Expires is the lease read before the shutdown; a renewal may have
	// pushed it by at most one renewal period since.
	if deadline := v.Expires.Add(ttl / 3); time.Now().After(deadline) {
		t.Fatalf("leader stopped at %s, after its lease expired at %s", time.Now().Format(time.StampMilli), deadline.Format(time.StampMilli))
	}
}
