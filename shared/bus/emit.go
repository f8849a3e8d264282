package bus

import (
	"context"
	"fmt"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/podvisor/podvisor/events"
)

// Emitter is a service's one publish path. It knows the service's source
// (podvisor/<service>); the payload says the rest: its catalog entry gives
// the type and subject, its ObjectKey the CloudEvent subject attribute.
type Emitter struct {
	bus    *Bus
	source string
}

// Emitter returns the publish path of the producer source
// (podvisor/<service>, or a client's name).
func (b *Bus) Emitter(source string) *Emitter { return &Emitter{bus: b, source: source} }

// Source is the CloudEvent source of what the emitter publishes.
func (e *Emitter) Source() string { return e.source }

// EmitOption adjusts one Emit.
type EmitOption func(*emitOptions)

type emitOptions struct {
	disc    string
	subject string
	flow    string
}

// Flow sets the flow's start (the CloudEvents traceparent extension) when
// it is not the cause's: an eviction caused by a host's loss continues the
// evicted pod's trace.
func Flow(traceparent string) EmitOption { return func(o *emitOptions) { o.flow = traceparent } }

// Distinct tells apart the several events of one type and subject that one
// cause has (a network.host.ready per host): disc joins the effect id, so
// each is kept and each is still de-duplicated on a replay.
func Distinct(disc string) EmitOption { return func(o *emitOptions) { o.disc = disc } }

// About sets the CloudEvent subject attribute when it is not the payload's
// ObjectKey.
func About(subject string) EmitOption { return func(o *emitOptions) { o.subject = subject } }

// Emit validates payload and publishes it. With a cause, the event is the
// cause's effect: its id derives from the cause's id, the producer, the
// type, the subject and any Distinct, so a handler that runs again for the
// same cause republishes the same id and JetStream keeps one copy; the
// cause's trace context is carried over. Without a cause (nil) the event
// starts a flow and gets a random id.
//
// A payload that fails its own validation is a mistake of the program, not
// of the moment: the error is Permanent. A publish that fails is retryable.
func (e *Emitter) Emit(ctx context.Context, cause *event.Event, payload events.Payload, opts ...EmitOption) error {
	var o emitOptions
	for _, opt := range opts {
		opt(&o)
	}
	k, ok := events.KindOf(payload)
	if !ok {
		return Permanent(fmt.Errorf("bus: emit: %T is not a payload of the event catalog", payload))
	}
	if err := payload.Validate(); err != nil {
		return Permanent(fmt.Errorf("bus: emit %s: %w", k.Type, err))
	}
	subject := o.subject
	if subject == "" {
		subject = payload.ObjectKey()
	}
	var ev event.Event
	var err error
	if cause == nil {
		ev, err = NewEvent(e.source, k.Type, subject, payload)
	} else {
		ev, err = effect(*cause, e.source, k.Type, subject, o.disc, payload)
	}
	if err != nil {
		return Permanent(err)
	}
	if o.flow != "" {
		ev.SetExtension(ExtTraceparent, o.flow)
	}
	if err := e.bus.Publish(ctx, ev); err != nil {
		return fmt.Errorf("publish %s for %s: %w", k.Type, subject, err)
	}
	return nil
}
