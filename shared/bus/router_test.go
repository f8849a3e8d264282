package bus_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
)

// hookCall is one run of a route's failure hook.
type hookCall struct {
	host     string
	reason   string
	delivery uint64
}

// hostRouter is a router with one HostLost handler that fails with fail
// (nil: succeeds) and records its calls and its failure hook's.
type hostRouter struct {
	mu      sync.Mutex
	handled []string
	hooks   []hookCall
}

func (h *hostRouter) calls() (handled []string, hooks []hookCall) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.handled...), append([]hookCall(nil), h.hooks...)
}

func startHostRouter(t *testing.T, b *bus.Bus, cfg bus.ConsumerConfig, fail func(delivery uint64) error, hookErr func(n int) error) *hostRouter {
	t.Helper()
	hr := &hostRouter{}
	r := bus.NewRouter("scheduler", nil)
	bus.Handle(r, func(_ context.Context, m *bus.Message, p *events.HostLost) error {
		hr.mu.Lock()
		hr.handled = append(hr.handled, p.Name)
		hr.mu.Unlock()
		if m.Log == nil {
			t.Error("Message.Log is nil in a routed handler")
		}
		if fail == nil {
			return nil
		}
		return fail(m.Delivery)
	}).OnFailure(func(_ context.Context, m *bus.Message, p *events.HostLost, err error) error {
		hr.mu.Lock()
		defer hr.mu.Unlock()
		hr.hooks = append(hr.hooks, hookCall{host: p.Name, reason: bus.ReasonOf(err, "Unknown"), delivery: m.Delivery})
		if hookErr != nil {
			return hookErr(len(hr.hooks))
		}
		return nil
	})
	cfgs := r.Consumers(cfg, nil)
	if len(cfgs) != 1 || cfgs[0].Stream != events.StreamHosts || strings.Join(cfgs[0].Subjects, ",") != events.SubjectHostLost {
		t.Fatalf("Consumers = %+v, want one on HOSTS for %s", cfgs, events.SubjectHostLost)
	}
	startConsume(t, b, cfgs[0], r.Handler())
	return hr
}

func TestRouterDecodesAndDeadLettersBadPayloads(t *testing.T) {
	b := bustest.Start(t)
	hr := startHostRouter(t, b, bus.ConsumerConfig{}, nil, nil)
	mustPublish(t, b, mustEvent(t, typeHostLost, "esx-2", json.RawMessage(`{"name":"esx-2","cluster":"cluster-1","reason":"NotResponding","colour":"red"}`)))
	mustPublish(t, b, mustEvent(t, typeHostLost, "esx-3", json.RawMessage(`{"name":"esx-3","cluster":"cluster-1","reason":"not camel"}`)))
	mustPublish(t, b, mustEvent(t, typeHostLost, "esx-1", json.RawMessage(`{"name":"esx-1","cluster":"cluster-1","reason":"NotResponding"}`)))

	waitFor(t, 5*time.Second, "two dead letters", func() bool { return len(streamMsgs(t, b, bus.StreamDLQ)) == 2 })
	waitFor(t, 5*time.Second, "the good event handled", func() bool { h, _ := hr.calls(); return len(h) == 1 })
	// Both bad events are settled (dead-lettered): the handler can no
	// longer see them, so its one call is final.
	handled, hooks := hr.calls()
	if handled[0] != "esx-1" || len(hooks) != 0 {
		t.Errorf("handled %v, hooks %v; want only esx-1 and no failure hook (undecodable input has no payload to fail)", handled, hooks)
	}
	var reasons []string
	for _, m := range streamMsgs(t, b, bus.StreamDLQ) {
		dl, err := bus.ReadDeadLetter(m.Header)
		if err != nil {
			t.Fatal(err)
		}
		reasons = append(reasons, dl.Reason)
	}
	all := strings.Join(reasons, "\n")
	if !strings.Contains(all, "colour") || !strings.Contains(all, "reason") {
		t.Errorf("dead-letter reasons %q should name the unknown field colour and the invalid field reason", all)
	}
}

