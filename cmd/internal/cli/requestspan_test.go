package cli

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"
)

// Without an exporter the command's span is exported nowhere, but its
// context is a sampled one of its own: what the events carry.
func TestRequestSpanWithoutExporterIsSampled(t *testing.T) {
	for _, k := range []string{"OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} {
		t.Setenv(k, "")
	}
	before := otel.GetTracerProvider()
	ctx, end := startRequestSpan(context.Background(), "podvisor apply", io.Discard)
	defer end(nil)
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() || !sc.IsSampled() {
		t.Fatalf("span context %v: want a valid, sampled one", sc)
	}
	other, end2 := startRequestSpan(context.Background(), "podvisor apply", io.Discard)
	end2(errors.New("refused"))
	if trace.SpanContextFromContext(other).TraceID() == sc.TraceID() {
		t.Error("two commands share a trace id")
	}
	if otel.GetTracerProvider() != before {
		t.Error("the command replaced the global tracer provider without an exporter configured")
	}
}

// With an OTLP endpoint in the environment the command's span is exported
// (as service podvisor-cli) by the time the command ends.
func TestRequestSpanIsExportedWhenConfigured(t *testing.T) {
	// The package's tests share one set of global providers (trace_test.go):
	// install it first, and put it back after this command's.
	sharedTelemetry(t)
	prevTP, prevMP, prevProp := otel.GetTracerProvider(), otel.GetMeterProvider(), otel.GetTextMapPropagator()
	t.Cleanup(func() {
		otel.SetTracerProvider(prevTP)
		otel.SetMeterProvider(prevMP)
		otel.SetTextMapPropagator(prevProp)
	})
	var (
		mu       sync.Mutex
		received [][]byte
	)
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		received = append(received, body)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	defer collector.Close()
	t.Setenv("OTEL_TRACES_EXPORTER", "")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector.URL+"/v1/traces")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_SERVICE_NAME", "")

	var stderr bytes.Buffer
	ctx, end := startRequestSpan(context.Background(), "podvisor apply", &stderr)
	if sc := trace.SpanContextFromContext(ctx); !sc.IsSampled() {
		t.Fatalf("span context %v: want a sampled one", sc)
	}
	end(nil)
	mu.Lock()
	defer mu.Unlock()
	all := bytes.Join(received, nil)
	if !bytes.Contains(all, []byte("podvisor apply")) || !bytes.Contains(all, []byte(cliService)) {
		t.Fatalf("collector received %d requests without the command's span (stderr %q)", len(received), stderr.String())
	}
}
