package bus_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
)

func TestRetryableFailureIsRedeliveredThenAcked(t *testing.T) {
	b := bustest.Start(t)
	var rec recorder
	start := time.Now()
	startConsume(t, b, bus.ConsumerConfig{
		Service: "scheduler", Stream: events.StreamPods,
		AckWait: 5 * time.Second, MaxDeliver: 5, BackOff: []time.Duration{150 * time.Millisecond},
	}, func(_ context.Context, m *bus.Message) error {
		rec.add(m)
		if m.Delivery == 1 {
			return errors.New("vCenter busy")
		}
		return nil
	})
	mustPublish(t, b, mustEvent(t, typePodAccepted, "default/web", map[string]any{"uid": "u-1"}))

	waitFor(t, 5*time.Second, "second delivery", func() bool { return rec.len() >= 2 })
	msgs := rec.all()
	if msgs[0].Delivery != 1 || msgs[1].Delivery != 2 || msgs[0].Event.ID() != msgs[1].Event.ID() {
		t.Fatalf("deliveries = %d,%d of %s,%s; want 1,2 of one event", msgs[0].Delivery, msgs[1].Delivery, msgs[0].Event.ID(), msgs[1].Event.ID())
	}
	// AckWait is 5 s: a redelivery well before it shows the Nak carried the backoff.
	if gap := time.Since(start); gap > 3*time.Second {
		t.Errorf("redelivery took %s; the 150ms backoff was not applied", gap)
	}
	// Acked: the server will not deliver it again, and it says how often it
	// did.
	if ci := settled(t, b, "scheduler-PODS", 1); ci.Delivered.Consumer != 2 {
		t.Errorf("the server delivered %d times, want 2", ci.Delivered.Consumer)
	}
	if n := rec.len(); n != 2 {
		t.Errorf("handler ran %d times, want 2 (a success must not be redelivered)", n)
	}
	if n := len(streamMsgs(t, b, bus.StreamDLQ)); n != 0 {
		t.Errorf("DLQ holds %d messages, want 0", n)
	}
}

func TestPoisonMessagesAreDeadLetteredNotRedelivered(t *testing.T) {
	b := bustest.Start(t)
	var rec recorder
	startConsume(t, b, bus.ConsumerConfig{
		Service: "provisioner", Stream: events.StreamPods,
		AckWait: 200 * time.Millisecond, MaxDeliver: 5, BackOff: []time.Duration{20 * time.Millisecond},
	}, func(_ context.Context, m *bus.Message) error {
		rec.add(m)
		return bus.Permanent(errors.New("spec.containers[0].image: required"))
	})
	ctx := testContext(t)

	// Not a CloudEvent at all: someone published plain text on an event subject.
	junk := nats.NewMsg("pv.pod.requested")
	junk.Header.Set("X-Origin", "a script")
	junk.Data = []byte("hello")
	if _, err := b.JetStream().PublishMsg(ctx, junk); err != nil {
		t.Fatal(err)
	}
	// A well-formed event the handler rejects for good.
	bad := mustEvent(t, typePodRequested, "default/web", map[string]any{"uid": "u-1"})
	mustPublish(t, b, bad)

	waitFor(t, 5*time.Second, "two dead letters", func() bool { return len(streamMsgs(t, b, bus.StreamDLQ)) >= 2 })
	// Both were terminated: the server delivered each once and will not
	// again.
	if ci := settled(t, b, "provisioner-PODS", 2); ci.Delivered.Consumer != 2 {
		t.Errorf("the server delivered %d times, want 2 (each message once)", ci.Delivered.Consumer)
	}
	if n := rec.len(); n != 1 {
		t.Errorf("handler ran %d times, want 1 (the junk never reaches it; the rejected event is not redelivered)", n)
	}
	dl := streamMsgs(t, b, bus.StreamDLQ)
	if len(dl) != 2 {
		t.Fatalf("DLQ holds %d messages, want 2", len(dl))
	}
	for _, m := range dl {
		if m.Subject != "pv.dlq.provisioner" {
			t.Errorf("dead letter subject = %q, want pv.dlq.provisioner", m.Subject)
		}
	}

	junkDL, err := bus.ReadDeadLetter(dl[0].Header)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(junkDL.Reason, "not a CloudEvent") || junkDL.Subject != "pv.pod.requested" ||
		junkDL.StreamSeq != 1 || junkDL.Deliveries != 1 || junkDL.Stream != events.StreamPods || junkDL.Consumer != "provisioner-PODS" {
		t.Errorf("junk dead letter = %+v", junkDL)
	}
	if string(dl[0].Data) != "hello" || dl[0].Header.Get("X-Origin") != "a script" {
		t.Errorf("junk dead letter lost the original body or headers: %q %v", dl[0].Data, dl[0].Header)
	}

	badDL, err := bus.ReadDeadLetter(dl[1].Header)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(badDL.Reason, "spec.containers[0].image: required") || badDL.StreamSeq != 2 {
		t.Errorf("rejected-event dead letter = %+v", badDL)
	}
	// The copy is still a CloudEvent, so it can be inspected or republished as is.
	ev, err := bus.DecodeMessage(dl[1])
	if err != nil || ev.ID() != bad.ID() {
		t.Errorf("dead letter does not decode to the original event: %v %v", ev.ID(), err)
	}

	// Both originals were terminated: nothing is pending on the consumer.
	cons, err := b.JetStream().Consumer(ctx, events.StreamPods, "provisioner-PODS")
	if err != nil {
		t.Fatal(err)
	}
	ci, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ci.NumAckPending != 0 || ci.NumRedelivered != 0 {
		t.Errorf("consumer has %d pending, %d redelivered; want 0, 0", ci.NumAckPending, ci.NumRedelivered)
	}
}

