package allinone

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/podvisor/podvisor/cmd/internal/dashboard"
	"github.com/podvisor/podvisor/shared/telemetry"
)

// Trace queries: `podvisor trace pod` runs in another process than `podvisor
// up`, whose in-memory recorder holds the spans of every in-process service,
// so the CLI asks over NATS request/reply. Like the simulator-control
// subjects, this one is outside every stream: a query is not a fact of the
// system.
const SubjectQueryTraces = "pv.query.traces"

// MaxTraceSpans bounds one reply: a pod's flow has a few dozen spans, and a
// NATS message is limited to 1 MiB by default.
const MaxTraceSpans = 1500

// TraceQuery is the JSON request on SubjectQueryTraces. At least one field
// is set; the reply holds every span of every trace selected by any of them.
type TraceQuery struct {
	// TraceID selects one trace (32 hex digits), the one a pod record's
	// traceparent names.
	TraceID string `json:"traceId,omitempty"`
	// Key selects every trace in which some span handled an event about
	// this object (its ce.subject or work-queue key, e.g. "shop/web"):
	// the pod's own flow, and flows begun elsewhere such as a migration
	// requested by a client that did not carry the pod's trace context.
	Key string `json:"key,omitempty"`
	// Since drops traces selected by Key that began before it (the pod's
	// admission), so a pod deleted and created again under the same name
	// does not show its predecessor's flows.
	Since time.Time `json:"since,omitzero"`
}

// Validate names the field that is wrong.
func (q TraceQuery) Validate() error {
	if q.TraceID == "" && q.Key == "" {
		return errors.New("trace query: traceId or key is required")
	}
	if q.TraceID != "" {
		if _, err := trace.TraceIDFromHex(q.TraceID); err != nil {
			return fmt.Errorf("trace query: traceId %q: want 32 hex digits, not all zero", q.TraceID)
		}
	}
	return nil
}

// TraceSpan is one finished span as the query returns it.
type TraceSpan struct {
	TraceID  string            `json:"traceId"`
	SpanID   string            `json:"spanId"`
	ParentID string            `json:"parentId,omitempty"`
	Name     string            `json:"name"`
	Service  string            `json:"service"`
	Start    time.Time         `json:"start"`
	End      time.Time         `json:"end"`
	Status   string            `json:"status,omitempty"`
	Attrs    map[string]string `json:"attrs,omitempty"`
}

// TraceReply is the JSON answer: spans ordered by start time.
type TraceReply struct {
	Spans []TraceSpan `json:"spans"`
	// Truncated says MaxTraceSpans cut the answer.
	Truncated bool `json:"truncated,omitempty"`
	// Recorded is how many spans the recorder holds in all; zero means
	// tracing is off in this `up` (or nothing ran yet).
	Recorded int `json:"recorded"`
}

// startTraceQueries answers SubjectQueryTraces from the recorder until the
// system closes. Without a recorder there is nothing to answer from, and no
// responder tells the CLI so. Traces are a diagnostic: if the query cannot
// be served, up says so and runs on.
func (s *System) startTraceQueries(ctx context.Context) {
	if s.cfg.Recorder == nil {
		return
	}
	b, err := s.Dial(ctx, "traces")
	if err != nil {
		s.log.Warn("trace queries are not served; podvisor trace will find no responder", "error", err)
		return
	}
	qctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := b.Serve(qctx, SubjectQueryTraces, func(_ context.Context, data []byte) ([]byte, error) {
			return answerTraceQuery(s.cfg.Recorder, data)
		}); err != nil && qctx.Err() == nil {
			s.errs <- fmt.Errorf("trace queries: %w", err)
		}
	}()
	s.onClose(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
		b.Close()
	})
}

