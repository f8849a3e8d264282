package bus

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Metric names follow podvisor's one scheme, podvisor_<component>_<what>_<unit>
// (docs/metrics.md lists every metric). The consumer's are recorded per
// service, durable consumer and CloudEvent type (attributes service,
// consumer, ce_type), so one scrape of a process that runs every service
// (`podvisor up`) shows each service's handlers apart.
const (
	MetricDeliveries     = "podvisor_bus_deliveries_total"
	MetricRedeliveries   = "podvisor_bus_redeliveries_total"
	MetricAcks           = "podvisor_bus_acks_total"
	MetricNaks           = "podvisor_bus_naks_total"
	MetricTerms          = "podvisor_bus_terms_total"
	MetricDeadLetters    = "podvisor_bus_dead_letters_total"
	MetricHandlerLatency = "podvisor_bus_handler_duration_seconds"
	MetricPending        = "podvisor_bus_consumer_pending_messages"
)

// handlerBuckets suit handlers that take from a few hundred microseconds
// (a KV write) to tens of seconds (a vSphere task); OTel's default buckets
// assume milliseconds.
var handlerBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// busInstruments are made for each Consume call from the global meter
// provider of that moment (telemetry.Setup installs it before services
// start); the SDK hands back the same instruments for the same names.
type busInstruments struct {
	deliveries, redeliveries, acks, naks, terms, deadLetters metric.Int64Counter
	latency                                                  metric.Float64Histogram
	pending                                                  metric.Int64ObservableGauge
	meter                                                    metric.Meter
}

func loadInstruments() *busInstruments {
	m := otel.GetMeterProvider().Meter("github.com/podvisor/podvisor/shared/bus")
	counter := func(name, desc string) metric.Int64Counter {
		c, _ := m.Int64Counter(name, metric.WithUnit("{message}"), metric.WithDescription(desc))
		return c
	}
	in := &busInstruments{meter: m}
	in.deliveries = counter(MetricDeliveries, "Messages delivered to a consumer (redeliveries included).")
	in.redeliveries = counter(MetricRedeliveries, "Deliveries after the first of the same message.")
	in.acks = counter(MetricAcks, "Messages acknowledged after their handler succeeded (or skipped as a later version).")
	in.naks = counter(MetricNaks, "Messages handed back for redelivery: handler failures, shutdown, a full queue.")
	in.terms = counter(MetricTerms, "Messages terminated (never redelivered), each after its dead letter was stored.")
	in.deadLetters = counter(MetricDeadLetters, "Messages copied to pv.dlq.<service> with their reason.")
	in.latency, _ = m.Float64Histogram(MetricHandlerLatency, metric.WithUnit("s"),
		metric.WithDescription("Time a handler ran for one delivery, by outcome."),
		metric.WithExplicitBucketBoundaries(handlerBuckets...))
	in.pending, _ = m.Int64ObservableGauge(MetricPending, metric.WithUnit("{message}"),
		metric.WithDescription("Messages of the stream the durable consumer has not yet been delivered (the backlog)."))
	return in
}

// consumerMetrics is the consume loop's observer: it only counts, so the
// loop's control flow does not depend on it.
type consumerMetrics struct {
	in               *busInstruments
	service, durable string
}

func newConsumerMetrics(service, durable string) *consumerMetrics {
	return &consumerMetrics{in: loadInstruments(), service: service, durable: durable}
}

func (cm *consumerMetrics) attrs(ceType string, extra ...attribute.KeyValue) metric.MeasurementOption {
	if ceType == "" {
		ceType = "unknown"
	}
	kv := append([]attribute.KeyValue{
		attribute.String("service", cm.service),
		attribute.String("consumer", cm.durable),
		attribute.String("ce_type", ceType),
	}, extra...)
	return metric.WithAttributes(kv...)
}

func (cm *consumerMetrics) delivered(ceType string, delivery uint64) {
	ctx := context.Background()
	cm.in.deliveries.Add(ctx, 1, cm.attrs(ceType))
	if delivery > 1 {
		cm.in.redeliveries.Add(ctx, 1, cm.attrs(ceType))
	}
}

func (cm *consumerMetrics) acked(ceType string) {
	cm.in.acks.Add(context.Background(), 1, cm.attrs(ceType))
}
func (cm *consumerMetrics) naked(ceType string) {
	cm.in.naks.Add(context.Background(), 1, cm.attrs(ceType))
}
func (cm *consumerMetrics) termed(ceType string) {
	cm.in.terms.Add(context.Background(), 1, cm.attrs(ceType))
}
func (cm *consumerMetrics) deadLettered(ceType string) {
	cm.in.deadLetters.Add(context.Background(), 1, cm.attrs(ceType))
}

func (cm *consumerMetrics) handled(ceType, outcome string, took time.Duration) {
	cm.in.latency.Record(context.Background(), took.Seconds(), cm.attrs(ceType, attribute.String("outcome", outcome)))
}

// observePending reports the consumer's backlog at each collection, asking
// the server (one request per scrape per consumer). The returned function
// unregisters the callback.
func (cm *consumerMetrics) observePending(cons jetstream.Consumer) func() {
	reg, err := cm.in.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		ictx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		info, err := cons.Info(ictx)
		if err != nil {
			return nil // a scrape during a reconnect simply lacks the figure
		}
		o.ObserveInt64(cm.in.pending, int64(info.NumPending), metric.WithAttributes(
			attribute.String("service", cm.service), attribute.String("consumer", cm.durable)))
		return nil
	}, cm.in.pending)
	if err != nil {
		return func() {}
	}
	return func() { _ = reg.Unregister() }
}