func TestMaxDeliverExhaustionDeadLetters(t *testing.T) {
	b := bustest.Start(t)
	var calls atomic.Int32
	startConsume(t, b, bus.ConsumerConfig{
		Service: "netconfig", Stream: events.StreamPods,
		AckWait: time.Second, MaxDeliver: 3, BackOff: []time.Duration{20 * time.Millisecond, 40 * time.Millisecond},
	}, func(_ context.Context, m *bus.Message) error {
		calls.Add(1)
		if m.LastDelivery() != (m.Delivery == 3) {
			t.Errorf("LastDelivery() = %v on delivery %d of 3", m.LastDelivery(), m.Delivery)
		}
		return fmt.Errorf("port group pv-blue: attempt %d failed", m.Delivery)
	})
	mustPublish(t, b, mustEvent(t, typePodAccepted, "default/web", nil))

	waitFor(t, 5*time.Second, "dead letter", func() bool { return len(streamMsgs(t, b, bus.StreamDLQ)) == 1 })
	if ci := settled(t, b, "netconfig-PODS", 1); ci.Delivered.Consumer != 3 {
		t.Errorf("the server delivered %d times, want MaxDeliver=3", ci.Delivered.Consumer)
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("handler ran %d times, want MaxDeliver=3", n)
	}
	dl, err := bus.ReadDeadLetter(streamMsgs(t, b, bus.StreamDLQ)[0].Header)
	if err != nil {
		t.Fatal(err)
	}
	if want := "max deliveries exceeded: port group pv-blue: attempt 3 failed"; dl.Reason != want {
		t.Errorf("reason = %q, want %q", dl.Reason, want)
	}
	if dl.Deliveries != 3 || dl.Service != "netconfig" {
		t.Errorf("dead letter = %+v", dl)
	}
}

