package provisioner

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/telemetry"
	"github.com/podvisor/podvisor/shared/testenv"
	"github.com/vmware/govmomi/simulator"
	"go.opentelemetry.io/otel"
)

// TestTraceAndMetrics checks what `podvisor trace pod` and /metrics rely
// on: the events the provisioner publishes join the pod request's trace,
// its spans carry the service, pod key and uid, and the repair counter is
// exposed under its documented name.
func TestTraceAndMetrics(t *testing.T) {
	prevTP, prevMP, prevProp := otel.GetTracerProvider(), otel.GetMeterProvider(), otel.GetTextMapPropagator()
	rec := telemetry.NewRecorder(0)
	tel, err := telemetry.Setup(context.Background(), telemetry.Options{Service: Name, Recorder: rec})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = tel.Shutdown(context.Background())
		otel.SetTracerProvider(prevTP)
		otel.SetMeterProvider(prevMP)
		otel.SetTextMapPropagator(prevProp)
	})

	e := newEnv(t)
	svc, _ := e.start(testConfig())
	acc, _ := e.provision(testPod("traced"), e.DC.Hosts()[0].Name)

	traceOf := func(ceType string) string {
		for _, seen := range e.Events.Seen() {
			if ev := seen.Event; ev.Type() == ceType && ev.Subject() == "default/traced" {
				tp, _ := ev.Extensions()["traceparent"].(string)
				if parts := strings.Split(tp, "-"); len(parts) == 4 {
					return parts[1]
				}
			}
		}
		return ""
	}
	want := traceOf(events.TypePodRequested)
	if want == "" {
		t.Fatal("pod.requested carries no traceparent")
	}
	for _, typ := range []string{events.TypePodAccepted, events.TypePodVMReady} {
		if got := traceOf(typ); got != want {
			t.Errorf("%s is in trace %q, want the request's %q", typ, got, want)
		}
	}
	// Spans are exported when they end, just after the event goes out.
	names := map[string]bool{}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, s := range rec.Find(func(s telemetry.Span) bool {
			return s.Attrs["podvisor.service"] == Name && s.Attrs["pod"] == "default/traced" && s.Attrs["pod.uid"] == acc.UID
		}) {
			names[s.Name] = true
		}
		if names["provisioner.provision"] && names["provisioner.create_vm"] {
			break
		}
	}
	for _, n := range []string{"provisioner.provision", "provisioner.create_vm"} {
		if !names[n] {
			t.Errorf("no %s span with service, pod and uid attributes; have %v", n, names)
		}
	}

	// One repair, then scrape.
	ref := orphanVM(t, e, svc, e.DC.Hosts()[0].Name)
	if _, err := svc.Resync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if vm, _ := e.vms.Get(context.Background(), ref); vm != nil {
		t.Fatal("orphan not removed")
	}
	w := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(w.Result().Body)
	if !strings.Contains(string(body), `podvisor_provisioner_repairs_total{kind="orphan_vm"`) {
		t.Errorf("/metrics lacks podvisor_provisioner_repairs_total{kind=\"orphan_vm\"}:\n%s", grep(string(body), "repairs"))
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestEvictionFromUnreachableHost: the old VM cannot be removed, so the
// pod's next VM gets a new name (never two VMs of one name) and drift
// repair removes the old one once vCenter lets it.
func TestEvictionFromUnreachableHost(t *testing.T) {
	e := newEnv(t)
	svc, _ := e.start(testConfig())
	hosts := e.DC.Hosts()

	acc, first := e.provision(testPod("stranded"), hosts[0].Name)
	vmName := e.record(svc, "default", "stranded").VMName
	e.fold(svc, report(acc, vmName, "boot-1", 1, running("app"), running("sidecar"), running("logger")))

	simtest.Fault(t, e.DC, simulator.FaultInjectionRule{
		MethodName: "Destroy_Task", ObjectType: "VirtualMachine", Probability: 1,
		FaultType: simulator.FaultTypeInvalidState, Message: "host not responding",
	})
	e.Send("podvisor/migration", events.TypePodEvicted, &events.PodEvicted{PodRef: events.PodRef{Namespace: "default", Name: "stranded", UID: acc.UID}, Host: hosts[0].Name, Reason: "HostLost"})
	r := e.waitRecord(svc, "default", "stranded", func(r *events.PodRecord) bool { return r.Phase == events.PodPhasePending })
	if len(r.StaleVMs) != 1 || r.StaleVMs[0].Ref != first.VM || r.VMName != "pv-"+acc.UID+"-1" {
		t.Fatalf("after eviction: stale %+v, next name %s", r.StaleVMs, r.VMName)
	}
	// Its containers are not said to run or be ready while it waits.
	for _, ct := range []string{events.PodConditionContainersReady, events.PodConditionReady} {
		if c, _ := r.Condition(ct); c.Status == events.ConditionTrue {
			t.Errorf("%s of the evicted pod = %+v, want not True", ct, c)
		}
	}
	if len(r.ContainerStatuses) != 0 {
		t.Errorf("evicted pod's container statuses = %+v, want none until its next guest reports", r.ContainerStatuses)
	}
	e.DC.ClearFaults()

	e.facts(acc, hosts[1].Name)
	second := testenv.Wait(e.Env, func(p *events.PodVMReady) bool { return p.UID == acc.UID && p.VM != first.VM })
	if n := len(e.vmsNamed("pv-" + acc.UID + "-1")); n != 1 || second.Host != hosts[1].Name {
		t.Fatalf("%d VMs named pv-%s-1 on %s, want 1 on %s", n, acc.UID, second.Host, hosts[1].Name)
	}

	report, err := svc.Resync(context.Background())
	if err != nil || report[RepairStaleVM] != 1 {
		t.Fatalf("Resync = %v, %v; want one stale VM removed", report, err)
	}
	if n := len(e.vmsNamed("pv-" + acc.UID)); n != 0 {
		t.Errorf("old VM still there")
	}
	if r := e.record(svc, "default", "stranded"); len(r.StaleVMs) != 0 || r.Phase != events.PodPhaseStarting {
		t.Errorf("record after repair: stale %+v phase %s", r.StaleVMs, r.Phase)
	}
}
