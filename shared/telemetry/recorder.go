package telemetry

import (
	"context"
	"sort"
	"sync"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// DefaultRecorderCapacity bounds the spans a Recorder keeps: enough for a few
// thousand pods' traces (about a dozen spans each) in tens of MiB.
const DefaultRecorderCapacity = 50_000

// Span is a finished span as the Recorder keeps it.
type Span struct {
	TraceID  trace.TraceID
	SpanID   trace.SpanID
	ParentID trace.SpanID
	Name     string
	Service  string
	Start    time.Time
	End      time.Time
	Attrs    map[string]string
	Status   string
}

// Duration is how long the span ran.
func (s Span) Duration() time.Duration { return s.End.Sub(s.Start) }

// Recorder is an in-memory span exporter with a bounded ring of recent spans.
// It is an sdktrace.SpanExporter; add it to a tracer provider with a
// (simple or batch) span processor.
type Recorder struct {
	mu    sync.Mutex
	cap   int
	spans []Span // ring buffer once full
	next  int
	full  bool
}

var _ sdktrace.SpanExporter = (*Recorder)(nil)

// NewRecorder keeps at most capacity spans (DefaultRecorderCapacity when <= 0).
func NewRecorder(capacity int) *Recorder {
	if capacity <= 0 {
		capacity = DefaultRecorderCapacity
	}
	return &Recorder{cap: capacity}
}

// ExportSpans stores finished spans.
func (r *Recorder) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range spans {
		rec := Span{
			TraceID:  s.SpanContext().TraceID(),
			SpanID:   s.SpanContext().SpanID(),
			ParentID: s.Parent().SpanID(),
			Name:     s.Name(),
			Start:    s.StartTime(),
			End:      s.EndTime(),
			Status:   s.Status().Code.String(),
			Attrs:    make(map[string]string, len(s.Attributes())),
		}
		for _, kv := range s.Resource().Attributes() {
			if kv.Key == "service.name" {
				rec.Service = kv.Value.Emit()
			}
		}
		for _, kv := range s.Attributes() {
			rec.Attrs[string(kv.Key)] = kv.Value.Emit()
		}
		if svc, ok := rec.Attrs["podvisor.service"]; ok {
			// In-process services share one tracer provider; the span
			// attribute says which service ran the handler.
			rec.Service = svc
		}
		if len(r.spans) < r.cap {
			r.spans = append(r.spans, rec)
			continue
		}
		r.spans[r.next] = rec
		r.next = (r.next + 1) % r.cap
		r.full = true
	}
	return nil
}

// Shutdown does nothing: the spans stay queryable after the provider stops.
func (r *Recorder) Shutdown(context.Context) error { return nil }

// Trace returns the spans of one trace ordered by start time.
func (r *Recorder) Trace(id trace.TraceID) []Span {
	return r.Find(func(s Span) bool { return s.TraceID == id })
}

// Find returns the spans for which match is true, ordered by start time.
func (r *Recorder) Find(match func(Span) bool) []Span {
	r.mu.Lock()
	var out []Span
	for _, s := range r.spans {
		if match(s) {
			out = append(out, s)
		}
	}
	r.mu.Unlock()
	sort.SliceStable(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}

// Len is the number of spans held.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.spans)
}
