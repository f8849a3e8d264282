package bus_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
)

// BenchmarkPublishConsume measures one event's full trip: binary encode,
// JetStream publish with ack, fetch, decode, keyed dispatch, handler and
// ack. Publishing is sequential (as a handler publishes its
// effect); consumption runs on 8 workers over 64 keys.
//
// Before the timed part it moves the same number of plain JetStream messages
// (sync publish, fetch, ack; no CloudEvents, no queue) through the same
// server and reports the ratio as x-raw-jetstream, so the figure means the
// same on a fast and a slow machine.
func BenchmarkPublishConsume(b *testing.B) {
	bs := bustest.Start(b)
	data := []byte(`{"namespace":"default","name":"web","uid":"0d4b1d7e-8a57-4a3e-9f0e-5b7f9a2c1e33"}`)
	pctx := context.Background()

	b.StopTimer()
	raw := rawJetStream(b, bs, data)

	var handled atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = bs.Consume(ctx, bus.ConsumerConfig{Service: "bench", Stream: events.StreamPods, Subjects: []string{"pv.pod.accepted"}, Workers: 8, MaxPending: 256},
			func(context.Context, *bus.Message) error { handled.Add(1); return nil })
	}()
	keys := make([]string, 64)
	for i := range keys {
		keys[i] = "default/pod-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
	}

	b.ReportAllocs()
	b.StartTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		ev, err := bus.NewEvent("podvisor/bench", typePodAccepted, keys[i%len(keys)], data)
		if err != nil {
			b.Fatal(err)
		}
		if err := bs.Publish(pctx, ev); err != nil {
			b.Fatal(err)
		}
	}
	waitHandled(b, &handled, b.N)
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(elapsed)/float64(raw), "x-raw-jetstream")
	cancel()
	<-done
}

// rawJetStream moves b.N messages through plain JetStream and returns how
// long it took.
func rawJetStream(b *testing.B, bs *bus.Bus, data []byte) time.Duration {
	ctx := context.Background()
	js := bs.JetStream()
	cons, err := js.CreateOrUpdateConsumer(ctx, events.StreamPods, jetstream.ConsumerConfig{
		Durable: "bench-raw", FilterSubject: "pv.pod.requested", AckPolicy: jetstream.AckExplicitPolicy,
	})
	if err != nil {
		b.Fatal(err)
	}
	var handled atomic.Int64
	cc, err := cons.Consume(func(m jetstream.Msg) {
		_ = m.Ack()
		handled.Add(1)
	})
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Stop()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		msg := nats.NewMsg("pv.pod.requested")
		msg.Data = data
		if _, err := js.PublishMsg(ctx, msg); err != nil {
			b.Fatal(err)
		}
	}
	waitHandled(b, &handled, b.N)
	return time.Since(start)
}

func waitHandled(b *testing.B, handled *atomic.Int64, n int) {
	deadline := time.Now().Add(time.Minute)
	for handled.Load() < int64(n) {
		if time.Now().After(deadline) {
			b.Fatalf("handled %d of %d", handled.Load(), n)
		}
		time.Sleep(100 * time.Microsecond)
	}
}
