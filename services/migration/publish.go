package migration

import (
	"context"
	"fmt"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// publishRetry is how a publish from a runner or a drain, which has no
// consumer redelivery behind it, is retried: NATS may be reconnecting.
var publishRetry = []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 600 * time.Millisecond, 800 * time.Millisecond}

// publishFor publishes an event about a migration. With a cause it is the
// cause's effect. Without one (events from the runner, which acts on the
// record rather than on one event) the migration itself stands in as the
// cause and what tells its effects apart, so a runner resumed after a
// restart republishes the same ids and JetStream keeps one copy. Either way
// the event carries the request's traceparent, so the whole migration is
// one trace.
func (s *Service) publishFor(ctx context.Context, cause *event.Event, r *events.MigrationRecord, what string, data events.Payload) error {
	if cause != nil {
		return s.emit(ctx, cause, data)
	}
	return s.emit(ctx, standIn("migration/"+r.ID, r.TraceParent), data, bus.Distinct(what))
}

// standIn is the cause of what a runner or a drain publishes on its own:
// an id naming the work, and the flow it continues.
func standIn(id, traceparent string) *event.Event {
	ev := event.New()
	ev.SetID(id)
	if traceparent != "" {
		ev.SetExtension(bus.ExtTraceparent, traceparent)
	}
	return &ev
}

// emit publishes p, retrying briefly (publishRetry).
func (s *Service) emit(ctx context.Context, cause *event.Event, p events.Payload, opts ...bus.EmitOption) error {
	return bus.Retry(ctx, len(publishRetry)+1, publishRetry, func(ctx context.Context) error {
		return s.out.Emit(ctx, cause, p, opts...)
	})
}

// progress publishes migration.progress.
func (s *Service) progress(ctx context.Context, r *events.MigrationRecord, phase string, percent, position int, msg string) error {
	what := fmt.Sprintf("%s-%d", phase, percent)
	if phase == events.PhaseQueued {
		what = fmt.Sprintf("%s-at-%d", phase, position)
	}
	return s.publishFor(ctx, nil, r, what, &events.MigrationProgress{
		MigrationRef: events.MigrationRef{ID: r.ID, Namespace: r.Namespace, Pod: r.Pod}, Phase: phase, Percent: percent, QueuePosition: position, Message: msg,
	})
}

// traceParent is the flow's traceparent carried by an event, if any.
func traceParent(ev event.Event) string {
	if v, ok := ev.Extensions()[bus.ExtTraceparent]; ok {
		if s, ok := v.(string); ok {
			return s
		}
	}
	return ""
}