// A message whose deliveries all ended without an outcome (the process died
// each time) is dead-lettered from the server's MAX_DELIVERIES advisory. The
// server sends that advisory when the next pull arrives, i.e. from the
// process that starts after the crashes; it goes through the ADVISORIES
// stream to the capture consumer.
func TestMaxDeliveriesAdvisoryDeadLetters(t *testing.T) {
	b := bustest.Start(t)
	ctx := testContext(t)
	cfg := bus.ConsumerConfig{Service: "migration", Stream: events.StreamMigrations, AckWait: 100 * time.Millisecond, MaxDeliver: 2, BackOff: []time.Duration{10 * time.Millisecond}}

	// Same durable as Consume declares; two fetches without an outcome
	// stand in for two crashed processes.
	cons, err := b.JetStream().CreateOrUpdateConsumer(ctx, events.StreamMigrations, jetstream.ConsumerConfig{
		Durable: cfg.Durable(), AckPolicy: jetstream.AckExplicitPolicy, AckWait: cfg.AckWait, MaxDeliver: cfg.MaxDeliver,
	})
	if err != nil {
		t.Fatal(err)
	}
	ev := mustEvent(t, "io.podvisor.migration.requested.v1", "default/web", map[string]any{"pod": "default/web"})
	mustPublish(t, b, ev)
	for i := 1; i <= 2; i++ {
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for range batch.Messages() {
			n++
		}
		if n != 1 {
			t.Fatalf("crash %d: fetched %d messages, want 1", i, n)
		}
	}
	var calls atomic.Int32
	startConsume(t, b, cfg, func(context.Context, *bus.Message) error { calls.Add(1); return nil })
	waitFor(t, 5*time.Second, "dead letter", func() bool { return len(streamMsgs(t, b, bus.StreamDLQ)) == 1 })
	if n := len(streamMsgs(t, b, bus.StreamAdvisories)); n != 1 {
		t.Errorf("ADVISORIES holds %d messages, want the one advisory", n)
	}
	m := streamMsgs(t, b, bus.StreamDLQ)[0]
	dl, err := bus.ReadDeadLetter(m.Header)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(dl.Reason, "max deliveries exceeded: no outcome after 2 deliveries") || dl.Subject != "pv.migration.requested" || dl.Service != "migration" {
		t.Errorf("dead letter = %+v", dl)
	}
	if got, err := bus.DecodeMessage(m); err != nil || got.ID() != ev.ID() {
		t.Errorf("dead letter is not the original event: %v %v", got.ID(), err)
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("handler ran %d times for a message past MaxDeliver", n)
	}
}

func TestSameKeyRunsOneAtATimeInOrder(t *testing.T) {
	b := bustest.Start(t)
	const keys, perKey = 4, 6
	var (
		mu         sync.Mutex
		activeKey  = map[string]int{}
		maxPerKey  int
		active     int
		maxOverall int
		order      = map[string][]int{}
		handled    atomic.Int32
	)
	startConsume(t, b, bus.ConsumerConfig{Service: "scheduler", Stream: events.StreamPods, Workers: 4, AckWait: 2 * time.Second},
		func(_ context.Context, m *bus.Message) error {
			var n struct{ N int }
			if err := json.Unmarshal(m.Event.Data(), &n); err != nil {
				return bus.Permanent(err)
			}
			mu.Lock()
			activeKey[m.Key]++
			active++
			maxPerKey = max(maxPerKey, activeKey[m.Key])
			maxOverall = max(maxOverall, active)
			order[m.Key] = append(order[m.Key], n.N)
			mu.Unlock()
			time.Sleep(15 * time.Millisecond)
			mu.Lock()
			activeKey[m.Key]--
			active--
			mu.Unlock()
			handled.Add(1)
			return nil
		})
	for i := range perKey {
		for k := range keys {
			mustPublish(t, b, mustEvent(t, typePodAccepted, fmt.Sprintf("default/pod-%d", k), map[string]int{"N": i}))
		}
	}
	waitFor(t, 10*time.Second, "all handled", func() bool { return handled.Load() == keys*perKey })

	mu.Lock()
	defer mu.Unlock()
	if maxPerKey != 1 {
		t.Errorf("max concurrent handlers for one key = %d, want 1", maxPerKey)
	}
	if maxOverall < 2 {
		t.Errorf("max concurrent handlers overall = %d, want different keys to overlap", maxOverall)
	}
	for k, got := range order {
		for i, n := range got {
			if n != i {
				t.Errorf("key %s handled in order %v, want 0..%d", k, got, perKey-1)
				break
			}
		}
	}
}

