package bus_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
)

// BenchmarkPublishConsume measures one event's full trip: binary encode,
// JetStream publish with ack, fetch, decode, keyed dispatch, handler and
// confirmed ack. Publishing is sequential (as a handler publishes its
// effect); consumption runs on 8 workers over 64 keys.
func BenchmarkPublishConsume(b *testing.B) {
	bs := bustest.Start(b)
	var handled atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = bs.Consume(ctx, bus.ConsumerConfig{Service: "bench", Stream: bus.StreamPods, Workers: 8, MaxPending: 256},
			func(context.Context, *bus.Message) error { handled.Add(1); return nil })
	}()
	keys := make([]string, 64)
	for i := range keys {
		keys[i] = "default/pod-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
	}
	data := map[string]string{"uid": "0d4b1d7e-8a57-4a3e-9f0e-5b7f9a2c1e33", "host": "esx-01.cluster-1"}
	pctx := context.Background()

	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ev, err := bus.NewEvent("podvisor/bench", typePodAccepted, keys[i%len(keys)], data)
		if err != nil {
			b.Fatal(err)
		}
		if err := bs.Publish(pctx, ev); err != nil {
			b.Fatal(err)
		}
	}
	deadline := time.Now().Add(time.Minute)
	for handled.Load() < int64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("handled %d of %d", handled.Load(), b.N)
		}
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	cancel()
	<-done
}