func TestRouterFailureHookOnPermanentError(t *testing.T) {
	b := bustest.Start(t)
	hr := startHostRouter(t, b, bus.ConsumerConfig{}, func(uint64) error {
		return bus.Permanent(bus.WithReason("HostGone", errors.New("host esx-1 was removed")))
	}, nil)
	mustPublish(t, b, mustEvent(t, typeHostLost, "esx-1", &events.HostLost{Name: "esx-1", Cluster: "c1", Reason: "Removed"}))
	waitAcked(t, b, "scheduler-HOSTS", 1)
	handled, hooks := hr.calls()
	if len(handled) != 1 || len(hooks) != 1 || hooks[0] != (hookCall{host: "esx-1", reason: "HostGone", delivery: 1}) {
		t.Errorf("handled %v, hooks %+v; want one handling and one hook with reason HostGone on delivery 1", handled, hooks)
	}
	if n := len(streamMsgs(t, b, bus.StreamDLQ)); n != 0 {
		t.Errorf("%d dead letters; a refusal told by its failure event is the outcome, not a dead letter", n)
	}
}

func TestRouterFailureHookWhenDeliveriesRunOut(t *testing.T) {
	b := bustest.Start(t)
	cfg := bus.ConsumerConfig{MaxDeliver: 3, BackOff: []time.Duration{10 * time.Millisecond, 10 * time.Millisecond}}
	hr := startHostRouter(t, b, cfg, func(d uint64) error {
		return bus.WithReason("VCenterDown", errors.New("vCenter not answering"))
	}, nil)
	mustPublish(t, b, mustEvent(t, typeHostLost, "esx-1", &events.HostLost{Name: "esx-1", Cluster: "c1", Reason: "Removed"}))
	waitFor(t, 10*time.Second, "dead letter", func() bool { return len(streamMsgs(t, b, bus.StreamDLQ)) == 1 })
	handled, hooks := hr.calls()
	if len(handled) != 3 || len(hooks) != 1 || hooks[0] != (hookCall{host: "esx-1", reason: "VCenterDown", delivery: 3}) {
		t.Errorf("handled %v, hooks %+v; want three deliveries and one hook, on the third, with reason VCenterDown", handled, hooks)
	}
}

// A failure hook that cannot publish turns the give-up into a retry, so the
// failure event is not lost.
func TestRouterRetriesWhenTheFailureHookFails(t *testing.T) {
	b := bustest.Start(t)
	cfg := bus.ConsumerConfig{MaxDeliver: 5, BackOff: []time.Duration{10 * time.Millisecond}}
	hr := startHostRouter(t, b, cfg, func(uint64) error {
		return bus.Permanent(errors.New("bad"))
	}, func(n int) error {
		if n == 1 {
			return errors.New("nats: timeout")
		}
		return nil
	})
	mustPublish(t, b, mustEvent(t, typeHostLost, "esx-1", &events.HostLost{Name: "esx-1", Cluster: "c1", Reason: "Removed"}))
	waitAcked(t, b, "scheduler-HOSTS", 1)
	handled, hooks := hr.calls()
	if len(handled) != 2 || len(hooks) != 2 || hooks[1].delivery != 2 {
		t.Errorf("handled %v, hooks %+v; want the handler and hook run again on delivery 2", handled, hooks)
	}
}

