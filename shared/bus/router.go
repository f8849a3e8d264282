package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/podvisor/podvisor/events"
)

// Router dispatches a service's events to typed handlers, one per event
// type, in the manner of watermill's router. What every handler needs done
// around it is done here once:
//
//   - decoding and validation (events.Decode), and the check that the
//     event's subject is its payload's ObjectKey; an event that fails any
//     is Permanent, so it is dead-lettered with the field and the reason;
//   - span attributes (podvisor.service, pv.object) on the consumer span;
//   - a logger scoped with the service, the type, the key and the delivery
//     (Message.Log);
//   - the failure hook: when a handler gives up (its error is Permanent, or
//     this was the last delivery), the route's OnFailure publishes the
//     domain's failure event, so that no handler can forget to tell the pod
//     (or migration) why. A Permanent refusal so told is acked: it is the
//     event's outcome. Deliveries that ran out are dead-lettered after the
//     hook, since a later replay may succeed.
//
// Register routes before Run; a Router is not safe for registration while
// running.
type Router struct {
	service string
	log     *slog.Logger
	routes  map[string]*routeEntry // by CloudEvent type
}

type routeEntry struct {
	kind    events.Kind
	run     func(ctx context.Context, m *Message, v any) error
	invalid func(ctx context.Context, m *Message, err error) error
}

// ErrSubjectMismatch is why a typed handler refuses an event whose
// CloudEvent subject is not its payload's ObjectKey.
var ErrSubjectMismatch = errors.New("subject does not match the payload")

// NewRouter returns an empty router for service (its consumers are
// <service>-<stream>, its dead letters pv.dlq.<service>).
func NewRouter(service string, log *slog.Logger) *Router {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Router{service: service, log: log, routes: map[string]*routeEntry{}}
}

// Route is one registered handler; its methods add per-route behaviour.
type Route[T any] struct {
	mu    sync.Mutex
	fail  func(ctx context.Context, m *Message, p *T, err error) error
	entry *routeEntry
}

// ErrNoFailureEvent is what a failure hook returns when the handler's
// error is not one its domain tells about (podvisor's own trouble, such as
// a record store that did not answer, rather than the object's): the
// message is then settled by the handler's error alone, as without a hook.
var ErrNoFailureEvent = errors.New("bus: no failure event for this error")

// OnInvalid sets the hook that answers an event of this route whose data
// failed decoding or validation (there is no payload, so OnFailure cannot):
// a request whose client waits for an answer is rejected to it. The event
// is dead-lettered with the reason all the same, once the hook succeeded;
// a hook that fails is retried with the message.
func (r *Route[T]) OnInvalid(hook func(ctx context.Context, m *Message, err error) error) *Route[T] {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entry.invalid = hook
	return r
}

// OnFailure sets the hook that publishes the domain's failure event when the
// handler gives up: its error is Permanent (the message is then acked once
// the hook succeeded), or this delivery was the last (dead-lettered).
// err is the handler's error; bus.ReasonOf(err, def) gives its reason.
// If the hook fails before the last delivery, the message is retried
// (handler and hook run again: both are idempotent); on the last delivery
// the failure is logged and the message dead-lettered regardless.
func (r *Route[T]) OnFailure(hook func(ctx context.Context, m *Message, p *T, err error) error) *Route[T] {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail = hook
	return r
}

func (r *Route[T]) hook() func(ctx context.Context, m *Message, p *T, err error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fail
}

// Handle registers h for the events whose payload is T (the catalog
// decides the type, subject and stream). It panics when T is not a catalog
// payload or already has a handler: both are mistakes of the program, found
// at start.
//
//	bus.Handle(r, s.onScheduled).OnFailure(s.attachFailed)
//	func (s *Service) onScheduled(ctx context.Context, m *bus.Message, p *events.PodScheduled) error
func Handle[T any, P interface {
	*T
	events.Payload
}](r *Router, h func(ctx context.Context, m *Message, p *T) error) *Route[T] {
	k, ok := events.KindOf(P(new(T)))
	if !ok {
		panic(fmt.Sprintf("bus: Handle: %T is not a payload of the event catalog", new(T)))
	}
	if _, dup := r.routes[k.Type]; dup {
		panic("bus: Handle: a second handler for " + k.Type)
	}
	rt := &Route[T]{}
	rt.entry = &routeEntry{kind: k, run: func(ctx context.Context, m *Message, v any) error {
		p, ok := v.(*T)
		if !ok {
			return Permanent(fmt.Errorf("event %s carries %T, not %T", m.Event.Type(), v, p))
		}
		err := h(ctx, m, p)
		if err == nil {
			return nil
		}
		hook := rt.hook()
		if hook == nil || (!IsPermanent(err) && !m.LastDelivery()) {
			return err
		}
		if ferr := hook(ctx, m, p, err); ferr != nil {
			if errors.Is(ferr, ErrNoFailureEvent) {
				return err
			}
			if m.LastDelivery() {
				m.Log.Error("failure event not published; giving up anyway", "err", err, "hook_err", ferr)
				return err
			}
			// Neither error's code applies now: retried, so that the
			// failure is told.
			return fmt.Errorf("publish the failure event: %v (after: %v)", ferr, err)
		}
		if IsPermanent(err) {
			// A refusal told to its owner is the event's outcome: the
			// dead-letter stream keeps what nobody could handle.
			m.Log.Info("handler refused; failure event published", "err", err)
			return nil
		}
		return err
	}}
	r.routes[k.Type] = rt.entry
	return rt
}

