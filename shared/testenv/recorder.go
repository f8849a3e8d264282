package testenv

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// Seen is one recorded event: the CloudEvent and its decoded payload (nil,
// with Err, when it does not decode).
type Seen struct {
	Event   event.Event
	Payload any
	Err     error
}

// Recorder keeps every event published on the streams' subjects in the
// order the bus carried it (core NATS sees what JetStream stores, duplicates included).
type Recorder struct {
	mu   sync.Mutex
	cond *sync.Cond
	seen []Seen
}

// recorded are the subjects the recorder listens on: every stream's
// (events) and the dead letters', not pv.query.>, where a listener that
// never answers would make a request wait its whole timeout (a scheduler
// asking a network-config that is not running is answered at once by "no
// responders", as in a deployment without it).
func recorded() []string {
	subjects := []string{bus.DLQSubjectPrefix + ">"}
	for _, s := range events.StreamSubjects() {
		subjects = append(subjects, s)
	}
	return subjects
}

// recorderBuffer is how many messages may wait for the recorder, as many as
// a NATS subscription holds by default.
const recorderBuffer = 1 << 16

func record(t testing.TB, b *bus.Bus) *Recorder {
	r := &Recorder{}
	r.cond = sync.NewCond(&r.mu)
	// One channel for every subject keeps the order the connection read
	// them in across streams.
	ch := make(chan *nats.Msg, recorderBuffer)
	for _, subject := range recorded() {
		sub, err := b.Conn().ChanSubscribe(subject, ch)
		if err != nil {
			t.Fatalf("subscribe %s: %v", subject, err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := b.Conn().Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case m := <-ch:
				r.add(m)
			case <-done:
				return
			}
		}
	}()
	t.Cleanup(func() { close(done) })
	return r
}

func (r *Recorder) add(m *nats.Msg) {
	ev, err := bus.DecodeMessage(m)
	if err != nil {
		return // dead letters and other traffic that is not an event
	}
	s := Seen{Event: ev}
	if _, known := events.Lookup(ev.Type()); known {
		s.Payload, s.Err = events.Decode(ev.Type(), ev.Data())
	}
	r.mu.Lock()
	r.seen = append(r.seen, s)
	r.cond.Broadcast()
	r.mu.Unlock()
}

// Seen returns what was recorded so far.
func (r *Recorder) Seen() []Seen {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Seen(nil), r.seen...)
}

// Count counts the recorded events of ceType.
func (r *Recorder) Count(ceType string) int {
	n := 0
	for _, s := range r.Seen() {
		if s.Event.Type() == ceType {
			n++
		}
	}
	return n
}

// CountAbout counts the recorded events of ceType whose subject is subject.
func (r *Recorder) CountAbout(ceType, subject string) int {
	n := 0
	for _, s := range r.Seen() {
		if s.Event.Type() == ceType && s.Event.Subject() == subject {
			n++
		}
	}
	return n
}

// Summary lists what was recorded, for a failure message.
func (r *Recorder) Summary() string {
	var b strings.Builder
	for _, s := range r.Seen() {
		fmt.Fprintf(&b, "\n  %s %s %s", s.Event.Type(), s.Event.Subject(), string(s.Event.Data()))
	}
	return b.String()
}

// typeOf is the CloudEvent type of payload T.
func typeOf[T any, P interface {
	*T
	events.Payload
}]() string {
	k, ok := events.KindOf(P(new(T)))
	if !ok {
		panic(fmt.Sprintf("testenv: %T is not a payload of the event catalog", new(T)))
	}
	return k.Type
}

// matching returns the recorded payloads of type T that satisfy pred (nil:
// all), failing the test on one that does not decode: a service published
// an invalid event.
func matching[T any, P interface {
	*T
	events.Payload
}](t testing.TB, seen []Seen, pred func(*T) bool) (out []*T, ids map[string]bool) {
	ceType := typeOf[T, P]()
	ids = map[string]bool{}
	for _, s := range seen {
		if s.Event.Type() != ceType {
			continue
		}
		if s.Err != nil {
			t.Errorf("%s published an invalid %s: %v", s.Event.Source(), ceType, s.Err)
			continue
		}
		if p := s.Payload.(*T); pred == nil || pred(p) {
			out = append(out, p)
			ids[s.Event.ID()] = true
		}
	}
	return out, ids
}

// All returns every recorded payload of type T that satisfies pred (nil:
// all), in order.
func All[T any, P interface {
	*T
	events.Payload
}](e *Env, pred func(*T) bool) []*T {
	out, _ := matching[T, P](e.T, e.Events.Seen(), pred)
	return out
}

// In returns the payloads of type T among seen (a snapshot of the
// recorder, or what WaitFor returned) that satisfy pred (nil: all), in
// order, failing t on one that does not decode.
func In[T any, P interface {
	*T
	events.Payload
}](t testing.TB, seen []Seen, pred func(*T) bool) []*T {
	t.Helper()
	out, _ := matching[T, P](t, seen, pred)
	return out
}

