package migration

import (
	"context"
	"fmt"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// publishAttempts bounds the retries of one publish from a runner, which
// has no consumer redelivery behind it.
const publishAttempts = 5

// publishFor publishes an event about a migration. With a cause it is the
// cause's effect (bus.Effect: id derived from the cause). Without one —
// events from the runner, which acts on the record rather than on one
// event — the id is derived from the migration ID and what, so a runner
// resumed after a restart republishes the same ids and JetStream keeps one
// copy. Either way the event carries the request's traceparent, so the
// whole migration is one trace.
func (s *Service) publishFor(ctx context.Context, cause *event.Event, r *events.MigrationRecord, what, ceType string, data any) error {
	var ev event.Event
	var err error
	subject := events.PodKey(r.Namespace, r.Pod)
	if cause != nil {
		ev, err = bus.Effect(*cause, Source, ceType, subject, data)
	} else {
		ev, err = bus.NewEvent(Source, ceType, subject, data)
		if err == nil {
			ev.SetID(fmt.Sprintf("migration/%s/%s/%s", r.ID, what, ceType))
			if r.TraceParent != "" {
				ev.SetExtension(bus.ExtTraceparent, r.TraceParent)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("build %s for migration %s: %w", ceType, r.ID, err)
	}
	return s.publish(ctx, ev)
}

// publish sends an event, retrying briefly: NATS may be reconnecting.
func (s *Service) publish(ctx context.Context, ev event.Event) error {
	var err error
	for i := range publishAttempts {
		if err = s.bus.Publish(ctx, ev); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(i+1) * 200 * time.Millisecond):
		}
	}
	return fmt.Errorf("publish %s %s: %w", ev.Type(), ev.Subject(), err)
}

// progress publishes migration.progress.
func (s *Service) progress(ctx context.Context, r *events.MigrationRecord, phase string, percent, position int, msg string) error {
	what := fmt.Sprintf("%s-%d", phase, percent)
	if phase == events.PhaseQueued {
		what = fmt.Sprintf("%s-at-%d", phase, position)
	}
	return s.publishFor(ctx, nil, r, what, events.TypeMigrationProgress, &events.MigrationProgress{
		ID: r.ID, Namespace: r.Namespace, Pod: r.Pod, Phase: phase, Percent: percent, QueuePosition: position, Message: msg,
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