func TestErrorCodes(t *testing.T) {
	base := errors.New("boom")
	tests := []struct {
		name      string
		err       error
		code      bus.Code
		delay     time.Duration
		hasDelay  bool
		reason    string
		permanent bool
	}{
		{"plain", base, bus.CodeRetry, 0, false, "Def", false},
		{"permanent", bus.Permanent(base), bus.CodePermanent, 0, false, "Def", true},
		{"wrapped permanent", fmtWrap(bus.Permanent(base)), bus.CodePermanent, 0, false, "Def", true},
		{"retry after", bus.RetryAfter(base, time.Second), bus.CodeRetryAfter, time.Second, true, "Def", false},
		{"in progress", bus.InProgress(base, 2*time.Second), bus.CodeInProgress, 2 * time.Second, true, "Def", false},
		{"reason", bus.Permanent(bus.WithReason("ImageNotFound", base)), bus.CodePermanent, 0, false, "ImageNotFound", true},
		{"reason outside", bus.WithReason("Busy", bus.RetryAfter(base, time.Second)), bus.CodeRetryAfter, time.Second, true, "Busy", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := bus.CodeOf(tt.err); got != tt.code {
				t.Errorf("CodeOf = %s, want %s", got, tt.code)
			}
			d, ok := bus.RetryDelay(tt.err)
			if d != tt.delay || ok != tt.hasDelay {
				t.Errorf("RetryDelay = %s %v, want %s %v", d, ok, tt.delay, tt.hasDelay)
			}
			if got := bus.ReasonOf(tt.err, "Def"); got != tt.reason {
				t.Errorf("ReasonOf = %q, want %q", got, tt.reason)
			}
			if bus.IsPermanent(tt.err) != tt.permanent {
				t.Errorf("IsPermanent = %v", !tt.permanent)
			}
			if !errors.Is(tt.err, base) {
				t.Error("the cause is not unwrapped")
			}
		})
	}
	if bus.Permanent(nil) != nil || bus.RetryAfter(nil, 1) != nil || bus.InProgress(nil, 1) != nil || bus.WithReason("X", nil) != nil {
		t.Error("a nil error must stay nil")
	}
}

func fmtWrap(err error) error { return errors.Join(errors.New("context"), err) }

func TestEmit(t *testing.T) {
	b := bustest.Start(t)
	ctx := testContext(t)
	em := b.Emitter("podvisor/netconfig")
	cause := mustEvent(t, typeHostLost, "esx-1", &events.HostLost{Name: "esx-1", Cluster: "c1", Reason: "Removed"})
	p := &events.HostCordoned{Name: "esx-1", Reason: "Drain"}
	for range 2 { // the replay of a handler publishes the same id
		if err := em.Emit(ctx, &cause, p); err != nil {
			t.Fatal(err)
		}
	}
	if err := em.Emit(ctx, &cause, p, bus.Distinct("second")); err != nil {
		t.Fatal(err)
	}
	if err := em.Emit(ctx, nil, p); err != nil {
		t.Fatal(err)
	}
	msgs := streamMsgs(t, b, events.StreamHosts)
	var cordoned []string
	for _, m := range msgs {
		if m.Subject != events.SubjectHostCordoned {
			continue
		}
		if got := m.Header.Get("ce-subject"); got != "esx-1" {
			t.Errorf("ce-subject = %q, want the payload's object key esx-1", got)
		}
		if got := m.Header.Get("ce-source"); got != "podvisor/netconfig" {
			t.Errorf("ce-source = %q", got)
		}
		cordoned = append(cordoned, m.Header.Get("ce-id"))
	}
	if len(cordoned) != 3 || cordoned[0] == cordoned[1] || cordoned[1] == cordoned[2] {
		t.Errorf("stored cordon ids %v; want three distinct (replay de-duplicated, Distinct and a new flow kept)", cordoned)
	}
	err := em.Emit(ctx, &cause, &events.HostCordoned{Name: "esx-1", Reason: "not camel"})
	if !bus.IsPermanent(err) || !strings.Contains(err.Error(), "reason") {
		t.Errorf("invalid payload: %v, want a Permanent error naming the field", err)
	}
}

// waitAcked waits until the durable has acknowledged (or terminated) the
// stream's messages up to seq: the consumer is done with them.
func waitAcked(t *testing.T, b *bus.Bus, durable string, seq uint64) {
	t.Helper()
	waitFor(t, 10*time.Second, durable+" done with sequence "+fmt.Sprint(seq), func() bool {
		c, err := b.JetStream().Consumer(testContext(t), events.StreamHosts, durable)
		if err != nil {
			return false
		}
		info, err := c.Info(testContext(t))
		return err == nil && info.AckFloor.Stream >= seq && info.NumAckPending == 0
	})
}

