package ledger_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler/ledger"
	"github.com/podvisor/podvisor/shared/bustest"
)

const gib = int64(1) << 30

// twoSchedulers returns two ledgers on separate NATS connections to one
// server, as two scheduler processes would have.
func twoSchedulers(t *testing.T) (*ledger.Ledger, *ledger.Ledger) {
	t.Helper()
	srv := bustest.StartServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []*ledger.Ledger
	for i := 0; i < 2; i++ {
		b := bustest.Connect(t, srv)
		if err := b.EnsureTopology(ctx); err != nil {
			t.Fatal(err)
		}
		kv, err := b.KV(ctx, events.BucketLedger)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ledger.New(kv))
	}
	return out[0], out[1]
}

func pod(uid string, cpu, mem int64) events.Allocation {
	return events.Allocation{Kind: events.AllocationPod, Namespace: "default", Name: "p-" + uid, UID: uid, CPUMilli: cpu, MemoryBytes: mem}
}

// reserveOne reserves room for a on host through l and fails the test,
// saying what the reservation was, unless a is accepted.
func reserveOne(t *testing.T, l *ledger.Ledger, what, host string, capacity ledger.Capacity, a events.Allocation) ledger.Result {
	t.Helper()
	r, err := l.Reserve(t.Context(), host, capacity, []events.Allocation{a})
	if err != nil || len(r.Accepted) != 1 {
		t.Fatalf("%s: %+v, %v", what, r, err)
	}
	return r
}

// Two schedulers race for a host with room for exactly one pod, many
// times over: exactly one must win every race.
func TestRaceForTheLastRoom(t *testing.T) {
	a, b := twoSchedulers(t)
	ctx := context.Background()
	capacity := ledger.Capacity{CPUMilli: 1000, MemoryBytes: gib}
	const rounds = 150
	doubleWins := 0
	for i := 0; i < rounds; i++ {
		host := fmt.Sprintf("esx-%03d", i)
		var wg sync.WaitGroup
		var ra, rb ledger.Result
		var ea, eb error
		start := make(chan struct{})
		wg.Add(2)
		go func() {
			defer wg.Done()
			<-start
			ra, ea = a.Reserve(ctx, host, capacity, []events.Allocation{pod("a", 1000, gib)})
		}()
		go func() {
			defer wg.Done()
			<-start
			rb, eb = b.Reserve(ctx, host, capacity, []events.Allocation{pod("b", 1000, gib)})
		}()
		close(start)
		wg.Wait()
		if ea != nil || eb != nil {
			t.Fatalf("round %d: errors %v / %v", i, ea, eb)
		}
		wins := len(ra.Accepted) + len(rb.Accepted)
		if wins != 1 {
			doubleWins++
			t.Errorf("round %d: %d winners (a %v, b %v)", i, wins, ra.Accepted, rb.Accepted)
		}
		e, err := a.Get(ctx, host)
		if err != nil {
			t.Fatal(err)
		}
		if cpu, mem, n := e.Totals(); n != 1 || cpu > capacity.CPUMilli || mem > capacity.MemoryBytes {
			t.Fatalf("round %d: ledger holds %d pods, %dm, %d bytes", i, n, cpu, mem)
		}
	}
	if doubleWins > 0 {
		t.Fatalf("%d of %d races had two winners", doubleWins, rounds)
	}
}

// Many writers filling one host: the host ends exactly full, never over.
func TestManyWritersFillExactly(t *testing.T) {
	a, b := twoSchedulers(t)
	ctx := context.Background()
	capacity := ledger.Capacity{CPUMilli: 64000, MemoryBytes: 10 * gib, MaxPods: 100}
	var wg sync.WaitGroup
	var mu sync.Mutex
	accepted := 0
	for i := 0; i < 24; i++ {
		l := a
		if i%2 == 1 {
			l = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := l.Reserve(ctx, "esx-1", capacity, []events.Allocation{pod(fmt.Sprintf("u%02d", i), 100, gib)})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			accepted += len(r.Accepted)
			mu.Unlock()
			for k, rej := range r.Rejected {
				if rej.Reason != "InsufficientMemory" {
					t.Errorf("%s rejected for %s, want InsufficientMemory", k, rej.Reason)
				}
			}
		}()
	}
	wg.Wait()
	if accepted != 10 {
		t.Errorf("accepted %d pods of 1 GiB on a 10 GiB host, want 10", accepted)
	}
	e, _ := a.Get(ctx, "esx-1")
	if _, mem, n := e.Totals(); n != 10 || mem != 10*gib {
		t.Errorf("ledger: %d pods, %d bytes", n, mem)
	}
}

