package chaindb_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/imagecache/chaindb"
	il "github.com/podvisor/podvisor/shared/imagemeta"
	"github.com/podvisor/podvisor/shared/redistest"
)

func rec(c byte) events.ChainRecord {
	id := "sha256:" + strings.Repeat(string(c), 64)
	return events.ChainRecord{ChainID: id, Datastore: "ds1", Disk: "[ds1] podvisor-images/x/disk.vmdk", Layer: id, DiffID: id, Depth: 1, Size: 42}
}

func TestLeaseAndReady(t *testing.T) {
	db := chaindb.New(redistest.Start(t), nil)
	ctx := context.Background()
	r := rec('a')

	got, err := db.Begin(ctx, r, "one", time.Minute)
	if err != nil || got != chaindb.Acquired {
		t.Fatalf("first Begin = %v, %v; want acquired", got, err)
	}
	if got, _ := db.Begin(ctx, r, "two", time.Minute); got != chaindb.Busy {
		t.Fatalf("second Begin = %v, want busy", got)
	}
	if _, err := db.AddRef(ctx, r.ChainID, r.Datastore, "pod-1"); !errors.Is(err, chaindb.ErrNotReady) {
		t.Fatalf("AddRef while pulling: %v, want ErrNotReady", err)
	}
	if ok, _ := db.Complete(ctx, r, "two"); ok {
		t.Fatal("Complete by a non-holder succeeded")
	}
	if ok, err := db.Complete(ctx, r, "one"); !ok || err != nil {
		t.Fatalf("Complete by the holder = %v, %v", ok, err)
	}
	if got, _ := db.Begin(ctx, r, "three", time.Minute); got != chaindb.Ready {
		t.Fatalf("Begin after ready = %v", got)
	}
	stored, ok, err := db.Get(ctx, r.ChainID, r.Datastore)
	if err != nil || !ok || stored.State != events.ChainStateReady || stored.Size != 42 || stored.CreatedAt.IsZero() {
		t.Fatalf("record = %+v, %v, %v", stored, ok, err)
	}
	locs, _ := db.Locations(ctx, r.ChainID)
	if locs["ds1"] != events.ChainStateReady {
		t.Fatalf("locations = %v", locs)
	}
}

func TestExpiredLeaseIsTakenOver(t *testing.T) {
	db := chaindb.New(redistest.Start(t), nil)
	ctx := context.Background()
	r := rec('b')
	if got, _ := db.Begin(ctx, r, "crashed", 30*time.Millisecond); got != chaindb.Acquired {
		t.Fatal("first Begin not acquired")
	}
	time.Sleep(60 * time.Millisecond)
	if got, _ := db.Begin(ctx, r, "successor", time.Minute); got != chaindb.Acquired {
		t.Fatalf("Begin after expiry = %v, want acquired", got)
	}
	// The crashed puller wakes up: it must not mark the successor's folder ready.
	if ok, _ := db.Complete(ctx, r, "crashed"); ok {
		t.Fatal("stale puller completed over its successor")
	}
	if ok, _ := db.Renew(ctx, r.ChainID, r.Datastore, "crashed", time.Minute); ok {
		t.Fatal("stale puller renewed a lease it lost")
	}
	if ok, _ := db.Renew(ctx, r.ChainID, r.Datastore, "successor", time.Minute); !ok {
		t.Fatal("holder could not renew")
	}
	// Redis lost the lease (FLUSHALL): the holder takes it back on renewal.
	db.Client().Del(ctx, il.ChainLeaseKey(r.ChainID, r.Datastore))
	if ok, _ := db.Renew(ctx, r.ChainID, r.Datastore, "successor", time.Minute); !ok {
		t.Fatal("holder could not retake a vanished lease")
	}
	if got, _ := db.Begin(ctx, r, "intruder", time.Minute); got != chaindb.Busy {
		t.Fatalf("Begin after the lease was retaken = %v, want busy", got)
	}
	if ok, _ := db.Fail(ctx, r.ChainID, r.Datastore, "crashed", "DigestMismatch: late", time.Minute); ok {
		t.Fatal("stale puller claimed the failure of its successor's pull")
	}
	if ok, err := db.Fail(ctx, r.ChainID, r.Datastore, "successor", "DigestMismatch: boom", time.Minute); !ok || err != nil {
		t.Fatalf("Fail by the puller = %v, %v; want claimed", ok, err)
	}
	stored, _, _ := db.Get(ctx, r.ChainID, r.Datastore)
	if stored.State != events.ChainStateFailed || !strings.Contains(stored.Reason, "DigestMismatch") {
		t.Fatalf("after Fail: %+v", stored)
	}
	// The failed puller holds the lease until it has cleared the folder.
	if got, _ := db.Begin(ctx, r, "retry", time.Minute); got != chaindb.Busy {
		t.Fatalf("Begin while the failed puller clears its folder = %v, want busy", got)
	}
	if err := db.Release(ctx, r.ChainID, r.Datastore, "successor"); err != nil {
		t.Fatal(err)
	}
	if got, _ := db.Begin(ctx, r, "retry", time.Minute); got != chaindb.Acquired {
		t.Fatalf("Begin after failure = %v, want acquired (a failed chain is pulled again)", got)
	}
}

