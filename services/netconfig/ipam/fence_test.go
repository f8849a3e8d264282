package ipam_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/services/netconfig/ipam"
	"github.com/podvisor/podvisor/shared/record"
)

// Two replicas race: one allocates addresses on a network while the other
// begins its delete and counts the addresses. Whatever the interleaving, no
// allocation that succeeded is missed by the count, and after the delete
// began no allocation succeeds; after AbortDelete allocations work again.
func TestDeleteNeverMissesAConcurrentAllocation(t *testing.T) {
	kv, js := ipamKV(t)
	allocator, deleter := ipam.New(kv, js), ipam.New(kv, js)
	ctx := context.Background()
	for round := range 20 {
		p := pool(t, "race", "10.9.0.0/24", "10.9.0.1")
		var wg sync.WaitGroup
		var mu sync.Mutex
		var won []string
		for i := range 8 {
			wg.Go(func() {
				a, err := allocator.Allocate(ctx, p, owner(round*100+i))
				switch {
				case err == nil:
					mu.Lock()
					won = append(won, a.IP)
					mu.Unlock()
				case !errors.Is(err, ipam.ErrNetworkDeleting):
					t.Errorf("allocate: %v", err)
				}
			})
		}
		var counted int
		wg.Go(func() {
			if err := deleter.BeginDelete(ctx, "race"); err != nil {
				t.Errorf("begin delete: %v", err)
				return
			}
			n, err := deleter.Count(ctx, "race")
			if err != nil {
				t.Errorf("count: %v", err)
			}
			counted = n
		})
		wg.Wait()
		// The count may include addresses given back after it (the delete
		// is then refused needlessly, never wrongly).
		if n, _ := deleter.Count(ctx, "race"); n != len(won) || counted < len(won) {
			t.Fatalf("round %d: %d allocations succeeded, the delete counted %d, %d addresses held now", round, len(won), counted, n)
		}
		if _, err := allocator.Allocate(ctx, p, owner(round*100+99)); !errors.Is(err, ipam.ErrNetworkDeleting) {
			t.Fatalf("round %d: allocation during a delete: %v, want ErrNetworkDeleting", round, err)
		}
		if err := deleter.AbortDelete(ctx, "race"); err != nil {
			t.Fatal(err)
		}
		if _, err := allocator.Allocate(ctx, p, owner(round*100+98)); err != nil {
			t.Fatalf("round %d: allocation after the delete was refused: %v", round, err)
		}
		for i := range 100 {
			if _, err := allocator.Release(ctx, "race", owner(round*100+i).UID); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// Allocations of one network that finish together share a fence write:
// under a burst the bucket stores fewer fence writes than allocations (each
// write is a message the server syncs to disk), and every address is still
// committed.
func TestConcurrentAllocationsShareFenceWrites(t *testing.T) {
	kv, js := ipamKV(t)
	ctx := context.Background()
	a := ipam.New(kv, js)
	p := pool(t, "burst", "10.8.0.0/24", "10.8.0.1")
	// The hint and the fence exist after a first allocation, so the burst
	// below writes exactly one binding and one address per pod.
	if _, err := a.Allocate(ctx, p, owner(0)); err != nil {
		t.Fatal(err)
	}
	before := lastSeq(t, kv)
	const pods = 64
	var wg sync.WaitGroup
	for i := 1; i <= pods; i++ {
		wg.Go(func() {
			if _, err := a.Allocate(ctx, p, owner(i)); err != nil {
				t.Errorf("allocate %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	fenceWrites := int(lastSeq(t, kv)-before) - 2*pods
	if fenceWrites < 1 || fenceWrites >= pods {
		t.Fatalf("%d allocations at once made %d fence writes; want at least 1 and fewer than the allocations", pods, fenceWrites)
	}
	if n, _ := a.Count(ctx, "burst"); n != pods+1 {
		t.Fatalf("Count = %d, want %d", n, pods+1)
	}
	t.Logf("%d allocations, %d fence writes", pods, fenceWrites)
}

func lastSeq(t *testing.T, kv jetstream.KeyValue) uint64 {
	t.Helper()
	st, err := kv.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st.(*jetstream.KeyValueBucketStatus).StreamInfo().State.LastSeq
}

// Two replicas race: one allocates from the network record it read
// (revision 5) while the other changes the network's addressing: it holds
// allocations from records before revision 6, then lists the addresses.
// Whatever the interleaving, every allocation that succeeded is in the
// listing; after the hold only allocations from the new record (revision
// 6, or 0: unknown) succeed, and releasing the hold lets the old record's
// through again.
func TestAddressingChangeNeverMissesAConcurrentAllocation(t *testing.T) {
	kv, js := ipamKV(t)
	allocator, changer := ipam.New(kv, js), ipam.New(kv, js)
	ctx := context.Background()
	for round := range 20 {
		old := pool(t, "readdress", "10.9.0.0/24", "10.9.0.1")
		old.Record = 5
		var wg sync.WaitGroup
		var mu sync.Mutex
		var won []string
		for i := range 8 {
			wg.Go(func() {
				a, err := allocator.Allocate(ctx, old, owner(round*100+i))
				switch {
				case err == nil:
					mu.Lock()
					won = append(won, a.IP)
					mu.Unlock()
				case !errors.Is(err, ipam.ErrReaddressing):
					t.Errorf("allocate: %v", err)
				}
			})
		}
		var listed []string
		var hold ipam.Hold
		wg.Go(func() {
			var err error
			if hold, err = changer.HoldAddressing(ctx, "readdress", 6); err != nil {
				t.Errorf("hold: %v", err)
				return
			}
			allocs, err := changer.Allocations(ctx, "readdress")
			if err != nil {
				t.Errorf("list: %v", err)
			}
			for _, a := range allocs {
				listed = append(listed, a.IP)
			}
		})
		wg.Wait()
		for _, ip := range won {
			if !slices.Contains(listed, ip) {
				t.Fatalf("round %d: %s was allocated and the change's listing %v missed it", round, ip, listed)
			}
		}
		if _, err := allocator.Allocate(ctx, old, owner(round*100+99)); !errors.Is(err, ipam.ErrReaddressing) {
			t.Fatalf("round %d: allocation from the old record during the change: %v, want ErrReaddressing", round, err)
		}
		next := old
		next.Record = 6
		if _, err := allocator.Allocate(ctx, next, owner(round*100+98)); err != nil {
			t.Fatalf("round %d: allocation from the new record: %v", round, err)
		}
		if err := changer.ReleaseAddressing(ctx, "readdress", hold); err != nil {
			t.Fatal(err)
		}
		if _, err := allocator.Allocate(ctx, old, owner(round*100+97)); err != nil {
			t.Fatalf("round %d: allocation from the old record after the release: %v", round, err)
		}
		for i := range 100 {
			if _, err := allocator.Release(ctx, "readdress", owner(round*100+i).UID); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// A delete begun and aborted while an addressing change holds allocations
// keeps the hold.
func TestDeleteKeepsTheAddressingHold(t *testing.T) {
	kv, js := ipamKV(t)
	a := ipam.New(kv, js)
	ctx := context.Background()
	if _, err := a.HoldAddressing(ctx, "n", 10); err != nil {
		t.Fatal(err)
	}
	if err := a.BeginDelete(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	if err := a.AbortDelete(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	p := pool(t, "n", "10.9.0.0/24", "")
	p.Record = 9
	if _, err := a.Allocate(ctx, p, owner(1)); !errors.Is(err, ipam.ErrReaddressing) {
		t.Fatalf("allocation from an old record after a delete was aborted: %v, want ErrReaddressing", err)
	}
}

// Two replicas change the network's addressing from the same record
// (revision 5) and both hold allocations from before revision 6. The first
// change is refused and lifts its hold while the second is still between
// its listing and its put: allocations from the old record stay refused
// until the second lifts its own. A change that is stored keeps its hold
// for good, whatever other changes release.
func TestAddressingHoldsArePerChange(t *testing.T) {
	kv, js := ipamKV(t)
	first, second, allocator := ipam.New(kv, js), ipam.New(kv, js), ipam.New(kv, js)
	ctx := context.Background()
	old := pool(t, "n", "10.9.0.0/24", "10.9.0.1")
	old.Record = 5
	uid := 0
	allocate := func(p ipam.Pool) error {
		t.Helper()
		uid++
		_, err := allocator.Allocate(ctx, p, owner(uid))
		return err
	}
	refused := func(when string) {
		t.Helper()
		if err := allocate(old); !errors.Is(err, ipam.ErrReaddressing) {
			t.Fatalf("allocation from the old record %s: %v, want ErrReaddressing", when, err)
		}
	}

	h1, err := first.HoldAddressing(ctx, "n", 6)
	if err != nil {
		t.Fatal(err)
	}
	h2, err := second.HoldAddressing(ctx, "n", 6)
	if err != nil {
		t.Fatal(err)
	}
	if h1.Token == h2.Token {
		t.Fatalf("two changes got the same hold %q", h1.Token)
	}
	if err := first.ReleaseAddressing(ctx, "n", h1); err != nil {
		t.Fatal(err)
	}
	refused("after the first change released, while the second holds")
	// Releasing again (a retried release) lifts nothing either.
	if err := first.ReleaseAddressing(ctx, "n", h1); err != nil {
		t.Fatal(err)
	}
	refused("after the first change released twice")
	if err := second.ReleaseAddressing(ctx, "n", h2); err != nil {
		t.Fatal(err)
	}
	if err := allocate(old); err != nil {
		t.Fatalf("allocation from the old record after both changes released: %v", err)
	}

	// The second change is tried again and stored; a third, from the same
	// record, is refused and releases.
	h2, err = second.HoldAddressing(ctx, "n", 6)
	if err != nil {
		t.Fatal(err)
	}
	h3, err := first.HoldAddressing(ctx, "n", 6)
	if err != nil {
		t.Fatal(err)
	}
	if err := second.KeepAddressing(ctx, "n", h2); err != nil {
		t.Fatal(err)
	}
	if err := first.ReleaseAddressing(ctx, "n", h3); err != nil {
		t.Fatal(err)
	}
	refused("after a change from it was stored")
	next := old
	next.Record = 6
	if err := allocate(next); err != nil {
		t.Fatalf("allocation from the stored change's record: %v", err)
	}
}

// An older replica (one that knows the fence's minRecord alone) writes the
// fence back while a change holds, dropping the hold it does not know: the
// hold's floor stays (it is in minRecord, which that replica honours and
// keeps), and the change, once stored, keeps it for good.
func TestAHoldSurvivesAnOlderReplicasWrite(t *testing.T) {
	kv, js := ipamKV(t)
	changer, allocator := ipam.New(kv, js), ipam.New(kv, js)
	ctx := context.Background()
	old := pool(t, "n", "10.9.0.0/24", "10.9.0.1")
	old.Record = 5
	refused := func(when string) {
		t.Helper()
		if _, err := allocator.Allocate(ctx, old, owner(len(when))); !errors.Is(err, ipam.ErrReaddressing) {
			t.Fatalf("allocation from the old record %s: %v, want ErrReaddressing", when, err)
		}
	}
	h, err := changer.HoldAddressing(ctx, "n", 6)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, "n.fence.allocations")
	if err != nil {
		t.Fatal(err)
	}
	var f map[string]any
	if err := json.Unmarshal(e.Value(), &f); err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(map[string]any{"minRecord": f["minRecord"]})
	if _, err := kv.Update(ctx, "n.fence.allocations", data, e.Revision()); err != nil {
		t.Fatal(err)
	}
	refused("after an older replica's write")
	if err := changer.KeepAddressing(ctx, "n", h); err != nil {
		t.Fatal(err)
	}
	refused("once the change was stored")
	next := old
	next.Record = 6
	if _, err := allocator.Allocate(ctx, next, owner(99)); err != nil {
		t.Fatalf("allocation from the stored change's record: %v", err)
	}
}

// An allocation the fence refuses gives its address back with the pod's
// binding to it: the pod's next allocation, from the new record, finds no
// binding under way and gets an address at once.
func TestAnAllocationGivenBackCanBeMadeAgainAtOnce(t *testing.T) {
	kv, js := ipamKV(t)
	changer, allocator := ipam.New(kv, js), ipam.New(kv, js)
	ctx := context.Background()
	old := pool(t, "n", "10.9.0.0/24", "10.9.0.1")
	old.Record = 5
	h, err := changer.HoldAddressing(ctx, "n", 6)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := allocator.Allocate(ctx, old, owner(1)); !errors.Is(err, ipam.ErrReaddressing) {
		t.Fatalf("allocation from the old record during the change: %v, want ErrReaddressing", err)
	}
	if err := changer.KeepAddressing(ctx, "n", h); err != nil {
		t.Fatal(err)
	}
	next := old
	next.Record = 6
	got, err := allocator.Allocate(ctx, next, owner(1))
	if err != nil {
		t.Fatalf("the pod's allocation again, from the new record: %v", err)
	}
	if a, ok, err := allocator.Lookup(ctx, "n", owner(1).UID); err != nil || !ok || a.IP != got.IP {
		t.Fatalf("lookup after the allocation: %+v %v %v, want %s", a, ok, err, got.IP)
	}
}

// A change's put of a new network version fails with an outcome unknown
// (it may be stored all the same). The change reads the record again and
// settles its hold from it: not stored, allocations from the record as it
// stands work again at once, with no other write of the record; stored,
// they stay refused and those from the new version commit.
func TestAHoldOfAPutWhoseOutcomeIsUnknownIsSettledFromTheRecord(t *testing.T) {
	kv, js := ipamKV(t)
	ctx := t.Context()
	records, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "test-networks"})
	if err != nil {
		t.Fatal(err)
	}
	for i, tt := range []struct {
		name   string
		landed bool
	}{
		// The put's context ends before the write is sent: an error that
		// is no conflict, as a timeout's.
		{name: "not stored"},
		// The put is stored; its reply is lost (the change saw an error).
		{name: "stored", landed: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			changer, allocator := ipam.New(kv, js), ipam.New(kv, js)
			network := fmt.Sprintf("n%d", i)
			rev, err := records.Create(ctx, network, []byte(`{"cidr":"10.9.0.0/24"}`))
			if err != nil {
				t.Fatal(err)
			}
			old := pool(t, network, "10.9.0.0/24", "")
			old.Record = rev
			hold, err := changer.HoldAddressing(ctx, network, rev+1)
			if err != nil {
				t.Fatal(err)
			}
			putCtx, cancel := context.WithCancel(ctx)
			if !tt.landed {
				cancel()
			}
			_, err = records.Update(putCtx, network, []byte(`{"cidr":"10.9.0.0/16"}`), rev)
			cancel()
			if !tt.landed && (err == nil || record.Conflict(err)) {
				t.Fatalf("put with its context ended: %v, want an error that is no conflict", err)
			}
			if _, err := allocator.Allocate(ctx, old, owner(0)); !errors.Is(err, ipam.ErrReaddressing) {
				t.Fatalf("allocation from the old record before the hold is settled: %v, want ErrReaddressing", err)
			}

			e, err := records.Get(ctx, network)
			if err != nil {
				t.Fatal(err)
			}
			if err := changer.SettleAddressing(ctx, network, hold, e.Revision()); err != nil {
				t.Fatal(err)
			}
			_, err = allocator.Allocate(ctx, old, owner(1))
			if !tt.landed {
				if err != nil {
					t.Fatalf("allocation from the record the put left as it was: %v", err)
				}
				if e, err := records.Get(ctx, network); err != nil || e.Revision() != rev {
					t.Fatalf("record at revision %d (%v), want %d: written again", e.Revision(), err, rev)
				}
				return
			}
			if !errors.Is(err, ipam.ErrReaddressing) {
				t.Fatalf("allocation from the record before the stored version: %v, want ErrReaddressing", err)
			}
			next := pool(t, network, "10.9.0.0/16", "")
			next.Record = e.Revision()
			if _, err := allocator.Allocate(ctx, next, owner(1)); err != nil {
				t.Fatalf("allocation from the stored version: %v", err)
			}
		})
	}
}