func TestReplayReleasePromote(t *testing.T) {
	l, _ := twoSchedulers(t)
	ctx := context.Background()
	capacity := ledger.Capacity{CPUMilli: 4000, MemoryBytes: 4 * gib}
	r1 := reserveOne(t, l, "reserve", "src", capacity, pod("u1", 1000, gib))
	// A replay (same uid) succeeds without counting the pod twice.
	r2, err := l.Reserve(ctx, "src", capacity, []events.Allocation{pod("u1", 1000, gib)})
	if err != nil || len(r2.Accepted) != 1 || r2.Entry.Revision != r1.Entry.Revision {
		t.Fatalf("replay: %+v %v (revision %d, first %d)", r2, err, r2.Entry.Revision, r1.Entry.Revision)
	}
	// A migration holds room on the target alongside the source.
	mig := pod("u1", 1000, gib)
	mig.Kind, mig.MigrationID = events.AllocationMigration, "m1"
	reserveOne(t, l, "migration reserve", "dst", capacity, mig)
	e, promoted, err := l.Promote(ctx, "dst", "u1", "m1")
	if err != nil || !promoted {
		t.Fatalf("promote: %v %v", promoted, err)
	}
	if a, ok := e.Allocations["u1"]; !ok || a.Kind != events.AllocationPod || len(e.Allocations) != 1 {
		t.Fatalf("after promote: %+v", e.Allocations)
	}
	if _, promoted, _ := l.Promote(ctx, "dst", "u1", "m1"); promoted {
		t.Error("second promote changed the entry")
	}
	e, removed, err := l.Release(ctx, "src", "u1")
	if err != nil || len(removed) != 1 || len(e.Allocations) != 0 {
		t.Fatalf("release: %v %v %v", e.Allocations, removed, err)
	}
	if _, removed, err := l.Release(ctx, "src", "u1"); err != nil || len(removed) != 0 {
		t.Fatalf("second release: %v %v", removed, err)
	}
	entries, err := l.List(ctx)
	if err != nil || len(entries) != 2 {
		t.Fatalf("list: %d entries, %v", len(entries), err)
	}
}

// A stale cached entry must not let a reservation through: the write fails
// on the revision and the retry sees the room is gone.
func TestStaleHintIsSafe(t *testing.T) {
	a, b := twoSchedulers(t)
	ctx := context.Background()
	capacity := ledger.Capacity{CPUMilli: 1000, MemoryBytes: gib}
	stale, err := a.Get(ctx, "esx-1")
	if err != nil {
		t.Fatal(err)
	}
	reserveOne(t, b, "b", "esx-1", capacity, pod("b", 1000, gib))
	r, err := a.ReserveFrom(ctx, &stale, "esx-1", capacity, []events.Allocation{pod("a", 1000, gib)})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Accepted) != 0 || r.Rejected["a"].Reason != "InsufficientMemory" {
		t.Fatalf("reservation from a stale entry: %+v", r)
	}
	if len(stale.Allocations) != 0 {
		t.Error("ReserveFrom changed the caller's cached entry")
	}
	// A current hint costs no read and succeeds.
	cur, _ := a.Get(ctx, "esx-2")
	if r, err := a.ReserveFrom(ctx, &cur, "esx-2", capacity, []events.Allocation{pod("c", 500, gib/2)}); err != nil || len(r.Accepted) != 1 {
		t.Fatalf("current hint: %+v %v", r, err)
	}
}