// A handler that runs for several AckWaits is not redelivered, nor is a
// message queued behind it on the same key.
func TestInProgressKeepsLongHandlersFromRedelivery(t *testing.T) {
	b := bustest.Start(t)
	var rec recorder
	startConsume(t, b, bus.ConsumerConfig{Service: "provisioner", Stream: events.StreamPods, Workers: 2, AckWait: 300 * time.Millisecond},
		func(_ context.Context, m *bus.Message) error {
			rec.add(m)
			time.Sleep(1200 * time.Millisecond) // four AckWaits of work
			return nil
		})
	mustPublish(t, b, mustEvent(t, typePodAccepted, "default/web", nil))
	mustPublish(t, b, mustEvent(t, typePodAccepted, "default/web", nil))

	// Both acked: the server delivers neither again, and says how often it
	// delivered them.
	if ci := settled(t, b, "provisioner-PODS", 2); ci.Delivered.Consumer != 2 {
		t.Errorf("the server delivered %d times, want 2", ci.Delivered.Consumer)
	}
	msgs := rec.all()
	if len(msgs) != 2 {
		t.Fatalf("handler ran %d times, want 2", len(msgs))
	}
	for _, m := range msgs {
		if m.Delivery != 1 {
			t.Errorf("event %s handled on delivery %d, want 1", m.Event.ID(), m.Delivery)
		}
	}
}

// Shutdown with work in flight: the running handler finishes and acks
// before Consume returns, queued messages go back at once, and a handler
// cut off by the drain timeout leaves its message to the next process.
func TestShutdownDrainsAndLosesNothing(t *testing.T) {
	b := bustest.Start(t)
	cfg := bus.ConsumerConfig{Service: "imagecache", Stream: events.StreamPods, Workers: 2, AckWait: 500 * time.Millisecond, DrainTimeout: 400 * time.Millisecond}

	var (
		mu       sync.Mutex
		acked    = map[string]bool{}
		finished time.Time
	)
	slowStarted := make(chan struct{}, 1)
	stuckStarted := make(chan struct{}, 1)
	first := startConsume(t, b, cfg, func(ctx context.Context, m *bus.Message) error {
		switch m.Key {
		case "default/slow":
			slowStarted <- struct{}{}
			time.Sleep(200 * time.Millisecond)
			mu.Lock()
			acked[m.Event.ID()] = true
			finished = time.Now()
			mu.Unlock()
			return nil
		case "default/stuck":
			// Ignores shutdown until its context is cancelled at the drain timeout.
			stuckStarted <- struct{}{}
			<-ctx.Done()
			return ctx.Err()
		}
		return errors.New("unexpected key " + m.Key)
	})
	slow := mustEvent(t, typePodAccepted, "default/slow", nil)
	queued := mustEvent(t, typePodAccepted, "default/slow", nil) // waits behind slow
	stuck := mustEvent(t, typePodAccepted, "default/stuck", nil)
	for _, ev := range []event.Event{slow, queued, stuck} {
		mustPublish(t, b, ev)
	}
	<-slowStarted
	<-stuckStarted
	first.stop(t)

	mu.Lock()
	if !acked[slow.ID()] {
		t.Errorf("the running handler did not finish before Consume returned")
	} else if !finished.Before(first.returned) {
		t.Errorf("Consume returned at %s, before its running handler finished at %s", first.returned, finished)
	}
	if acked[queued.ID()] {
		t.Errorf("a queued message was started after shutdown began")
	}
	mu.Unlock()

	// The next process of the service gets everything not acked.
	var rec recorder
	startConsume(t, b, cfg, func(_ context.Context, m *bus.Message) error { rec.add(m); return nil })
	waitFor(t, 5*time.Second, "leftovers redelivered", func() bool { return rec.len() >= 2 })
	settled(t, b, "imagecache-PODS", 3) // nothing more will come
	got := map[string]uint64{}
	for _, m := range rec.all() {
		got[m.Event.ID()] = m.Delivery
	}
	if len(got) != 2 || got[queued.ID()] == 0 || got[stuck.ID()] == 0 {
		t.Errorf("second consumer handled %v, want exactly the queued and the stuck event", got)
	}
	if _, again := got[slow.ID()]; again {
		t.Errorf("the acked event was delivered again")
	}
	if got[stuck.ID()] < 2 {
		t.Errorf("stuck event delivery = %d, want a redelivery", got[stuck.ID()])
	}
}

