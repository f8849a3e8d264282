package telemetry

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/log/global"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// memoryLogs is an OTel log exporter that keeps what it is given.
type memoryLogs struct {
	mu      sync.Mutex
	records []sdklog.Record
}

func (m *memoryLogs) Export(_ context.Context, rs []sdklog.Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range rs {
		m.records = append(m.records, r.Clone())
	}
	return nil
}
func (m *memoryLogs) Shutdown(context.Context) error   { return nil }
func (m *memoryLogs) ForceFlush(context.Context) error { return nil }

func TestLogRecordsCarryTraceIDs(t *testing.T) {
	t.Setenv("OTEL_LOGS_EXPORTER", "otlp") // the bridge is on; the provider below stands in for the exporter
	exp := &memoryLogs{}
	global.SetLoggerProvider(sdklog.NewLoggerProvider(sdklog.WithProcessor(sdklog.NewSimpleProcessor(exp))))

	var out bytes.Buffer
	log := NewLogger(&out, 0, true).With("service", "scheduler")
	tp := sdktrace.NewTracerProvider()
	ctx, span := tp.Tracer("t").Start(context.Background(), "handle")
	log.InfoContext(ctx, "placed", "pod", "default/web")
	span.End()
	log.Info("no span here")

	sc := span.SpanContext()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2:\n%s", len(lines), out.String())
	}
	want := `"trace_id":"` + sc.TraceID().String() + `","span_id":"` + sc.SpanID().String() + `"`
	if !strings.Contains(lines[0], want) || !strings.Contains(lines[0], `"service":"scheduler"`) {
		t.Errorf("record with a span = %s; want %s and the logger's attributes", lines[0], want)
	}
	if strings.Contains(lines[1], "trace_id") {
		t.Errorf("record without a span carries a trace id: %s", lines[1])
	}

	exp.mu.Lock()
	defer exp.mu.Unlock()
	if len(exp.records) != 2 {
		t.Fatalf("the OTel bridge got %d records, want 2", len(exp.records))
	}
	if r := exp.records[0]; r.TraceID() != sc.TraceID() || r.SpanID() != sc.SpanID() || r.Body().AsString() != "placed" {
		t.Errorf("bridged record: trace %s span %s body %q; want %s %s placed", r.TraceID(), r.SpanID(), r.Body().AsString(), sc.TraceID(), sc.SpanID())
	}
}
