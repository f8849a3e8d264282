package bus

import (
	"context"
	"strings"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// instrumentation is the OpenTelemetry scope name of the bus's spans.
const instrumentation = "github.com/podvisor/podvisor/shared/bus"

func tracer() trace.Tracer { return otel.Tracer(instrumentation) }

// propagator is the global one, unless nobody installed any: the otel
// default is a no-op, and a process that forgot telemetry.Setup would
// otherwise silently cut every trace at the first hop.
func propagator() propagation.TextMapPropagator {
	p := otel.GetTextMapPropagator()
	if len(p.Fields()) == 0 {
		return propagation.TraceContext{}
	}
	return p
}

// headerCarrier adapts NATS headers to the otel propagators. NATS headers
// are case-sensitive; propagators write lowercase names (traceparent) and
// reads match any case, as other clients may canonicalize.
type headerCarrier nats.Header

var _ propagation.TextMapCarrier = headerCarrier(nil)

func (c headerCarrier) Get(key string) string {
	if v, ok := c[key]; ok && len(v) > 0 {
		return v[0]
	}
	for k, v := range c {
		if strings.EqualFold(k, key) && len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

func (c headerCarrier) Set(key, value string) { c[strings.ToLower(key)] = []string{value} }

func (c headerCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// mapCarrier carries the CloudEvents tracing extensions through the W3C
// trace-context format.
type mapCarrier map[string]string

func (c mapCarrier) Get(key string) string { return c[key] }
func (c mapCarrier) Set(key, value string) { c[key] = value }
func (c mapCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// flowContext returns the span context recorded in the event's traceparent
// extension (the start of the flow), or an invalid one.
func flowContext(ev *event.Event) trace.SpanContext {
	c := mapCarrier{}
	for _, ext := range []string{ExtTraceparent, ExtTracestate} {
		if v, ok := ev.Extensions()[ext]; ok {
			if s, ok := v.(string); ok {
				c[ext] = s
			}
		}
	}
	if c[ExtTraceparent] == "" {
		return trace.SpanContext{}
	}
	ctx := propagation.TraceContext{}.Extract(context.Background(), c)
	return trace.SpanContextFromContext(ctx)
}

// setFlowContext records sc as the flow's start in the event's extensions.
func setFlowContext(ev *event.Event, sc trace.SpanContext) {
	if !sc.IsValid() {
		return
	}
	c := mapCarrier{}
	propagation.TraceContext{}.Inject(trace.ContextWithSpanContext(context.Background(), sc), c)
	if v := c[ExtTraceparent]; v != "" {
		ev.SetExtension(ExtTraceparent, v)
	}
	if v := c[ExtTracestate]; v != "" {
		ev.SetExtension(ExtTracestate, v)
	}
}
