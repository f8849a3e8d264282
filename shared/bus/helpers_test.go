package bus_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// Catalog types used by the tests; the bus routes by the type's name.
const (
	typePodRequested = "io.podvisor.pod.requested.v1"
	typePodAccepted  = "io.podvisor.pod.accepted.v1"
	typeHostLost     = "io.podvisor.host.lost.v1"
)

func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustEvent(t testing.TB, ceType, subject string, data any) event.Event {
	t.Helper()
	ev, err := bus.NewEvent(events.OwnerSource(ceType), ceType, subject, data)
	if err != nil {
		t.Fatalf("NewEvent: %v", err)
	}
	return ev
}

func mustPublish(t testing.TB, b *bus.Bus, ev event.Event) {
	t.Helper()
	if err := b.Publish(testContext(t), ev); err != nil {
		t.Fatalf("Publish %s: %v", ev.ID(), err)
	}
}

// running is a Consume call in the background.
type running struct {
	cancel   context.CancelFunc
	done     chan struct{}
	err      error
	returned time.Time
}

// startConsume runs Consume until stop or the end of the test.
func startConsume(t testing.TB, b *bus.Bus, cfg bus.ConsumerConfig, h bus.Handler) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = b.Consume(ctx, cfg, h)
		r.returned = time.Now()
	}()
	t.Cleanup(func() { r.stop(t) })
	// Consume declares its durable before fetching; wait for it so that
	// tests publishing right after start do not race the declaration.
	waitFor(t, 5*time.Second, "consumer "+cfg.Durable()+" exists", func() bool {
		_, err := b.JetStream().Consumer(context.Background(), cfg.Stream, cfg.Durable())
		return err == nil
	})
	return r
}

func (r *running) stop(t testing.TB) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("Consume did not return within 15s of cancel")
	}
	if r.err != nil {
		t.Errorf("Consume returned %v", r.err)
	}
}

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// streamMsgs returns every message stored in a stream, oldest first.
func streamMsgs(t testing.TB, b *bus.Bus, stream string) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := testContext(t)
	s, err := b.JetStream().Stream(ctx, stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatalf("stream %s info: %v", stream, err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("stream %s seq %d: %v", stream, seq, err)
		}
		out = append(out, m)
	}
	return out
}

// recorder collects what handlers saw, safely across workers.
type recorder struct {
	mu   sync.Mutex
	msgs []bus.Message
}

func (r *recorder) add(m *bus.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, *m)
}

func (r *recorder) all() []bus.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]bus.Message(nil), r.msgs...)
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}
