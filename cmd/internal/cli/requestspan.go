package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/podvisor/podvisor/shared/telemetry"
)

// A command that publishes requests (apply, delete, drain, ...) is where
// their flow starts: its run is a span, and every event it publishes carries
// that span's context (bus.Publish makes the current span context the
// event's traceparent, and the services carry it over to every event that
// follows), so a pod's trace begins at the user's command rather than at the
// first service that handled it.
//
// When the OTEL_* environment names a span exporter, the CLI sets up
// telemetry as the services do (shared/telemetry, service podvisor-cli) and
// the command's span and its publish spans are exported. Without one nothing
// is exported, but the span is still a sampled one of the CLI's own, so the
// services' spans of the request share its trace id.

// annotationRequests marks the commands whose run is a request span.
const annotationRequests = "podvisor.io/requests"

// cliService is the service.name of the CLI's exported spans
// (OTEL_SERVICE_NAME wins).
const cliService = "podvisor-cli"

// requestSpanTimeout bounds the flush of exported spans at the end of a
// command: a collector that does not answer must not hold the user's shell.
const requestSpanTimeout = 3 * time.Second

// requests is the annotation of a command that publishes requests.
func requests() map[string]string { return map[string]string{annotationRequests: "true"} }

// traceRequests makes the run of every command annotated with requests()
// a span, walking the tree as usageArgs does.
func traceRequests(cmd *cobra.Command, stderr io.Writer) {
	if run := cmd.RunE; run != nil && cmd.Annotations[annotationRequests] != "" {
		cmd.RunE = func(c *cobra.Command, args []string) (err error) {
			ctx, end := startRequestSpan(c.Context(), "podvisor "+strings.TrimPrefix(c.CommandPath(), c.Root().Name()+" "), stderr)
			defer func() { end(err) }()
			c.SetContext(ctx)
			return run(c, args)
		}
	}
	for _, sub := range cmd.Commands() {
		traceRequests(sub, stderr)
	}
}

// startRequestSpan starts the span of one command and returns its context
// and the function that ends it (with the command's error, if any) and
// flushes what was exported.
func startRequestSpan(ctx context.Context, name string, stderr io.Writer) (context.Context, func(error)) {
	var (
		tp    trace.TracerProvider
		flush = func() {}
	)
	if telemetry.TracesExportConfigured() {
		tel, err := telemetry.Setup(ctx, telemetry.Options{Service: cliService})
		if err != nil {
			fmt.Fprintf(stderr, "warning: tracing: %v; this command's spans are not exported\n", err)
		} else {
			tp = tel.Tracer
			flush = func() {
				fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), requestSpanTimeout)
				defer cancel()
				_ = tel.Shutdown(fctx)
			}
		}
	}
	if tp == nil {
		// Not exported: a provider with no processor, whose spans have
		// fresh, sampled ids that only travel on the events.
		tp = sdktrace.NewTracerProvider()
	}
	ctx, span := tp.Tracer("github.com/podvisor/podvisor/cmd/internal/cli").Start(ctx, name)
	return ctx, func(err error) {
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
		flush()
	}
}
