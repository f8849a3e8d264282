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

	meter metric.Meter
	svc   *Service
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
		metric.WithDescription("Unschedulable pods waiting for a retry."), metric.WithUnit("{pod}")); err != nil {
		return nil, fmt.Errorf("scheduler: pending gauge: %w", err)
	}
	out.meter, out.svc = m, s
	return out, nil
}

// observe reports the pending gauge while the service runs; the returned
// function unregisters it, so a stopped scheduler (in tests, or one of
// several in a process) no longer reports its stale count.
func (m *metrics) observe() (stop func(), err error) {
	reg, err := m.meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(m.pending, int64(m.svc.pending.len()))
		return nil
	}, m.pending)
	if err != nil {
		return nil, fmt.Errorf("scheduler: pending gauge: %w", err)
	}
	return func() { _ = reg.Unregister() }, nil
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
