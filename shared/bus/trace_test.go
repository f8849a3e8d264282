package bus_test

import (
	"context"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
)

// installTracing points otel's globals at an in-memory exporter for one test.
func installTracing(t *testing.T) *tracetest.InMemoryExporter {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	prevTP, prevProp := otel.GetTracerProvider(), otel.GetTextMapPropagator()
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	t.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		otel.SetTracerProvider(prevTP)
		otel.SetTextMapPropagator(prevProp)
	})
	return exp
}

func spanNamed(spans tracetest.SpanStubs, name string) (tracetest.SpanStub, bool) {
	for _, s := range spans {
		if s.Name == name {
			return s, true
		}
	}
	return tracetest.SpanStub{}, false
}

// A flow of two hops (client → provisioner → scheduler) is one trace: each
// handler span's parent is the publish span of the hop before it, and the
// second hop also links to the flow's start carried in the CE extension.
func TestTraceContextCrossesHops(t *testing.T) {
	exp := installTracing(t)
	b := bustest.Start(t)

	startConsume(t, b, bus.ConsumerConfig{Service: "provisioner", Stream: events.StreamPods, Subjects: []string{"pv.pod.requested"}},
		func(ctx context.Context, m *bus.Message) error {
			eff, err := bus.Effect(m.Event, "podvisor/provisioner", typePodAccepted, m.Event.Subject(), nil)
			if err != nil {
				return bus.Permanent(err)
			}
			return b.Publish(ctx, eff)
		})
	done := make(chan struct{})
	startConsume(t, b, bus.ConsumerConfig{Service: "scheduler", Stream: events.StreamPods, Subjects: []string{"pv.pod.accepted"}},
		func(context.Context, *bus.Message) error { close(done); return nil })

	ctx, root := otel.Tracer("test").Start(context.Background(), "client apply")
	mustPublishCtx(t, b, ctx, mustEvent(t, typePodRequested, "default/web", nil))
	root.End()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("second hop never ran")
	}
	var spans tracetest.SpanStubs
	// Each handler's span ends after its ack, so the first hop's may end
	// after the second hop's: wait for both.
	waitFor(t, 2*time.Second, "handler spans exported", func() bool {
		spans = exp.GetSpans()
		_, ok1 := spanNamed(spans, "scheduler "+typePodAccepted)
		_, ok2 := spanNamed(spans, "provisioner "+typePodRequested)
		return ok1 && ok2
	})

	clientPub, ok1 := spanNamed(spans, "publish pv.pod.requested")
	hop1, ok2 := spanNamed(spans, "provisioner "+typePodRequested)
	effPub, ok3 := spanNamed(spans, "publish pv.pod.accepted")
	hop2, ok4 := spanNamed(spans, "scheduler "+typePodAccepted)
	if !ok1 || !ok2 || !ok3 || !ok4 {
		t.Fatalf("missing spans; have %v", names(spans))
	}
	traceID := root.SpanContext().TraceID()
	for _, s := range []tracetest.SpanStub{clientPub, hop1, effPub, hop2} {
		if s.SpanContext.TraceID() != traceID {
			t.Errorf("span %q is in trace %s, want the client's %s", s.Name, s.SpanContext.TraceID(), traceID)
		}
	}
	if hop1.Parent.SpanID() != clientPub.SpanContext.SpanID() {
		t.Errorf("first handler's parent = %s, want the client's publish span %s", hop1.Parent.SpanID(), clientPub.SpanContext.SpanID())
	}
	if effPub.Parent.SpanID() != hop1.SpanContext.SpanID() {
		t.Errorf("effect publish parent = %s, want the first handler span", effPub.Parent.SpanID())
	}
	if hop2.Parent.SpanID() != effPub.SpanContext.SpanID() {
		t.Errorf("second handler's parent = %s, want the effect's publish span %s", hop2.Parent.SpanID(), effPub.SpanContext.SpanID())
	}
	if hop2.SpanKind != trace.SpanKindConsumer {
		t.Errorf("handler span kind = %v, want consumer", hop2.SpanKind)
	}
	// The flow's start (the client's publish span) rides in the CE
	// traceparent; the second hop links to it.
	linked := false
	for _, l := range hop2.Links {
		if l.SpanContext.SpanID() == clientPub.SpanContext.SpanID() {
			linked = true
		}
	}
	if !linked {
		t.Errorf("second handler span has links %v, want one to the flow start %s", hop2.Links, clientPub.SpanContext.SpanID())
	}
	attrs := map[string]string{}
	for _, a := range hop2.Attributes {
		attrs[string(a.Key)] = a.Value.Emit()
	}
	for k, want := range map[string]string{"ce.type": typePodAccepted, "ce.subject": "default/web", "messaging.system": "nats", "messaging.consumer.group.name": "scheduler-PODS", "pv.outcome": "ack"} {
		if attrs[k] != want {
			t.Errorf("handler span attribute %s = %q, want %q", k, attrs[k], want)
		}
	}
}

func mustPublishCtx(t *testing.T, b *bus.Bus, ctx context.Context, ev event.Event) {
	t.Helper()
	if err := b.Publish(ctx, ev); err != nil {
		t.Fatalf("Publish: %v", err)
	}
}

func names(spans tracetest.SpanStubs) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.Name)
	}
	return out
}

// An effect published outside any handler (a retry loop, a background task)
// stays in the flow's trace instead of starting one of its own.
func TestPublishWithoutSpanContinuesTheFlow(t *testing.T) {
	exp := installTracing(t)
	b := bustest.Start(t)

	ctx, root := otel.Tracer("test").Start(context.Background(), "client apply")
	cause := mustEvent(t, typePodRequested, "default/web", nil)
	mustPublishCtx(t, b, ctx, cause)
	root.End()
	flow := root.SpanContext().TraceID()

	// Later, from a context with no span at all, the effect of the request.
	stored := cause.Clone()
	stored.SetExtension(bus.ExtTraceparent, "00-"+flow.String()+"-"+root.SpanContext().SpanID().String()+"-01")
	eff, err := bus.Effect(stored, "podvisor/scheduler", typePodAccepted, "default/web", nil)
	if err != nil {
		t.Fatal(err)
	}
	mustPublishCtx(t, b, context.Background(), eff)

	var pub tracetest.SpanStub
	waitFor(t, 2*time.Second, "publish span exported", func() bool {
		var ok bool
		pub, ok = spanNamed(exp.GetSpans(), "publish pv.pod.accepted")
		return ok
	})
	if got := pub.SpanContext.TraceID(); got != flow {
		t.Fatalf("background publish started trace %s, want the flow's %s", got, flow)
	}
}