func TestKeyLocks(t *testing.T) {
	var k bus.KeyLocks
	unlockA := k.RLock("a")
	unlockA2 := k.RLock("a") // shared holders run together
	unlockB := k.Lock("b")   // another key is independent
	got := make(chan struct{})
	go func() {
		defer k.Lock("a")()
		close(got)
	}()
	select {
	case <-got:
		t.Fatal("Lock(a) taken while shared holders run")
	default:
	}
	unlockA()
	unlockA2()
	unlockB()
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("Lock(a) not taken after the shared holders left")
	}
	// Nobody holds or waits for a key any more: no entry is kept (one per
	// pod ever seen would grow without bound).
	deadline := time.Now().Add(5 * time.Second)
	for bus.KeyLocksHeld(&k) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d key entries kept after every holder left, want 0", bus.KeyLocksHeld(&k))
		}
		time.Sleep(time.Millisecond)
	}
}

// A hook that has nothing to tell about the error (ErrNoFailureEvent)
// leaves the message to the error: a Permanent one is dead-lettered, not
// acked as a refusal told.
func TestRouterFailureHookWithNothingToTell(t *testing.T) {
	b := bustest.Start(t)
	hr := startHostRouter(t, b, bus.ConsumerConfig{}, func(uint64) error {
		return bus.Permanent(errors.New("record store refused the write"))
	}, func(int) error { return bus.ErrNoFailureEvent })
	mustPublish(t, b, mustEvent(t, typeHostLost, "esx-1", &events.HostLost{Name: "esx-1", Cluster: "c1", Reason: "Removed"}))
	waitFor(t, 5*time.Second, "dead letter", func() bool { return len(streamMsgs(t, b, bus.StreamDLQ)) == 1 })
	if handled, hooks := hr.calls(); len(handled) != 1 || len(hooks) != 1 {
		t.Errorf("handled %v, hooks %+v; want one handling and one hook", handled, hooks)
	}
}

// OnInvalid answers an undecodable event before it is dead-lettered; a
// failing answer is retried with the message.
func TestRouterOnInvalid(t *testing.T) {
	b := bustest.Start(t)
	var mu sync.Mutex
	var answered []string
	r := bus.NewRouter("scheduler", nil)
	bus.Handle(r, func(context.Context, *bus.Message, *events.HostLost) error { return nil }).
		OnInvalid(func(_ context.Context, m *bus.Message, err error) error {
			mu.Lock()
			defer mu.Unlock()
			answered = append(answered, fmt.Sprintf("%d:%v", m.Delivery, err))
			if len(answered) == 1 {
				return errors.New("nats: timeout")
			}
			return nil
		})
	cfg := r.Consumers(bus.ConsumerConfig{MaxDeliver: 3, BackOff: []time.Duration{10 * time.Millisecond}}, nil)[0]
	startConsume(t, b, cfg, r.Handler())
	mustPublish(t, b, mustEvent(t, typeHostLost, "esx-2", json.RawMessage(`{"name":"esx-2","cluster":"cluster-1","reason":"NotResponding","colour":"red"}`)))
	waitFor(t, 5*time.Second, "dead letter", func() bool { return len(streamMsgs(t, b, bus.StreamDLQ)) == 1 })
	mu.Lock()
	defer mu.Unlock()
	if len(answered) != 2 || !strings.HasPrefix(answered[1], "2:") || !strings.Contains(answered[1], "colour") {
		t.Errorf("answers %q; want two (the first failed), the second on delivery 2 naming the field colour", answered)
	}
}