// Types lists the registered CloudEvent types, sorted.
func (r *Router) Types() []string {
	out := make([]string, 0, len(r.routes))
	for t := range r.routes {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// Consumers returns one consumer configuration per stream the routes read,
// filled from base (Workers, AckWait, …) with Service, Stream and Subjects
// set. tune, if not nil, adjusts each one (a stream that wants more
// workers).
func (r *Router) Consumers(base ConsumerConfig, tune func(*ConsumerConfig)) []ConsumerConfig {
	byStream := map[string][]string{}
	for _, e := range r.routes {
		byStream[e.kind.Stream] = append(byStream[e.kind.Stream], e.kind.SubjectFilter())
	}
	streams := make([]string, 0, len(byStream))
	for s := range byStream {
		streams = append(streams, s)
	}
	sort.Strings(streams)
	out := make([]ConsumerConfig, 0, len(streams))
	for _, s := range streams {
		c := base
		c.Service = r.service
		c.Stream = s
		c.Subjects = slices.Compact(slices.Sorted(slices.Values(byStream[s])))
		if c.Logger == nil {
			c.Logger = r.log
		}
		if tune != nil {
			tune(&c)
		}
		out = append(out, c)
	}
	return out
}

// Run consumes every stream the routes read (see Consumers) until ctx ends,
// and returns the first consumer's failure or nil.
func (r *Router) Run(ctx context.Context, b *Bus, base ConsumerConfig, tune func(*ConsumerConfig)) error {
	cfgs := r.Consumers(base, tune)
	if len(cfgs) == 0 {
		return errors.New("bus: router " + r.service + ": no handlers registered")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(cfgs))
	for _, c := range cfgs {
		go func() {
			err := b.Consume(ctx, c, r.Handler())
			if err != nil {
				cancel()
			}
			errs <- err
		}()
	}
	var first error
	for range cfgs {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Handler is the router as a plain Handler, for Consume.
func (r *Router) Handler() Handler { return r.dispatch }

func (r *Router) dispatch(ctx context.Context, m *Message) error {
	ceType := m.Event.Type()
	base := m.Log // the consumer's, naming the durable and stream
	if base == nil {
		base = r.log
	}
	m.Log = base.With("ce_type", ceType, "key", m.Key, "delivery", m.Delivery)
	e, ok := r.routes[ceType]
	if !ok {
		return Permanent(fmt.Errorf("%s has no handler for %s (its consumer should not receive it)", r.service, ceType))
	}
	v, err := events.Decode(ceType, m.Event.Data())
	if err != nil {
		if e.invalid != nil {
			if herr := e.invalid(ctx, m, err); herr != nil {
				return fmt.Errorf("answer the invalid event: %v (invalid: %v)", herr, err)
			}
			m.Log.Info("invalid event answered", "err", err)
		}
		return Permanent(err)
	}
	attrs := []attribute.KeyValue{attribute.String("podvisor.service", r.service)}
	if p, ok := v.(events.Payload); ok {
		// The subject is the work-queue key and what the event is said
		// to be about: one that disagrees with the payload would have a
		// handler act on another object than the one ordered and keyed.
		// Malformed, and dead-lettered without the invalid hook (which
		// would answer for one of the two objects on the other's word).
		key := p.ObjectKey()
		if subject := m.Event.Subject(); subject != key {
			return Permanent(fmt.Errorf("decode %s: %w: subject %q is not the payload's object key %q", ceType, ErrSubjectMismatch, subject, key))
		}
		attrs = append(attrs, attribute.String("pv.object", key))
	}
	trace.SpanFromContext(ctx).SetAttributes(attrs...)
	return e.run(ctx, m, v)
}
