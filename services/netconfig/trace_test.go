package netconfig_test

import (
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/telemetry"
	"github.com/podvisor/podvisor/shared/testenv"
)

// TestSpansNameServiceAndPod: the attach span carries podvisor.service,
// the pod key and uid, and hangs under the bus's handler span (same trace),
// which is how `podvisor trace pod` finds it.
func TestSpansNameServiceAndPod(t *testing.T) {
	rec := telemetry.NewRecorder(0)
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sdktrace.NewSimpleSpanProcessor(rec)))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev); _ = tp.Shutdown(t.Context()) })

	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 1}, nil)
	e.declareRealized("traced", events.NetworkSpec{VLAN: 6, CIDR: "10.6.0.0/24"})
	e.schedule("tp", "uid-tp", e.HostNames("")[0], "traced")
	testenv.Wait(e.Env, func(p *events.PodNetworkAttached) bool { return p.Name == "tp" })

	var found []telemetry.Span
	deadline := time.Now().Add(5 * time.Second)
	for len(found) == 0 && time.Now().Before(deadline) {
		found = rec.Find(func(s telemetry.Span) bool {
			return s.Name == "netconfig attach" && s.Attrs["pod"] == "default/tp" && s.Attrs["pod.uid"] == "uid-tp" && s.Attrs["podvisor.service"] == "netconfig"
		})
		time.Sleep(20 * time.Millisecond)
	}
	if len(found) == 0 {
		t.Fatal("no attach span with podvisor.service, pod and pod.uid")
	}
	if found[0].Attrs["ip"] == "" {
		t.Errorf("attach span has no ip: %v", found[0].Attrs)
	}
	if len(rec.Trace(found[0].TraceID)) < 2 {
		t.Errorf("attach span is alone in its trace; want it under the handler span")
	}
	if len(rec.Find(func(s telemetry.Span) bool { return s.Name == "netconfig push host" && s.Attrs["state"] == "Ready" })) == 0 {
		t.Error("no per-host push span")
	}
}