// First is the first payload of type T in seen that satisfies pred (nil
// accepts every one), or nil when there is none.
func First[T any, P interface {
	*T
	events.Payload
}](t testing.TB, seen []Seen, pred func(*T) bool) *T {
	t.Helper()
	if out := In[T, P](t, seen, pred); len(out) > 0 {
		return out[0]
	}
	return nil
}

// WaitFor waits up to d until pred holds for everything recorded so far,
// and returns what it held for.
func (e *Env) WaitFor(what string, d time.Duration, pred func([]Seen) bool) []Seen {
	e.T.Helper()
	var seen []Seen
	e.EventuallyWithin(what, d, func() bool { seen = e.Events.Seen(); return pred(seen) })
	return seen
}

// CountIDs counts the distinct event ids of type T satisfying pred:
// JetStream de-duplicates by id, so this is what a consumer sees.
func CountIDs[T any, P interface {
	*T
	events.Payload
}](e *Env, pred func(*T) bool) int {
	_, ids := matching[T, P](e.T, e.Events.Seen(), pred)
	return len(ids)
}

// Wait waits for an event of type T satisfying pred and returns its
// payload.
func Wait[T any, P interface {
	*T
	events.Payload
}](e *Env, pred func(*T) bool) *T {
	e.T.Helper()
	return WaitN[T, P](e, 1, pred)[0]
}

// WaitN waits for n events of type T satisfying pred. It sleeps on the
// recorder between looks, so a wait costs nothing and latencies measured
// with it are exact.
func WaitN[T any, P interface {
	*T
	events.Payload
}](e *Env, n int, pred func(*T) bool) []*T {
	e.T.Helper()
	r := e.Events
	timer := time.AfterFunc(Timeout, func() {
		r.mu.Lock()
		r.cond.Broadcast()
		r.mu.Unlock()
	})
	defer timer.Stop()
	deadline := time.Now().Add(Timeout)
	for {
		r.mu.Lock()
		seen := append([]Seen(nil), r.seen...)
		out, _ := matching[T, P](e.T, seen, pred)
		if len(out) >= n {
			r.mu.Unlock()
			return out
		}
		if time.Now().After(deadline) {
			r.mu.Unlock()
			e.T.Fatalf("timed out after %s waiting for %d %s (have %d); the bus carried:%s", Timeout, n, typeOf[T, P](), len(out), r.Summary())
		}
		r.cond.Wait()
		r.mu.Unlock()
	}
}

// Distinct returns the recorded events that decoded, each id once, in
// order: what a JetStream consumer sees after de-duplication.
func (r *Recorder) Distinct() []Seen {
	ids := map[string]bool{}
	var out []Seen
	for _, s := range r.Seen() {
		if !ids[s.Event.ID()] && s.Err == nil && s.Payload != nil {
			ids[s.Event.ID()] = true
			out = append(out, s)
		}
	}
	return out
}

// Distinct returns the payloads of type T that satisfy pred (nil: all),
// each event id once, in order.
func Distinct[T any, P interface {
	*T
	events.Payload
}](e *Env, pred func(*T) bool) []*T {
	var out []*T
	for _, s := range e.Events.Distinct() {
		if p, ok := s.Payload.(*T); ok && (pred == nil || pred(p)) {
			out = append(out, p)
		}
	}
	return out
}

// WaitSeen waits up to d for a recorded event (each id once) that
// satisfies pred, and returns the first.
func (e *Env) WaitSeen(d time.Duration, what string, pred func(Seen) bool) Seen {
	e.T.Helper()
	var found Seen
	e.EventuallyWithin(what, d, func() bool {
		for _, s := range e.Events.Distinct() {
			if pred(s) {
				found = s
				return true
			}
		}
		return false
	})
	return found
}

// Follow calls fn with every event recorded from now on that decoded, each
// id once, in order, on a goroutine of its own (so fn may publish and wait),
// until the test ends: how a test plays a service that is not under test.
func (e *Env) Follow(fn func(Seen)) {
	r := e.Events
	done := make(chan struct{})
	stopped := make(chan struct{})
	r.mu.Lock()
	next := len(r.seen)
	r.mu.Unlock()
	go func() {
		defer close(stopped)
		ids := map[string]bool{}
		for {
			r.mu.Lock()
			for next == len(r.seen) {
				select {
				case <-done:
					r.mu.Unlock()
					return
				default:
				}
				r.cond.Wait()
			}
			batch := append([]Seen(nil), r.seen[next:]...)
			next = len(r.seen)
			r.mu.Unlock()
			for _, s := range batch {
				if ids[s.Event.ID()] || s.Err != nil || s.Payload == nil {
					continue
				}
				ids[s.Event.ID()] = true
				fn(s)
			}
		}
	}()
	e.T.Cleanup(func() {
		close(done)
		r.mu.Lock()
		r.cond.Broadcast()
		r.mu.Unlock()
		<-stopped
	})
}
