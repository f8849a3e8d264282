package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/log/global"
	"go.opentelemetry.io/otel/propagation"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
)

// Options configure Setup.
type Options struct {
	// Service is the service.name resource attribute (OTEL_SERVICE_NAME wins).
	Service string
	// Recorder, when set, receives every finished span as well.
	Recorder *Recorder
}

// Telemetry is what Setup installed.
type Telemetry struct {
	Tracer *sdktrace.TracerProvider
	Meter  *sdkmetric.MeterProvider
	// Logs is set when an OTLP logs exporter is configured.
	Logs     *sdklog.LoggerProvider
	registry *prometheus.Registry
}

// MetricsHandler serves the Prometheus exposition of every instrument.
func (t *Telemetry) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(t.registry, promhttp.HandlerOpts{})
}

// Shutdown flushes and stops the providers.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	errs := []error{t.Tracer.Shutdown(ctx), t.Meter.Shutdown(ctx)}
	if t.Logs != nil {
		errs = append(errs, t.Logs.Shutdown(ctx))
	}
	return errors.Join(errs...)
}

// Setup installs the global tracer provider, meter provider and the W3C
// propagator (trace context and baggage).
func Setup(ctx context.Context, opts Options) (*Telemetry, error) {
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(semconv.ServiceName(opts.Service)))
	if err != nil {
		return nil, fmt.Errorf("telemetry resource: %w", err)
	}
	if env, err := resource.New(ctx, resource.WithFromEnv()); err == nil {
		if merged, err := resource.Merge(res, env); err == nil {
			res = merged
		}
	}
	tpOpts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if TracesExportConfigured() {
		exp, err := autoexport.NewSpanExporter(ctx)
		if err != nil {
			return nil, fmt.Errorf("trace exporter from OTEL_* environment: %w", err)
		}
		tpOpts = append(tpOpts, sdktrace.WithBatcher(exp))
	}
	if opts.Recorder != nil {
		tpOpts = append(tpOpts, sdktrace.WithSpanProcessor(sdktrace.NewSimpleSpanProcessor(opts.Recorder)))
	}
	tp := sdktrace.NewTracerProvider(tpOpts...)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	promExp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithResource(res), sdkmetric.WithReader(promExp))

	var lp *sdklog.LoggerProvider
	if logsExporterConfigured() {
		exp, err := autoexport.NewLogExporter(ctx)
		if err != nil {
			return nil, fmt.Errorf("log exporter from OTEL_* environment: %w", err)
		}
		lp = sdklog.NewLoggerProvider(sdklog.WithResource(res), sdklog.WithProcessor(sdklog.NewBatchProcessor(exp)))
		// The slog bridge of NewLogger reads the global provider.
		global.SetLoggerProvider(lp)
	}

	otel.SetTracerProvider(tp)
	otel.SetMeterProvider(mp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	return &Telemetry{Tracer: tp, Meter: mp, Logs: lp, registry: reg}, nil
}

// TracesExportConfigured reports whether the environment asks for a span
// exporter: OTEL_TRACES_EXPORTER other than none, or, when it is unset, an
// OTLP endpoint for traces. Unset means none here (see the package doc).
func TracesExportConfigured() bool {
	switch os.Getenv("OTEL_TRACES_EXPORTER") {
	case "none":
		return false
	case "":
		return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
	default:
		return true
	}
}

// logsExporterConfigured reports whether the environment asks for an OTLP
// (or console) log exporter: OTEL_LOGS_EXPORTER, or an OTLP endpoint for
// logs. A general OTLP endpoint alone does not turn logs on, since many
// collectors accept traces only.
func logsExporterConfigured() bool {
	switch os.Getenv("OTEL_LOGS_EXPORTER") {
	case "none":
		return false
	case "":
		return os.Getenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT") != ""
	default:
		return true
	}
}
