package scheduler_test

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// The placement counter and the pending gauge tell an operator what the
// scheduler is doing without reading logs.
func TestMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	prev := otel.GetMeterProvider()
	otel.SetMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)))
	t.Cleanup(func() { otel.SetMeterProvider(prev) })

	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 2})
	e.waitScheduled(e.accept(testPod("small", "1", "1Gi")).ObjectKey())
	e.waitUnschedulable(e.accept(testPod("huge", "1", "8Ti")).ObjectKey())

	// The pod joins the pending set right after its pod.unschedulable is
	// published: collect until the gauge has seen it (or the wait ends).
	var got map[string]int64
	pending := int64(-1)
	collect := func() {
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		got, pending = map[string]int64{}, -1
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				switch d := m.Data.(type) {
				case metricdata.Sum[int64]:
					if m.Name == "podvisor_scheduler_placements_total" {
						for _, dp := range d.DataPoints {
							v, _ := dp.Attributes.Value(attribute.Key("outcome"))
							got[v.AsString()] += dp.Value
						}
					}
				case metricdata.Gauge[int64]:
					if m.Name == "podvisor_scheduler_pending_pods" && len(d.DataPoints) == 1 {
						pending = d.DataPoints[0].Value
					}
				}
			}
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for collect(); pending != 1 && time.Now().Before(deadline); collect() {
		time.Sleep(20 * time.Millisecond)
	}
	if got["scheduled"] < 1 || got["unschedulable"] < 1 {
		t.Errorf("placements = %v, want scheduled and unschedulable counted", got)
	}
	if pending != 1 {
		t.Errorf("pending gauge = %d, want 1 (the huge pod)", pending)
	}
}