func TestRetry(t *testing.T) {
	ctx := context.Background()
	transient := errors.New("vCenter not answering")
	tests := []struct {
		name     string
		fail     func(n int) error
		attempts int
		wantRuns int
		wantErr  string
		wantCode bus.Code
	}{
		{"succeeds at once", func(int) error { return nil }, 3, 1, "", bus.CodeRetry},
		{"outlives a failure", func(n int) error {
			if n == 1 {
				return transient
			}
			return nil
		}, 3, 2, "", bus.CodeRetry},
		{"runs out", func(int) error { return bus.WithReason("VCenterDown", transient) }, 3, 3, "gave up after 3 attempts: vCenter not answering", bus.CodeRetry},
		{"permanent stops", func(int) error { return bus.Permanent(errors.New("no such host")) }, 3, 1, "no such host", bus.CodePermanent},
		{"asked delay", func(n int) error {
			if n == 1 {
				return bus.RetryAfter(transient, time.Millisecond)
			}
			return nil
		}, 2, 2, "", bus.CodeRetry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runs := 0
			err := bus.Retry(ctx, tt.attempts, []time.Duration{time.Millisecond}, func(context.Context) error {
				runs++
				return tt.fail(runs)
			})
			got := ""
			if err != nil {
				got = err.Error()
			}
			if runs != tt.wantRuns || got != tt.wantErr || bus.CodeOf(err) != tt.wantCode {
				t.Errorf("runs %d, err %q (%s); want %d, %q (%s)", runs, got, bus.CodeOf(err), tt.wantRuns, tt.wantErr, tt.wantCode)
			}
		})
	}
	if err := bus.Retry(ctx, 3, nil, func(context.Context) error { return bus.WithReason("VCenterDown", transient) }); bus.ReasonOf(err, "") != "VCenterDown" {
		t.Errorf("reason after running out = %q, want VCenterDown", bus.ReasonOf(err, ""))
	}
}

// An event whose subject is not its payload's object key is malformed: the
// handler never sees it, it is dead-lettered with a reason naming both,
// and the invalid hook does not answer for either object.
func TestRouterDeadLettersSubjectMismatch(t *testing.T) {
	b := bustest.Start(t)
	var mu sync.Mutex
	var answered []string
	hr := &hostRouter{}
	r := bus.NewRouter("scheduler", nil)
	bus.Handle(r, func(_ context.Context, _ *bus.Message, p *events.HostLost) error {
		hr.mu.Lock()
		defer hr.mu.Unlock()
		hr.handled = append(hr.handled, p.Name)
		return nil
	}).OnInvalid(func(_ context.Context, _ *bus.Message, err error) error {
		mu.Lock()
		defer mu.Unlock()
		answered = append(answered, err.Error())
		return nil
	})
	startConsume(t, b, r.Consumers(bus.ConsumerConfig{}, nil)[0], r.Handler())
	mustPublish(t, b, mustEvent(t, typeHostLost, "esx-9", json.RawMessage(`{"name":"esx-2","cluster":"cluster-1","reason":"NotResponding"}`)))
	mustPublish(t, b, mustEvent(t, typeHostLost, "esx-1", json.RawMessage(`{"name":"esx-1","cluster":"cluster-1","reason":"NotResponding"}`)))

	waitFor(t, 5*time.Second, "a dead letter", func() bool { return len(streamMsgs(t, b, bus.StreamDLQ)) == 1 })
	waitFor(t, 5*time.Second, "the matching event handled", func() bool { h, _ := hr.calls(); return len(h) == 1 })
	if handled, _ := hr.calls(); handled[0] != "esx-1" {
		t.Errorf("handled %v, want only esx-1", handled)
	}
	dl, err := bus.ReadDeadLetter(streamMsgs(t, b, bus.StreamDLQ)[0].Header)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(dl.Reason, `"esx-9"`) || !strings.Contains(dl.Reason, `"esx-2"`) {
		t.Errorf("dead-letter reason %q should name the subject esx-9 and the payload's key esx-2", dl.Reason)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(answered) != 0 {
		t.Errorf("invalid hook answered %q for a subject mismatch", answered)
	}
}
