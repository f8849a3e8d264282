// Package telemetry sets up what every podvisor process needs to be observed:
// a structured logger, a tracer provider and a meter provider.
//
// Logging is log/slog. Processes build one logger with NewLogger and inject it;
// there is no global logger.
//
// Tracing follows the standard OTEL_* environment (OTEL_TRACES_EXPORTER=otlp,
// console or none, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME …) through
// the contrib autoexport package, with one difference: when neither
// OTEL_TRACES_EXPORTER nor an OTLP endpoint is set, no exporter is started,
// because a laptop run of `podvisor up` has no collector and an OTLP exporter
// would retry against localhost forever. A Recorder can be added beside any
// exporter: it keeps the most recent spans in memory so that `podvisor up`
// can answer `podvisor trace pod NAME` without an external backend.
//
// Metrics use the OpenTelemetry SDK with a Prometheus exporter on a private
// registry; MetricsHandler serves it on /metrics (see package health).
package telemetry