func TestConsumeRefusesBadConfig(t *testing.T) {
	b := bustest.Start(t)
	tests := []struct {
		name   string
		cfg    bus.ConsumerConfig
		wantIn string
	}{
		{"no service", bus.ConsumerConfig{Stream: events.StreamPods}, "Service"},
		{"service with dots", bus.ConsumerConfig{Service: "a.b", Stream: events.StreamPods}, "Service"},
		{"no stream", bus.ConsumerConfig{Service: "svc"}, "Stream"},
		{"negative workers", bus.ConsumerConfig{Service: "svc", Stream: events.StreamPods, Workers: -1}, "Workers"},
		{"backoff as long as max deliver", bus.ConsumerConfig{Service: "svc", Stream: events.StreamPods, MaxDeliver: 2, BackOff: []time.Duration{time.Second, time.Second}}, "MaxDeliver 2: must be greater than len(BackOff) 2"},
		{"backoff longer than default max deliver", bus.ConsumerConfig{Service: "svc", Stream: events.StreamPods, BackOff: make11s()}, "MaxDeliver 10"},
		{"zero backoff", bus.ConsumerConfig{Service: "svc", Stream: events.StreamPods, BackOff: []time.Duration{0}}, "BackOff[0]"},
		{"tiny ack wait", bus.ConsumerConfig{Service: "svc", Stream: events.StreamPods, AckWait: time.Millisecond}, "AckWait"},
		{"bad subject", bus.ConsumerConfig{Service: "svc", Stream: events.StreamPods, Subjects: []string{"pv..x"}}, "Subjects[0]"},
		{"missing stream", bus.ConsumerConfig{Service: "svc", Stream: "NOPE"}, "EnsureTopology"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := b.Consume(testContext(t), tt.cfg, func(context.Context, *bus.Message) error { return nil })
			if err == nil || !strings.Contains(err.Error(), tt.wantIn) {
				t.Errorf("err = %v, want one mentioning %q", err, tt.wantIn)
			}
		})
	}
}

func make11s() []time.Duration {
	out := make([]time.Duration, 11)
	for i := range out {
		out[i] = time.Second
	}
	return out
}

// Subjects narrows a consumer to some events of a stream.
func TestConsumeFiltersSubjects(t *testing.T) {
	b := bustest.Start(t)
	var rec recorder
	startConsume(t, b, bus.ConsumerConfig{Service: "imagecache", Stream: events.StreamPods, Subjects: []string{"pv.pod.accepted", "pv.pod.deleted"}},
		func(_ context.Context, m *bus.Message) error { rec.add(m); return nil })
	mustPublish(t, b, mustEvent(t, typePodRequested, "default/a", nil))
	mustPublish(t, b, mustEvent(t, typePodAccepted, "default/b", nil))
	mustPublish(t, b, mustEvent(t, "io.podvisor.pod.deleted.v1", "default/c", nil))
	waitFor(t, 5*time.Second, "two events", func() bool { return rec.len() >= 2 })
	settled(t, b, "imagecache-PODS", 3) // the filtered-out event was passed over, not pending
	for _, m := range rec.all() {
		if m.Event.Type() == typePodRequested {
			t.Errorf("filtered consumer received %s", m.Event.Type())
		}
	}
	if n := rec.len(); n != 2 {
		t.Errorf("handled %d events, want 2", n)
	}
}

// A panicking handler is a retryable failure, not a dead consumer.
func TestHandlerPanicIsRetried(t *testing.T) {
	b := bustest.Start(t)
	var rec recorder
	startConsume(t, b, bus.ConsumerConfig{Service: "scheduler", Stream: events.StreamHosts, BackOff: []time.Duration{10 * time.Millisecond}},
		func(_ context.Context, m *bus.Message) error {
			rec.add(m)
			if m.Delivery == 1 {
				panic("nil map")
			}
			return nil
		})
	mustPublish(t, b, mustEvent(t, typeHostLost, "esx-1", nil))
	waitFor(t, 5*time.Second, "redelivery after panic", func() bool { return rec.len() >= 2 })
}