// A cordon set through one scheduler's ledger refuses the other's
// reservations, even one made from a cached entry that predates the cordon
// (it loses the compare-and-set and is recomputed on the cordoned entry);
// a pod already on the host is still recorded with IgnoreCordon.
func TestCordonRefusesOtherSchedulersReservations(t *testing.T) {
	a, b := twoSchedulers(t)
	ctx := context.Background()
	capacity := ledger.Capacity{CPUMilli: 8000, MemoryBytes: 8 * gib}
	before := reserveOne(t, b, "before the cordon", "esx-1", capacity, pod("u0", 100, gib))
	if _, changed, err := a.SetCordon(ctx, "esx-1", true); err != nil || !changed {
		t.Fatalf("SetCordon: changed %v, err %v", changed, err)
	}
	hint := before.Entry // b's cache, from before the cordon
	res, err := b.ReserveFrom(ctx, &hint, "esx-1", capacity, []events.Allocation{pod("u1", 100, gib)})
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := res.Rejected["u1"]; !ok || r.Reason != "HostCordoned" {
		t.Fatalf("reservation on a cordoned host: %+v", res)
	}
	if !res.Entry.Cordoned || len(res.Entry.Allocations) != 1 {
		t.Fatalf("entry after refusal: %+v", res.Entry)
	}
	moved := capacity
	moved.IgnoreCordon = true
	reserveOne(t, b, "a pod already on the host is recorded", "esx-1", moved, pod("u2", 100, gib))
	if _, changed, err := b.SetCordon(ctx, "esx-1", false); err != nil || !changed {
		t.Fatalf("uncordon: changed %v, err %v", changed, err)
	}
	reserveOne(t, a, "after the uncordon", "esx-1", capacity, pod("u3", 100, gib))
}

// place runs the binding protocol as the scheduler's commit does: reserve
// on host, claim, and release the reservation when the pod turned out to
// be live elsewhere. It returns the host the pod is bound to.
func place(ctx context.Context, l *ledger.Ledger, uid, host string) (string, error) {
	capacity := ledger.Capacity{CPUMilli: 64000, MemoryBytes: 64 * gib}
	r, err := l.Reserve(ctx, host, capacity, []events.Allocation{pod(uid, 100, gib)})
	if err != nil {
		return "", err
	}
	if len(r.Rejected) > 0 {
		return "", fmt.Errorf("reserve %s on %s: %v", uid, host, r.Rejected)
	}
	b, err := l.Claim(ctx, uid, host)
	if err != nil {
		return "", err
	}
	if b.Host != host {
		if _, _, err := l.Release(ctx, host, uid); err != nil {
			return "", err
		}
	}
	return b.Host, nil
}

// Two schedulers place the same pod at once, each on a host of its own
// choosing (a redelivery racing the first delivery), many times over:
// both agree where the pod is, and only that host holds it.
func TestRaceToPlaceOnePodOnTwoHosts(t *testing.T) {
	a, b := twoSchedulers(t)
	ctx := context.Background()
	wins := map[string]int{}
	for i := range 100 {
		uid := fmt.Sprintf("race-%03d", i)
		hostA, hostB := fmt.Sprintf("esx-a%03d", i), fmt.Sprintf("esx-b%03d", i)
		var ha, hb string
		var ea, eb error
		var wg sync.WaitGroup
		start := make(chan struct{})
		wg.Add(2)
		go func() { defer wg.Done(); <-start; ha, ea = place(ctx, a, uid, hostA) }()
		go func() { defer wg.Done(); <-start; hb, eb = place(ctx, b, uid, hostB) }()
		close(start)
		wg.Wait()
		if ea != nil || eb != nil {
			t.Fatalf("round %d: errors %v / %v", i, ea, eb)
		}
		if ha != hb {
			t.Fatalf("round %d: scheduler a says %s, b says %s", i, ha, hb)
		}
		wins[ha[:5]]++
		for _, h := range []string{hostA, hostB} {
			e, err := a.Get(ctx, h)
			if err != nil {
				t.Fatal(err)
			}
			if _, held := e.Allocations[uid]; held != (h == ha) {
				t.Fatalf("round %d: pod bound to %s, host %s holds it: %v", i, ha, h, held)
			}
		}
	}
	t.Logf("winners: %v", wins)
}

