package bus

import (
	"context"
	"fmt"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Publish sends ev to its stream in binary content mode and returns once
// JetStream has stored it (or recognised it as a duplicate of an id it has
// already stored within DuplicateWindow). The NATS subject comes from the
// event type; the Nats-Msg-Id header is the CloudEvent id.
//
// Tracing: the current span context goes into the NATS headers (the per-hop
// parent of the consumer's span), and an event that carries no traceparent
// extension yet gets one from the current span, which makes this publish the
// start of the flow.
func (b *Bus) Publish(ctx context.Context, ev event.Event) error {
	_, err := b.PublishSeq(ctx, ev)
	return err
}

// PublishSeq is Publish that also returns the event's stream sequence (the
// stored copy's, for a duplicate): what a test waits for a consumer to have
// acknowledged.
func (b *Bus) PublishSeq(ctx context.Context, ev event.Event) (uint64, error) {
	ev = ev.Clone()
	if err := ev.Validate(); err != nil {
		return 0, fmt.Errorf("bus: publish: invalid event: %w", err)
	}
	rt, err := routeOf(ev.Type())
	if err != nil {
		return 0, fmt.Errorf("bus: publish %s: %w", ev.ID(), err)
	}
	if rt.Subject, err = rt.subjectOf(&ev); err != nil {
		return 0, fmt.Errorf("bus: publish %s: %w", ev.ID(), err)
	}
	if !trace.SpanContextFromContext(ctx).IsValid() {
		// Published outside any handler (a retry loop, a background task):
		// continue the event's flow rather than start a trace of its own,
		// so that one pod's story stays one trace.
		if fc := flowContext(&ev); fc.IsValid() {
			ctx = trace.ContextWithRemoteSpanContext(ctx, fc)
		}
	}
	ctx, span := tracer().Start(ctx, "publish "+rt.Subject,
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(eventAttributes(&ev)...),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.operation.type", "send"),
			attribute.String("messaging.destination.name", rt.Subject),
			attribute.String("messaging.message.id", ev.ID()),
		))
	defer span.End()

	if !flowContext(&ev).IsValid() {
		setFlowContext(&ev, span.SpanContext())
	}
	msg, err := encodeBinary(ctx, &ev, rt.Subject)
	if err != nil {
		err = fmt.Errorf("bus: publish %s %s: encode: %w", ev.Type(), ev.ID(), err)
		span.SetStatus(codes.Error, err.Error())
		return 0, err
	}
	propagator().Inject(ctx, headerCarrier(msg.Header))
	if n := encodedSize(msg); n > MaxEventSize {
		err := fmt.Errorf("bus: publish %s %s: %w: %d bytes encoded, limit %d (keep large content in a KV bucket or datastore and reference it)",
			ev.Type(), ev.ID(), ErrTooLarge, n, MaxEventSize)
		span.SetStatus(codes.Error, err.Error())
		return 0, err
	}
	ack, err := b.js.PublishMsg(ctx, msg, jetstream.WithMsgID(ev.ID()))
	if err != nil {
		err = fmt.Errorf("bus: publish %s %s to %s: %w", ev.Type(), ev.ID(), rt.Subject, err)
		span.SetStatus(codes.Error, err.Error())
		return 0, err
	}
	span.SetAttributes(
		attribute.Int64("messaging.nats.stream.sequence", int64(ack.Sequence)),
		attribute.Bool("messaging.nats.duplicate", ack.Duplicate),
	)
	return ack.Sequence, nil
}

func eventAttributes(ev *event.Event) []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.String("ce.type", ev.Type()),
		attribute.String("ce.id", ev.ID()),
		attribute.String("ce.subject", ev.Subject()),
		attribute.String("ce.source", ev.Source()),
	}
}
