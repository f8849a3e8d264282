package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
)

// An allocation binds the pod to an address, loses that address's create
// to another pod, and that pod gives the address back (the fence refused
// it) before this allocation binds the next one. The binding left pointing
// at the given-back address is this allocation's own: it is moved, where a
// recent binding of the pod to an address nobody holds is, for any other
// allocation, one under way elsewhere and refused; and it stops being its
// own once another allocation of the pod has written it.
func TestBindMovesItsOwnBindingFromAnAddressGivenBack(t *testing.T) {
	ctx, kv, allocators := startAllocators(t, 1)
	a := allocators[0]
	const network, uid = "n", "uid-1"
	st := bindState{absent: true}
	if err := a.bind(ctx, network, uid, "10.9.0.3", &st); err != nil {
		t.Fatal(err)
	}
	// Nobody holds 10.9.0.3 (its winner gave it back): to another
	// allocation of the pod, the binding is one under way.
	other := bindState{}
	if err := a.bind(ctx, network, uid, "10.9.0.4", &other); !errors.Is(err, ErrAllocationUnderWay) {
		t.Fatalf("another allocation's bind over a recent binding: %v, want ErrAllocationUnderWay", err)
	}
	if err := a.bind(ctx, network, uid, "10.9.0.4", &st); err != nil {
		t.Fatalf("the allocation's bind over its own binding: %v", err)
	}
	// Another allocation of the pod binds the same address: from then on
	// the binding is no longer this allocation's own to move.
	if err := a.bind(ctx, network, uid, "10.9.0.4", &other); err != nil {
		t.Fatalf("another allocation's bind to the same address: %v", err)
	}
	if err := a.bind(ctx, network, uid, "10.9.0.5", &st); !errors.Is(err, ErrAllocationUnderWay) {
		t.Fatalf("bind over a binding another allocation wrote since: %v, want ErrAllocationUnderWay", err)
	}
	e, err := kv.Get(ctx, events.IPPodBindingKey(network, uid))
	if err != nil {
		t.Fatal(err)
	}
	var got events.IPPodBinding
	if err := json.Unmarshal(e.Value(), &got); err != nil {
		t.Fatal(err)
	}
	if got.IP != "10.9.0.4" {
		t.Fatalf("binding points at %s, want 10.9.0.4", got.IP)
	}
}

// startAllocators starts a bus and returns n allocators over its ipam
// bucket, the bucket, and a context that ends with the test (10 s at most).
func startAllocators(t *testing.T, n int) (context.Context, jetstream.KeyValue, []*Allocator) {
	t.Helper()
	b := bustest.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	kv, err := b.KV(ctx, bus.BucketIPAM)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]*Allocator, n)
	for i := range out {
		out[i] = New(kv, b.JetStream())
	}
	return ctx, kv, out
}
