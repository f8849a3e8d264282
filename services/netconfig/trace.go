package netconfig

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

const instrumentation = "github.com/podvisor/podvisor/services/netconfig"

// span starts a child span of the handler's span (the bus makes one per
// event) carrying podvisor.service, so `podvisor trace` can tell the
// service's own steps apart: a push, each host of it, the probe, a
// rollback, each attachment (with pod and pod.uid).
func span(ctx context.Context, name string, kv ...attribute.KeyValue) (context.Context, trace.Span) {
	ctx, sp := otel.Tracer(instrumentation).Start(ctx, name)
	sp.SetAttributes(attribute.String("podvisor.service", Name))
	sp.SetAttributes(kv...)
	return ctx, sp
}

// end records err on the span and ends it.
func end(sp trace.Span, err error) {
	if err != nil {
		sp.RecordError(err)
		sp.SetStatus(codes.Error, err.Error())
	}
	sp.End()
}
