package bus_test

import (
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
	"github.com/podvisor/podvisor/shared/telemetry"
)

// TestConsumerMetricsInPrometheus runs a consumer whose handler acks one
// event, retries another once and dead-letters a third, and reads the
// figures back from the Prometheus exposition a service serves on /metrics.
func TestConsumerMetricsInPrometheus(t *testing.T) {
	tel, err := telemetry.Setup(context.Background(), telemetry.Options{Service: "bus-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	b := bustest.Start(t)

	failedOnce := false
	startConsume(t, b, bus.ConsumerConfig{
		Service: "metrics", Stream: events.StreamPods, MaxDeliver: 3, BackOff: []time.Duration{20 * time.Millisecond},
	}, func(_ context.Context, m *bus.Message) error {
		switch m.Event.Subject() {
		case "default/retry":
			if !failedOnce {
				failedOnce = true
				return errors.New("vCenter busy")
			}
		case "default/poison":
			return bus.Permanent(errors.New("bad spec"))
		}
		return nil
	})
	for _, subject := range []string{"default/ok", "default/retry", "default/poison"} {
		mustPublish(t, b, mustEvent(t, typePodAccepted, subject, map[string]any{"uid": subject}))
	}

	labels := `ce_type="` + typePodAccepted + `",consumer="metrics-PODS"`
	want := map[string]float64{
		bus.MetricDeliveries:   4, // ok, retry twice, poison
		bus.MetricRedeliveries: 1,
		bus.MetricAcks:         2,
		bus.MetricNaks:         1,
		bus.MetricDeadLetters:  1,
		bus.MetricTerms:        1,
	}
	latencyCounts := map[string]float64{"ack": 2, "retry": 1, "dead-letter": 1}
	var text string
	t.Cleanup(func() {
		if t.Failed() {
			for _, l := range strings.Split(text, "\n") {
				if strings.HasPrefix(l, "podvisor_") {
					t.Log(l)
				}
			}
		}
	})
	waitFor(t, 10*time.Second, "the consumer's figures", func() bool {
		text = scrape(t, tel)
		for name, v := range want {
			if got, ok := sample(text, name, labels); !ok || got != v {
				return false
			}
		}
		for outcome, v := range latencyCounts {
			if got, ok := sample(text, bus.MetricHandlerLatency+"_count", labels+`,outcome="`+outcome+`"`); !ok || got != v {
				return false
			}
		}
		return true
	})
	if _, ok := sample(text, bus.MetricHandlerLatency+"_bucket", labels); !ok {
		t.Errorf("no histogram buckets for %s", bus.MetricHandlerLatency)
	}
	if got, ok := sample(text, bus.MetricPending, `consumer="metrics-PODS"`); !ok || got != 0 {
		t.Errorf("%s = %v (present %v), want 0 once everything is delivered", bus.MetricPending, got, ok)
	}
}

func scrape(t *testing.T, tel *telemetry.Telemetry) string {
	t.Helper()
	rec := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	return string(body)
}

// sample returns the value of the first sample of metric name whose labels
// contain every label of want (a comma list of name="value").
func sample(text, name, want string) (float64, bool) {
	line := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\{([^}]*)\} (\S+)$`)
	for _, m := range line.FindAllStringSubmatch(text, -1) {
		all := true
		for _, l := range strings.Split(want, ",") {
			if !strings.Contains(m[1], l) {
				all = false
			}
		}
		if all {
			v, err := strconv.ParseFloat(m[2], 64)
			return v, err == nil
		}
	}
	return 0, false
}