// answerTraceQuery selects the traces a query names and returns their spans.
func answerTraceQuery(rec *telemetry.Recorder, data []byte) ([]byte, error) {
	var q TraceQuery
	if err := json.Unmarshal(data, &q); err != nil {
		return nil, fmt.Errorf(`trace query: want JSON {"traceId": "…"} or {"key": "<ns>/<name>"}: %w`, err)
	}
	if err := q.Validate(); err != nil {
		return nil, err
	}
	ids := map[trace.TraceID]bool{}
	if q.TraceID != "" {
		id, _ := trace.TraceIDFromHex(q.TraceID)
		ids[id] = true
	}
	if q.Key != "" {
		for _, sp := range rec.Find(func(sp telemetry.Span) bool { return spanTouches(sp, q.Key) }) {
			ids[sp.TraceID] = true
		}
	}
	spans := rec.Find(func(sp telemetry.Span) bool { return ids[sp.TraceID] })
	if !q.Since.IsZero() {
		began := map[trace.TraceID]time.Time{}
		for _, sp := range spans { // ordered by start: the first seen began the trace
			if _, ok := began[sp.TraceID]; !ok {
				began[sp.TraceID] = sp.Start
			}
		}
		kept := spans[:0]
		for _, sp := range spans {
			if sp.TraceID.String() == q.TraceID || !began[sp.TraceID].Before(q.Since) {
				kept = append(kept, sp)
			}
		}
		spans = kept
	}
	reply := TraceReply{Recorded: rec.Len(), Spans: make([]TraceSpan, 0, min(len(spans), MaxTraceSpans))}
	if len(spans) > MaxTraceSpans {
		spans, reply.Truncated = spans[:MaxTraceSpans], true
	}
	for _, sp := range spans {
		ts := TraceSpan{
			TraceID: sp.TraceID.String(), SpanID: sp.SpanID.String(), Name: sp.Name,
			Service: sp.Service, Start: sp.Start, End: sp.End, Status: sp.Status, Attrs: sp.Attrs,
		}
		if sp.ParentID.IsValid() {
			ts.ParentID = sp.ParentID.String()
		}
		reply.Spans = append(reply.Spans, ts)
	}
	return json.Marshal(reply)
}

// spanTouches reports whether a span handled or announced an event about
// key: the bus records the event's subject and the consumer's work-queue
// key; services add pod on their own spans.
func spanTouches(sp telemetry.Span, key string) bool {
	for _, a := range []string{"ce.subject", "pv.key", "pod"} {
		if v, ok := sp.Attrs[a]; ok && strings.EqualFold(v, key) {
			return true
		}
	}
	return false
}

// TraceIDFromTraceparent extracts the trace id of a W3C traceparent
// ("00-<trace id>-<span id>-<flags>").
func TraceIDFromTraceparent(tp string) (string, error) {
	parts := strings.Split(strings.TrimSpace(tp), "-")
	if len(parts) < 4 || len(parts[1]) != 32 {
		return "", fmt.Errorf("traceparent %q: want 00-<32 hex trace id>-<16 hex span id>-<flags>", tp)
	}
	if _, err := hex.DecodeString(parts[1]); err != nil {
		return "", fmt.Errorf("traceparent %q: trace id is not hex", tp)
	}
	return parts[1], nil
}

// RecorderTraces is the dashboard's trace source in the process that
// records the spans.
func RecorderTraces(rec *telemetry.Recorder) dashboard.TraceSource {
	return func(_ context.Context, key string) ([]dashboard.Span, error) {
		q, _ := json.Marshal(TraceQuery{Key: key})
		raw, err := answerTraceQuery(rec, q)
		if err != nil {
			return nil, err
		}
		return dashboardSpans(raw)
	}
}

func dashboardSpans(raw []byte) ([]dashboard.Span, error) {
	var reply TraceReply
	if err := json.Unmarshal(raw, &reply); err != nil {
		return nil, fmt.Errorf("trace reply: %w", err)
	}
	out := make([]dashboard.Span, 0, len(reply.Spans))
	for _, sp := range reply.Spans {
		out = append(out, dashboard.Span{TraceID: sp.TraceID, SpanID: sp.SpanID, ParentID: sp.ParentID,
			Name: sp.Name, Service: sp.Service, Status: sp.Status, Start: sp.Start, End: sp.End})
	}
	return out, nil
}
