package scheduler

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// metrics are the scheduler's instruments, on the global meter provider
// (shared/telemetry exports them on /metrics).
type metrics struct {
	placements metric.Int64Counter
	passPods   metric.Int64Histogram
	pending    metric.Int64ObservableGauge
}

func newMetrics(s *Service) (*metrics, error) {
	m := otel.GetMeterProvider().Meter(Source)
	var err error
	out := &metrics{}
	if out.placements, err = m.Int64Counter("podvisor_scheduler_placements_total",
		metric.WithDescription("Placement outcomes: scheduled, unschedulable, already (a replay or another scheduler's placement), error."),
		metric.WithUnit("{pod}")); err != nil {
		return nil, fmt.Errorf("scheduler: placements counter: %w", err)
	}
	if out.passPods, err = m.Int64Histogram("podvisor_scheduler_pass_pods",
		metric.WithDescription("Pods placed per scheduling pass (the batch size actually reached)."),
		metric.WithUnit("{pod}"), metric.WithExplicitBucketBoundaries(1, 4, 16, 64, 128, 256, 512)); err != nil {
		return nil, fmt.Errorf("scheduler: pass histogram: %w", err)
	}
	if out.pending, err = m.Int64ObservableGauge("podvisor_scheduler_pending_pods",
		metric.WithDescription("Unschedulable pods waiting for a retry."), metric.WithUnit("{pod}"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(int64(s.pending.len()))
			return nil
		})); err != nil {
		return nil, fmt.Errorf("scheduler: pending gauge: %w", err)
	}
	return out, nil
}

func (m *metrics) outcome(ctx context.Context, o outcome) {
	kind := "scheduled"
	switch {
	case o.err != nil:
		kind = "error"
	case o.fit != nil:
		kind = "unschedulable"
	case o.already:
		kind = "already"
	}
	m.placements.Add(ctx, 1, metric.WithAttributes(attribute.String("outcome", kind)))
}