// During a version migration producers publish .v1 and .v2 of an event; a
// consumer built before .v2 existed skips it instead of dead-lettering it.
// A type outside the catalog, or one on the wrong subject, is poison.
func TestUnknownTypesAndVersions(t *testing.T) {
	b := bustest.Start(t)
	var rec recorder
	startConsume(t, b, bus.ConsumerConfig{Service: "provisioner", Stream: events.StreamPods},
		func(_ context.Context, m *bus.Message) error { rec.add(m); return nil })
	ctx := testContext(t)
	publishRaw := func(subject, ceType, id string) {
		t.Helper()
		msg := nats.NewMsg(subject)
		msg.Header.Set("ce-specversion", "1.0")
		msg.Header.Set("ce-id", id)
		msg.Header.Set("ce-source", "podvisor/future")
		msg.Header.Set("ce-type", ceType)
		msg.Header.Set("ce-subject", "default/web")
		if _, err := b.JetStream().PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	publishRaw("pv.pod.accepted", "io.podvisor.pod.accepted.v2", "v2")
	publishRaw("pv.pod.accepted", "io.podvisor.pod.exploded.v1", "unknown")
	publishRaw("pv.pod.accepted", typePodRequested, "wrong-subject")
	mustPublish(t, b, mustEvent(t, typePodAccepted, "default/web", nil))

	waitFor(t, 5*time.Second, "the known event", func() bool { return rec.len() == 1 })
	waitFor(t, 5*time.Second, "two dead letters", func() bool { return len(streamMsgs(t, b, bus.StreamDLQ)) == 2 })
	settled(t, b, "provisioner-PODS", 4) // every message handled or dead-lettered
	if got := rec.all(); len(got) != 1 || got[0].Event.Type() != typePodAccepted {
		t.Errorf("handler saw %d events, want only the catalog one", len(got))
	}
	reasons := map[string]string{}
	for _, m := range streamMsgs(t, b, bus.StreamDLQ) {
		dl, err := bus.ReadDeadLetter(m.Header)
		if err != nil {
			t.Fatal(err)
		}
		reasons[m.Header.Get("ce-id")] = dl.Reason
	}
	if !strings.Contains(reasons["unknown"], "unknown event type") {
		t.Errorf("unknown type reason = %q", reasons["unknown"])
	}
	if !strings.Contains(reasons["wrong-subject"], "travels on subject pv.pod.requested, not pv.pod.accepted") {
		t.Errorf("wrong subject reason = %q", reasons["wrong-subject"])
	}
	if _, dead := reasons["v2"]; dead {
		t.Errorf("a later version of a known event was dead-lettered")
	}
}

// A consumer whose connection is closed stops with an error instead of
// spinning on fetch failures.
func TestConsumeReturnsWhenConnectionCloses(t *testing.T) {
	b := bustest.Start(t)
	errc := make(chan error, 1)
	go func() {
		errc <- b.Consume(context.Background(), bus.ConsumerConfig{Service: "scheduler", Stream: events.StreamHosts},
			func(context.Context, *bus.Message) error { return nil })
	}()
	waitFor(t, 5*time.Second, "consumer declared", func() bool {
		_, err := b.JetStream().Consumer(context.Background(), events.StreamHosts, "scheduler-HOSTS")
		return err == nil
	})
	b.Close()
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "connection closed") {
			t.Errorf("Consume returned %v, want a connection-closed error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Consume kept running on a closed connection")
	}
}

// settled waits until durable (on PODS) has settled every message up to
// stream sequence seq (acked or terminated, none pending) and returns its
// info: after that the server delivers none of them again, so what the
// handler saw is final.
func settled(t *testing.T, b *bus.Bus, durable string, seq uint64) *jetstream.ConsumerInfo {
	t.Helper()
	var ci *jetstream.ConsumerInfo
	waitFor(t, 5*time.Second, durable+" settled", func() bool {
		c, err := b.JetStream().Consumer(context.Background(), events.StreamPods, durable)
		if err != nil {
			return false
		}
		ci, err = c.Info(context.Background())
		return err == nil && ci.NumAckPending == 0 && ci.AckFloor.Stream >= seq
	})
	return ci
}