func TestConcurrentBeginOneWinner(t *testing.T) {
	db := chaindb.New(redistest.Start(t), nil)
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			got, err := db.Begin(context.Background(), rec('c'), "t"+string(rune('a'+i)), time.Minute)
			if err != nil {
				t.Error(err)
			}
			if got == chaindb.Acquired {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d pullers acquired the lease, want 1", wins)
	}
}

func TestRefsAndEviction(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	clock := func() time.Time { return now }
	c := redistest.Start(t)
	db := chaindb.New(c, clock)
	ctx := context.Background()
	r := rec('d')
	db.Begin(ctx, r, "x", time.Minute)
	db.Complete(ctx, r, "x")

	for i := 0; i < 2; i++ { // redelivered event: counted once
		if n, err := db.AddRef(ctx, r.ChainID, r.Datastore, "pod-1"); err != nil || n != 1 {
			t.Fatalf("AddRef #%d = %d, %v; want 1", i, n, err)
		}
	}
	if n, _ := db.AddRef(ctx, r.ChainID, r.Datastore, "pod-2"); n != 2 {
		t.Fatalf("second pod: refs = %d, want 2", n)
	}
	if refs, _ := db.PodRefs(ctx, "pod-1"); len(refs) != 1 || refs[0] != il.IndexMember(r.ChainID, r.Datastore) {
		t.Fatalf("PodRefs = %v", refs)
	}
	if ok, _ := db.MarkEvicting(ctx, r.ChainID, r.Datastore, now.Add(time.Hour)); ok {
		t.Fatal("referenced chain marked for eviction")
	}
	db.DropRef(ctx, r.ChainID, r.Datastore, "pod-1")
	if n, _ := db.DropRef(ctx, r.ChainID, r.Datastore, "pod-2"); n != 0 {
		t.Fatalf("refs after drops = %d", n)
	}
	if ok, _ := db.MarkEvicting(ctx, r.ChainID, r.Datastore, now.Add(-time.Second)); ok {
		t.Fatal("chain used within the grace period marked for eviction")
	}
	now = now.Add(time.Hour)
	if ok, err := db.MarkEvicting(ctx, r.ChainID, r.Datastore, now.Add(-time.Minute)); !ok || err != nil {
		t.Fatalf("MarkEvicting = %v, %v; want true", ok, err)
	}
	if _, err := db.AddRef(ctx, r.ChainID, r.Datastore, "pod-3"); !errors.Is(err, chaindb.ErrNotReady) {
		t.Fatalf("AddRef on evicting chain: %v", err)
	}
	if got, _ := db.Begin(ctx, r, "y", time.Minute); got != chaindb.Evicting {
		t.Fatalf("Begin on evicting chain = %v", got)
	}
	if err := db.Forget(ctx, r.ChainID, r.Datastore); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := db.Get(ctx, r.ChainID, r.Datastore); ok {
		t.Fatal("record survived Forget")
	}
	if n := c.SCard(ctx, il.IndexChains).Val(); n != 0 {
		t.Fatalf("index still has %d members", n)
	}
}

func TestRestoreOnlyFillsGaps(t *testing.T) {
	c := redistest.Start(t)
	db := chaindb.New(c, nil)
	ctx := context.Background()
	r := rec('e')
	if ok, err := db.Restore(ctx, r); !ok || err != nil {
		t.Fatalf("Restore into empty Redis = %v, %v", ok, err)
	}
	if ok, _ := db.Restore(ctx, r); ok {
		t.Fatal("Restore overwrote an existing record")
	}
	got, _, _ := db.Get(ctx, r.ChainID, r.Datastore)
	if got.State != events.ChainStateReady {
		t.Fatalf("restored state = %q", got.State)
	}
	if ok, _ := db.Intact(ctx); ok {
		t.Fatal("fresh Redis reported intact")
	}
	db.MarkIntact(ctx)
	if ok, _ := db.Intact(ctx); !ok {
		t.Fatal("MarkIntact did not stick")
	}
	c.FlushAll(ctx)
	if ok, _ := db.Intact(ctx); ok {
		t.Fatal("flushed Redis reported intact")
	}
}

