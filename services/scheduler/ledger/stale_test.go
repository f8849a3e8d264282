package ledger_test

import (
	"context"
	"sync"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler/ledger"
	"github.com/podvisor/podvisor/shared/bustest"
)

// laggingKV answers reads of one key once from an earlier entry, as a NATS
// node that has not applied the latest writes does: a KV read is a direct
// get, which any replica of the bucket answers. (One server cannot lag
// behind itself; the writes still go to the real bucket.)
type laggingKV struct {
	jetstream.KeyValue
	mu    sync.Mutex
	stale map[string]jetstream.KeyValueEntry
}

func (k *laggingKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	k.mu.Lock()
	e, ok := k.stale[key]
	delete(k.stale, key)
	k.mu.Unlock()
	if ok {
		return e, nil
	}
	return k.KeyValue.Get(ctx, key)
}

// A claim that finds the pod bound to another host takes the binding over
// only if that host no longer holds the pod. Right after a NATS node
// restart, the read of that host's entry may come from a node still
// behind: the pod's reservation not there yet. Taking that for the truth
// bound a live pod to a second host; the claim must find it live.
func TestClaimIsNotFooledByALaggingRead(t *testing.T) {
	b := bustest.Start(t)
	ctx := context.Background()
	if err := b.EnsureTopology(ctx); err != nil {
		t.Fatal(err)
	}
	kv, err := b.KV(ctx, events.BucketLedger)
	if err != nil {
		t.Fatal(err)
	}
	l := ledger.New(kv)
	// esx-1 holds another pod; its entry before u1 arrives is what the
	// lagging node will answer.
	if h, err := place(ctx, l, "u0", "esx-1"); err != nil || h != "esx-1" {
		t.Fatalf("placement of u0: %s, %v", h, err)
	}
	before, err := kv.Get(ctx, events.LedgerEntryKey("esx-1"))
	if err != nil {
		t.Fatal(err)
	}
	if h, err := place(ctx, l, "u1", "esx-1"); err != nil || h != "esx-1" {
		t.Fatalf("placement of u1: %s, %v", h, err)
	}

	lag := &laggingKV{KeyValue: kv, stale: map[string]jetstream.KeyValueEntry{events.LedgerEntryKey("esx-1"): before}}
	if h, err := place(ctx, ledger.New(lag), "u1", "esx-2"); err != nil || h != "esx-1" {
		t.Fatalf("second placement of u1 with a lagging read of esx-1: %s, %v (want esx-1)", h, err)
	}
	if bd, ok, err := l.GetBinding(ctx, "u1"); err != nil || !ok || bd.Host != "esx-1" {
		t.Fatalf("binding of u1: %+v %v %v (want esx-1)", bd, ok, err)
	}
	if e, _ := l.Get(ctx, "esx-2"); len(e.Allocations) != 0 {
		t.Fatalf("the loser's reservation stayed on esx-2: %v", e.Allocations)
	}
}