// A binding whose host no longer holds the pod (evicted, deleted, moved)
// is taken over; one whose host holds it is not.
func TestClaimTakesOverOnlyADeadBinding(t *testing.T) {
	l, _ := twoSchedulers(t)
	ctx := context.Background()
	if h, err := place(ctx, l, "u1", "esx-1"); err != nil || h != "esx-1" {
		t.Fatalf("first placement: %s, %v", h, err)
	}
	if h, err := place(ctx, l, "u1", "esx-2"); err != nil || h != "esx-1" {
		t.Fatalf("second placement while esx-1 holds the pod: %s, %v (want esx-1)", h, err)
	}
	if e, _ := l.Get(ctx, "esx-2"); len(e.Allocations) != 0 {
		t.Fatalf("the loser's reservation stayed on esx-2: %v", e.Allocations)
	}
	if _, _, err := l.Release(ctx, "esx-1", "u1"); err != nil {
		t.Fatal(err)
	}
	if h, err := place(ctx, l, "u1", "esx-2"); err != nil || h != "esx-2" {
		t.Fatalf("placement after esx-1 released the pod: %s, %v (want esx-2)", h, err)
	}
	if b, ok, err := l.GetBinding(ctx, "u1"); err != nil || !ok || b.Host != "esx-2" || !b.Confirmed {
		t.Fatalf("binding %+v %v %v", b, ok, err)
	}
	// A replay of the winning placement keeps it.
	if h, err := place(ctx, l, "u1", "esx-2"); err != nil || h != "esx-2" {
		t.Fatalf("replay: %s, %v", h, err)
	}
}

// A native VM's allocation holds room (CPU, memory) but is no pod: the
// pod cap neither counts nor refuses it, as the scheduler's filter does.
func TestNativeVMsAreOutsideThePodCap(t *testing.T) {
	a, _ := twoSchedulers(t)
	capacity := ledger.Capacity{CPUMilli: 64000, MemoryBytes: 10 * gib, MaxPods: 1}
	vm := pod("vm-1", 100, gib)
	vm.VM = true
	reserveOne(t, a, "a VM on an empty host", "esx-1", capacity, vm)
	reserveOne(t, a, "a pod beside the VM, the cap 1", "esx-1", capacity, pod("p-1", 100, gib))
	vm2 := pod("vm-2", 100, gib)
	vm2.VM = true
	reserveOne(t, a, "a VM on a host whose pod cap is full", "esx-1", capacity, vm2)
	r, err := a.Reserve(t.Context(), "esx-1", capacity, []events.Allocation{pod("p-2", 100, gib)})
	if err != nil || r.Rejected["p-2"].Reason != "TooManyPods" {
		t.Fatalf("a second pod over the cap of 1: %+v, %v; want TooManyPods", r, err)
	}
	e, _ := a.Get(t.Context(), "esx-1")
	if cpu, mem, pods := e.Totals(); pods != 1 || cpu != 300 || mem != 3*gib {
		t.Fatalf("totals: %d pods, %d mCPU, %d bytes; want 1 pod and the room of all three", pods, cpu, mem)
	}
}

// An allocation of a native VM written without the VM flag is flagged by
// MarkVMs; two schedulers flagging it at once write it once, and both see
// it flagged.
func TestMarkVMsFlagsOnceAtAnyNumberOfReplicas(t *testing.T) {
	a, b := twoSchedulers(t)
	capacity := ledger.Capacity{CPUMilli: 64000, MemoryBytes: 10 * gib, MaxPods: 1}
	legacy := reserveOne(t, a, "a VM written without the flag", "esx-1", capacity, pod("vm-1", 100, gib)).Entry
	isVM := func(uid string) bool { return uid == "vm-1" }
	var wg sync.WaitGroup
	got := make([]ledger.Entry, 2)
	errs := make([]error, 2)
	for i, l := range []*ledger.Ledger{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], _, errs[i] = l.MarkVMs(t.Context(), "esx-1", &legacy, isVM)
		}()
	}
	wg.Wait()
	for i := range got {
		if errs[i] != nil || !got[i].Allocations["vm-1"].VM {
			t.Fatalf("replica %d: %+v, %v; want the VM flagged", i, got[i], errs[i])
		}
	}
	e, err := a.Get(t.Context(), "esx-1")
	if err != nil || e.Revision != legacy.Revision+1 {
		t.Fatalf("entry at revision %d (%v), want %d: one write for both replicas", e.Revision, err, legacy.Revision+1)
	}
	reserveOne(t, a, "a pod beside the flagged VM, the cap 1", "esx-1", capacity, pod("p-1", 100, gib))
}
