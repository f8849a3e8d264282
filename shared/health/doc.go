// Package health serves the probe and metrics endpoints every podvisor
// service process exposes on a port of its own (PODVISOR_HEALTH_ADDR,
// default :8081):
//
//	/healthz  the process is alive (its HTTP server answers)
//	/readyz   every readiness check passes (bus connected, backends answer)
//	/metrics  Prometheus exposition of the process's OpenTelemetry metrics
//	/debug/pprof/  the Go runtime's profiles, only with PODVISOR_PROFILING=true
//
// Liveness deliberately checks nothing external: a NATS or vCenter outage
// must make a pod unready, not restart it in a loop.
package health
