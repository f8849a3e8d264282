package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"go.opentelemetry.io/contrib/bridges/otelslog"
	"go.opentelemetry.io/otel/trace"

	"github.com/podvisor/podvisor/shared/redact"
)

// NewLogger returns a logger writing text (or JSON when json is true) at
// level. A record logged with a context that holds a span (InfoContext,
// WarnContext, …) carries trace_id and span_id, so a log line leads to its
// trace. When the OTel log pipeline is configured (Setup with an OTLP logs
// exporter from the OTEL_* environment), every record also goes through the
// OpenTelemetry slog bridge, which attaches the same trace context.
func NewLogger(w io.Writer, level slog.Level, json bool) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	if json {
		h = slog.NewJSONHandler(w, opts)
	} else {
		h = slog.NewTextHandler(w, opts)
	}
	h = traceHandler{h}
	if logsExporterConfigured() {
		h = fanout{h, otelslog.NewHandler("podvisor")}
	}
	// Every line passes redact, on the way to stderr and to the OTel
	// pipeline alike: a URL with credentials (GOVC_URL, a Redis URL) logged
	// by any part, or inside a library's error, shows its password masked.
	return slog.New(redact.NewHandler(h))
}

// traceHandler adds trace_id and span_id to records whose context holds a
// valid span.
type traceHandler struct{ slog.Handler }

func (h traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r = r.Clone()
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h traceHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return traceHandler{h.Handler.WithAttrs(attrs)}
}
func (h traceHandler) WithGroup(name string) slog.Handler {
	return traceHandler{h.Handler.WithGroup(name)}
}

// fanout hands each record to the local handler and the OTel bridge.
type fanout struct{ local, otel slog.Handler }

func (f fanout) Enabled(ctx context.Context, l slog.Level) bool {
	return f.local.Enabled(ctx, l) || f.otel.Enabled(ctx, l)
}

func (f fanout) Handle(ctx context.Context, r slog.Record) error {
	var errs []error
	if f.local.Enabled(ctx, r.Level) {
		errs = append(errs, f.local.Handle(ctx, r.Clone()))
	}
	if f.otel.Enabled(ctx, r.Level) {
		errs = append(errs, f.otel.Handle(ctx, r))
	}
	return errors.Join(errs...)
}

func (f fanout) WithAttrs(attrs []slog.Attr) slog.Handler {
	return fanout{f.local.WithAttrs(attrs), f.otel.WithAttrs(attrs)}
}
func (f fanout) WithGroup(name string) slog.Handler {
	return fanout{f.local.WithGroup(name), f.otel.WithGroup(name)}
}

// ParseLevel reads a level name (debug, info, warn, error); empty means info.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if strings.TrimSpace(s) == "" {
		return slog.LevelInfo, nil
	}
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("log level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// LoggerFromEnv builds the logger a service process uses: level from
// PODVISOR_LOG_LEVEL, JSON when PODVISOR_LOG_FORMAT=json, written to stderr.
func LoggerFromEnv() (*slog.Logger, error) {
	level, err := ParseLevel(os.Getenv("PODVISOR_LOG_LEVEL"))
	if err != nil {
		return nil, fmt.Errorf("PODVISOR_LOG_LEVEL: %w", err)
	}
	format := os.Getenv("PODVISOR_LOG_FORMAT")
	if format != "" && format != "json" && format != "text" {
		return nil, fmt.Errorf("PODVISOR_LOG_FORMAT: %q: want text or json", format)
	}
	return NewLogger(os.Stderr, level, format == "json"), nil
}