// AddRefs references a whole chain in two round trips, with AddRef's
// guarantees: when a chain is not ready, the pod's set names exactly the
// chains whose sets name the pod (those referenced before the refusal: the
// pod's deletion must find them), the counts are right, and Redis
// forgetting its scripts (a restart, SCRIPT FLUSH) costs a round, not an
// error. GetMany reads them back.
func TestAddRefsAndGetMany(t *testing.T) {
	db := chaindb.New(redistest.Start(t), nil)
	ctx := context.Background()
	chain := []events.ChainRecord{rec('c'), rec('d'), rec('e')}
	for _, r := range chain[:2] {
		if got, _ := db.Begin(ctx, r, "one", time.Minute); got != chaindb.Acquired {
			t.Fatal("Begin not acquired")
		}
		if ok, err := db.Complete(ctx, r, "one"); !ok || err != nil {
			t.Fatalf("Complete = %v, %v", ok, err)
		}
	}
	// The top layer is not there: not ready, and the pod's set names the
	// two chains that took the pod.
	if _, err := db.AddRefs(ctx, "pod-1", chain); !errors.Is(err, chaindb.ErrNotReady) || !strings.Contains(err.Error(), chain[2].ChainID) {
		t.Fatalf("AddRefs with a missing layer: %v, want ErrNotReady naming %s", err, chain[2].ChainID)
	}
	refs, _ := db.PodRefs(ctx, "pod-1")
	slices.Sort(refs)
	if want := []string{il.IndexMember(chain[0].ChainID, "ds1"), il.IndexMember(chain[1].ChainID, "ds1")}; !slices.Equal(refs, want) {
		t.Fatalf("pod references %v after a refused AddRefs, want the chains that took it %v", refs, want)
	}
	for i, r := range chain {
		n, _ := db.Client().SCard(ctx, il.ChainRefsKey(r.ChainID, r.Datastore)).Result()
		if want := int64(min(1, 2-i)); n != want {
			t.Fatalf("chain %d names %d pods, want %d", i, n, want)
		}
	}
	if got, _ := db.Begin(ctx, chain[2], "one", time.Minute); got != chaindb.Acquired {
		t.Fatal("Begin not acquired")
	}
	if ok, err := db.Complete(ctx, chain[2], "one"); !ok || err != nil {
		t.Fatalf("Complete = %v, %v", ok, err)
	}
	if err := db.Client().ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	refs, err := db.AddRefs(ctx, "pod-1", chain)
	if err != nil || len(refs) != 3 {
		t.Fatalf("AddRefs = %v, %v; want the 3 chains", refs, err)
	}
	if _, err := db.AddRefs(ctx, "pod-2", chain); err != nil {
		t.Fatal(err)
	}
	var at []chaindb.ChainAt
	for _, r := range chain {
		at = append(at, chaindb.ChainAt{ChainID: r.ChainID, Datastore: r.Datastore})
	}
	at = append(at, chaindb.ChainAt{ChainID: rec('f').ChainID, Datastore: "ds1"})
	recs, found, err := db.GetMany(ctx, at)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range recs[:3] {
		if !found[i] || r.State != events.ChainStateReady || r.Refs != 2 {
			t.Errorf("chain %d: found %v, %+v; want ready with 2 references", i, found[i], r)
		}
	}
	if found[3] {
		t.Errorf("a chain never written was found: %+v", recs[3])
	}
}

// A puller paused past its lease whose successor finished the chain does
// not get the lease back: Renew, Fail and Complete all refuse it, and the
// ready, referenced chain stays as it is. Before, Renew took the vanished
// lease again, and Fail then marked the successor's chain failed.
func TestPausedPullerDoesNotTakeBackAFinishedChain(t *testing.T) {
	db := chaindb.New(redistest.Start(t), nil)
	ctx := context.Background()
	r := rec('g')
	if got, _ := db.Begin(ctx, r, "paused", time.Minute); got != chaindb.Acquired {
		t.Fatal("Begin not acquired")
	}
	// The paused puller's lease expires; a successor pulls and completes.
	db.Client().Del(ctx, il.ChainLeaseKey(r.ChainID, r.Datastore))
	if got, _ := db.Begin(ctx, r, "successor", time.Minute); got != chaindb.Acquired {
		t.Fatal("successor's Begin not acquired")
	}
	if ok, err := db.Complete(ctx, r, "successor"); !ok || err != nil {
		t.Fatalf("successor's Complete = %v, %v", ok, err)
	}
	if _, err := db.AddRef(ctx, r.ChainID, r.Datastore, "pod-1"); err != nil {
		t.Fatal(err)
	}
	// The paused puller wakes up.
	if ok, _ := db.Renew(ctx, r.ChainID, r.Datastore, "paused", time.Minute); ok {
		t.Fatal("paused puller took the lease of a ready chain again")
	}
	if ok, _ := db.Fail(ctx, r.ChainID, r.Datastore, "paused", "RegistryUnavailable: reset", time.Minute); ok {
		t.Fatal("paused puller claimed the failure of a ready chain")
	}
	if ok, _ := db.Complete(ctx, r, "paused"); ok {
		t.Fatal("paused puller completed a chain it no longer pulls")
	}
	got, _, _ := db.Get(ctx, r.ChainID, r.Datastore)
	if got.State != events.ChainStateReady || got.Refs != 1 {
		t.Fatalf("chain after the paused puller woke: %+v, want ready with its reference", got)
	}
	if n := db.Client().Exists(ctx, il.ChainLeaseKey(r.ChainID, r.Datastore)).Val(); n != 0 {
		t.Fatal("a lease exists on the ready chain")
	}
	// Redis lost everything mid-pull: the puller keeps its pull.
	db.Client().FlushAll(ctx)
	if ok, _ := db.Renew(ctx, r.ChainID, r.Datastore, "paused", time.Minute); !ok {
		t.Fatal("the puller could not take its lease back after Redis lost its data")
	}
}
