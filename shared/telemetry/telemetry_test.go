package telemetry

import (
	"bytes"
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
)

func TestSetupRecordsSpansAndServesMetrics(t *testing.T) {
	t.Setenv("OTEL_TRACES_EXPORTER", "")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	rec := NewRecorder(0)
	tel, err := Setup(context.Background(), Options{Service: "podvisor-test", Recorder: rec})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })

	ctx, parent := otel.Tracer("t").Start(context.Background(), "request")
	_, child := otel.Tracer("t").Start(ctx, "handle")
	child.SetAttributes(attribute.String("podvisor.service", "scheduler"), attribute.String("pod", "default/web"))
	child.End()
	parent.End()

	spans := rec.Trace(parent.SpanContext().TraceID())
	if len(spans) != 2 {
		t.Fatalf("trace has %d spans, want 2", len(spans))
	}
	if spans[0].Name != "request" || spans[0].Service != "podvisor-test" {
		t.Errorf("first span = %q from %q, want request from podvisor-test", spans[0].Name, spans[0].Service)
	}
	if spans[1].Service != "scheduler" || spans[1].ParentID != spans[0].SpanID || spans[1].Attrs["pod"] != "default/web" {
		t.Errorf("child span = %+v, want service scheduler, parent request, pod attr", spans[1])
	}

	counter, _ := otel.Meter("t").Int64Counter("podvisor_test_repairs_total")
	counter.Add(context.Background(), 3)
	w := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(w.Result().Body)
	if !bytes.Contains(body, []byte("podvisor_test_repairs_total")) || !strings.Contains(string(body), "go_goroutines") {
		t.Fatalf("metrics missing the counter or Go collector:\n%.500s", body)
	}
}

func TestRecorderIsBounded(t *testing.T) {
	rec := NewRecorder(3)
	t.Setenv("OTEL_TRACES_EXPORTER", "none")
	tel, err := Setup(context.Background(), Options{Service: "s", Recorder: rec})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	for range 10 {
		_, s := otel.Tracer("t").Start(context.Background(), "x")
		s.End()
	}
	if rec.Len() != 3 {
		t.Fatalf("recorder holds %d spans, want its capacity 3", rec.Len())
	}
}

func TestParseLevel(t *testing.T) {
	for _, tt := range []struct {
		in      string
		wantErr bool
	}{{"", false}, {"debug", false}, {"WARN", false}, {"loud", true}} {
		_, err := ParseLevel(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseLevel(%q) err = %v, wantErr %v", tt.in, err, tt.wantErr)
		}
	}
}

func TestTraceExportConfigured(t *testing.T) {
	for _, tt := range []struct {
		name                       string
		exporter, endpoint, traces string
		want                       bool
	}{
		{"nothing set", "", "", "", false},
		{"an OTLP endpoint", "", "http://collector:4318", "", true},
		{"an OTLP endpoint for traces", "", "", "http://collector:4318/v1/traces", true},
		{"an exporter named", "console", "", "", true},
		{"none wins over an endpoint", "none", "http://collector:4318", "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("OTEL_TRACES_EXPORTER", tt.exporter)
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", tt.endpoint)
			t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", tt.traces)
			if got := TracesExportConfigured(); got != tt.want {
				t.Errorf("TracesExportConfigured() = %v, want %v", got, tt.want)
			}
		})
	}
}
