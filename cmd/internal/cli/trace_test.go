package cli

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/cmd/internal/runner"
	"github.com/podvisor/podvisor/cmd/internal/serve"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/telemetry"
)

// The package's tests share one telemetry setup, as a `podvisor up` process
// has one: OTel's global providers bind instruments to the first provider
// installed.
var (
	testTelemetryOnce sync.Once
	testTelemetry     *telemetry.Telemetry
	testRecorder      *telemetry.Recorder
)

func sharedTelemetry(t *testing.T) (*telemetry.Telemetry, *telemetry.Recorder) {
	t.Helper()
	testTelemetryOnce.Do(func() {
		testRecorder = telemetry.NewRecorder(0)
		tel, err := telemetry.Setup(context.Background(), telemetry.Options{Service: "podvisor", Recorder: testRecorder})
		if err != nil {
			t.Fatal(err)
		}
		testTelemetry = tel
	})
	if testTelemetry == nil {
		t.Fatal("telemetry setup failed in an earlier test")
	}
	// Another test may have run `podvisor up` in this process since, which
	// installs providers of its own: the services started next record here.
	otel.SetTracerProvider(testTelemetry.Tracer)
	otel.SetMeterProvider(testTelemetry.Meter)
	return testTelemetry, testRecorder
}

// upWithTracing is upForTest with every service, the span recorder and the
// /metrics handler that `podvisor up` installs.
func upWithTracing(t *testing.T) string {
	t.Helper()
	tel, rec := sharedTelemetry(t)
	_, dir := startUp(t, "all", allinone.Config{HostsPerCluster: 2, Recorder: rec, Metrics: tel.MetricsHandler()})
	return dir
}

func podRecord(t *testing.T, b *bus.Bus, ns, name string) *events.PodRecord {
	t.Helper()
	kv, err := b.KV(context.Background(), events.BucketPods)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), events.PodRecordKey(ns, name))
	if err != nil {
		return nil
	}
	var r events.PodRecord
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		t.Fatal(err)
	}
	return &r
}

// One pod is deployed until its VM runs (no guests here: Starting) and then
// migrated; its trace, read back through `podvisor trace pod`, holds spans
// of all five services under the one trace id its record keeps.
func TestTraceOfOnePodCrossesAllFiveServices(t *testing.T) {
	dir := upWithTracing(t)
	vars, _ := serve.ReadEnvFile(dir + "/env")
	b, err := bus.Dial(context.Background(), bus.ConnConfig{URL: vars["PODVISOR_NATS_URL"], CredsFile: vars["PODVISOR_NATS_CREDS"], CAFile: vars["PODVISOR_NATS_CA"], Name: "trace-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	pod := "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec: {containers: [{name: a, image: " +
		vars["PODVISOR_REGISTRY"] + "/podvisor/web:1.0, resources: {requests: {cpu: 250m, memory: 128Mi}}}]}\n"
	if out, errOut, code := run(t, dir, pod, "apply", "-f", "-"); code != 0 {
		t.Fatalf("apply: exit %d: %s %s", code, out, errOut)
	}
	var rec *events.PodRecord
	eventually(t, "pod VM running", func() bool {
		rec = podRecord(t, b, "shop", "web")
		return rec != nil && rec.Phase == events.PodPhaseStarting
	})
	if rec.TraceParent == "" {
		t.Fatal("the pod record keeps no traceparent")
	}
	traceID, err := allinone.TraceIDFromTraceparent(rec.TraceParent)
	if err != nil {
		t.Fatal(err)
	}
	// The trace starts at the user's command: pod.requested carries the
	// sampled context of apply's span, the services' answers carry it on,
	// and the CLI's publish span is a child of that span, not the root.
	checkFlowFromCLI(t, dir, "shop/web", traceID, events.TypePodAccepted, events.TypePodScheduled, events.TypePodNetworkAttached)
	var cliSpans int
	eventually(t, "the CLI's publish span in the pod's trace", func() bool {
		cliSpans = 0
		for _, sp := range traceOf(t, dir, "--flow-only").Spans {
			if sp.Service == "cli" {
				cliSpans++
				if sp.ParentID == "" {
					t.Fatalf("the CLI's span %q is the root of the pod's trace: the command's span should be its parent", sp.Name)
				}
			}
		}
		return cliSpans > 0
	})

	// Migrate within the pod's trace, as drain and host-loss do: the request
	// is published under the span context the record's traceparent names.
	podCtx := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(),
		propagation.MapCarrier{"traceparent": rec.TraceParent}))
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), podCtx)
	ev, err := bus.NewEvent(CLISource, events.TypeMigrationRequested, "shop/web",
		&events.MigrationRequested{MigrationRef: events.MigrationRef{ID: "m-trace", Namespace: "shop", Pod: "web"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	from := rec.Host
	eventually(t, "pod migrated", func() bool {
		rec = podRecord(t, b, "shop", "web")
		return rec.Host != from && rec.Phase == events.PodPhaseStarting
	})

	// The trace the record names crosses all five services: the scheduler,
	// image cache and network-config handle pod.accepted in it, and the
	// migration was requested in it.
	var flow traceJSON
	eventually(t, "the pod's trace with all five services", func() bool {
		flow = traceOf(t, dir, "--flow-only")
		return len(flow.Services) >= 5
	})
	all, err := runner.Select("all") // the host agents are not among them
	if err != nil {
		t.Fatal(err)
	}
	for _, spec := range all {
		svc := spec.Name
		if svc == "guestcluster" {
			continue // only a guest cluster's pods pass through it
		}
		found := false
		for _, sp := range flow.Spans {
			if sp.TraceID != traceID {
				t.Fatalf("--flow-only: span %s %q belongs to trace %s, want only the pod's %s", sp.SpanID, sp.Name, sp.TraceID, traceID)
			}
			found = found || sp.Service == svc
		}
		if !found {
			t.Errorf("no span of %s in the pod's trace (services: %v)", svc, flow.Services)
		}
	}
	if flow.TraceID != traceID || flow.Spans[0].OffsetMS != 0 || flow.DurationMS <= 0 {
		t.Errorf("trace header = %s, first offset %v, duration %v", flow.TraceID, flow.Spans[0].OffsetMS, flow.DurationMS)
	}
	// Events published outside a handler (the scheduler's retry of a pod
	// that waited for its network, the end of a relocation) begin traces of
	// their own; the default view joins them, so it reaches pod.vm.ready and
	// migration.completed.
	var joined traceJSON
	eventually(t, "the joined traces up to migration.completed", func() bool {
		joined = traceOf(t, dir)
		names := map[string]bool{}
		for _, sp := range joined.Spans {
			names[spanLabel(sp.Name)] = true
		}
		return names["provisioner pod.network.attached"] && names["publish pv.pod.vm.ready"] && names["migration migration.target.reserved"] &&
			names["publish pv.migration.completed"]
	})
	if len(joined.Spans) <= len(flow.Spans) {
		t.Errorf("joined view has %d spans, the flow alone %d", len(joined.Spans), len(flow.Spans))
	}
	t.Logf("pod trace: %d spans; with linked traces: %d spans", len(flow.Spans), len(joined.Spans))

	table, errOut, code := run(t, dir, "", "trace", "pod", "web", "-n", "shop", "--width", "140")
	if code != 0 {
		t.Fatalf("trace: exit %d: %s", code, errOut)
	}
	if testing.Verbose() {
		t.Log("\n" + table)
	}
	for _, want := range []string{"SERVICE", "OFFSET", "DURATION", "█", "migration", "netconfig", "pod.vm.ready", "migration.completed", "TR"} {
		if !strings.Contains(table, want) {
			t.Errorf("waterfall lacks %q:\n%s", want, table)
		}
	}
	for i, line := range strings.Split(strings.TrimRight(table, "\n"), "\n") {
		if n := len([]rune(line)); n > 142 {
			t.Errorf("line %d is %d columns wide, want at most 140 (+ status mark):\n%s", i, n, line)
		}
	}

	if _, errOut, code := run(t, dir, "", "trace", "pod", "nope", "-n", "shop"); code == 0 || !strings.Contains(errOut, `"shop/nope" not found`) {
		t.Errorf("trace of a missing pod: exit %d, %q", code, errOut)
	}

	// The podvisor binary installs no tracer provider unless the OTEL_*
	// environment names an exporter: apply from such a process still
	// starts the pod's trace, and the services' spans join it.
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(noop.NewTracerProvider())
	plain := strings.Replace(pod, "name: web", "name: plain", 1)
	out, errOut, code := run(t, dir, plain, "apply", "-f", "-")
	otel.SetTracerProvider(prev)
	if code != 0 {
		t.Fatalf("apply without a tracer provider: exit %d: %s %s", code, out, errOut)
	}
	var plainRec *events.PodRecord
	eventually(t, "pod plain with its traceparent", func() bool {
		plainRec = podRecord(t, b, "shop", "plain")
		return plainRec != nil && plainRec.TraceParent != ""
	})
	plainTrace, err := allinone.TraceIDFromTraceparent(plainRec.TraceParent)
	if err != nil {
		t.Fatal(err)
	}
	checkFlowFromCLI(t, dir, "shop/plain", plainTrace, events.TypePodAccepted)
	eventually(t, "services' spans in plain's trace", func() bool {
		out, _, code := run(t, dir, "", "trace", "pod", "plain", "-n", "shop", "-o", "json", "--flow-only")
		var got traceJSON
		if code != 0 || json.Unmarshal([]byte(out), &got) != nil || got.TraceID != plainTrace {
			return false
		}
		for _, sp := range got.Spans {
			if sp.TraceID == plainTrace && sp.Service != "cli" && !strings.HasPrefix(sp.Name, "publish ") {
				return true
			}
		}
		return false
	})
}

// checkFlowFromCLI checks that the pod.requested of key, published by the
// CLI, starts trace traceID with a sampled context that the events of
// answers (types, each published by a service in the request's flow) carry
// on.
func checkFlowFromCLI(t *testing.T, dir, key, traceID string, answers ...string) {
	t.Helper()
	var tps map[string]string
	eventually(t, "the events of "+key, func() bool {
		tps = traceparentsOf(t, dir, key)
		for _, typ := range answers {
			if tps[typ] == "" {
				return false
			}
		}
		return tps[events.TypePodRequested] != ""
	})
	requested := tps[events.TypePodRequested]
	if id, _ := allinone.TraceIDFromTraceparent(requested); id != traceID || !strings.HasSuffix(requested, "-01") {
		t.Fatalf("pod.requested of %s carries traceparent %q, want a sampled context in trace %s", key, requested, traceID)
	}
	for _, typ := range answers {
		if id, _ := allinone.TraceIDFromTraceparent(tps[typ]); id != traceID {
			t.Errorf("%s of %s carries traceparent %q, want trace %s", typ, key, tps[typ], traceID)
		}
	}
}

// traceparentsOf returns the traceparent of the first event of each type
// about subject, as `podvisor events -o json` prints them.
func traceparentsOf(t *testing.T, dir, subject string) map[string]string {
	t.Helper()
	out, errOut, code := run(t, dir, "", "events", "-o", "json")
	if code != 0 {
		t.Fatalf("events: exit %d: %s", code, errOut)
	}
	tps := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev struct {
			Type, Subject, Traceparent string
		}
		if json.Unmarshal([]byte(line), &ev) == nil && ev.Subject == subject && tps[ev.Type] == "" {
			tps[ev.Type] = ev.Traceparent
		}
	}
	return tps
}

func traceOf(t *testing.T, dir string, flags ...string) traceJSON {
	t.Helper()
	out, errOut, code := run(t, dir, "", append([]string{"trace", "pod", "web", "-n", "shop", "-o", "json"}, flags...)...)
	if code != 0 {
		t.Logf("trace: exit %d: %s", code, errOut)
		return traceJSON{}
	}
	var got traceJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("trace -o json: %v\n%s", err, out)
	}
	return got
}

func TestWaterfallBarsAndNames(t *testing.T) {
	for _, tt := range []struct {
		offset, dur, total time.Duration
		width              int
		want               string
	}{
		{0, 10, 10, 10, "██████████"},
		{5, 5, 10, 10, "     █████"},
		{0, 0, 10, 10, "█         "}, // too short for a cell still shows
		{10, 0, 10, 4, "   █"},
	} {
		if got := bar(tt.offset, tt.dur, tt.total, tt.width); got != tt.want {
			t.Errorf("bar(%v, %v, %v, %d) = %q, want %q", tt.offset, tt.dur, tt.total, tt.width, got, tt.want)
		}
	}
	if got := spanLabel("provisioner io.podvisor.pod.network.attached.v1"); got != "provisioner pod.network.attached" {
		t.Errorf("spanLabel = %q", got)
	}
	t0 := time.Unix(100, 0)
	spans := []allinone.TraceSpan{
		{SpanID: "b", ParentID: "a", Name: "scheduler io.podvisor.pod.accepted.v1", Start: t0.Add(2 * time.Millisecond), End: t0.Add(3 * time.Millisecond)},
		{SpanID: "a", Name: "publish pv.pod.requested", Service: "podvisor", Attrs: map[string]string{"ce.source": "podvisor/cli"}, Start: t0, End: t0.Add(time.Millisecond)},
		{SpanID: "c", ParentID: "b", Name: "publish pv.pod.scheduled", Start: t0.Add(2500 * time.Microsecond), End: t0.Add(3 * time.Millisecond)},
	}
	attributeServices(spans)
	rows := waterfallRows(spans, t0)
	var order []string
	for _, r := range rows {
		order = append(order, r.span.SpanID+":"+r.span.Service)
	}
	if strings.Join(order, ",") != "a:cli,b:scheduler,c:scheduler" || rows[2].depth != 2 {
		t.Errorf("rows = %v (depth of c %d), want parent before child and a publish inside a handler named after its service", order, rows[2].depth)
	}
	if err := (allinone.TraceQuery{TraceID: "xyz"}).Validate(); err == nil || !strings.Contains(err.Error(), "traceId") {
		t.Errorf("bad trace id: %v", err)
	}
}

// Two flows ten minutes apart (an apply, then a re-apply) each get their own
// time axis: the first flow's spans are not squashed into one column.
func TestWaterfallAxisPerTrace(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	span := func(trace, id, name string, from, to time.Duration) allinone.TraceSpan {
		return allinone.TraceSpan{TraceID: trace, SpanID: id, Name: name, Service: "scheduler", Start: t0.Add(from), End: t0.Add(to)}
	}
	spans := []allinone.TraceSpan{
		span("aaaa", "1", "first", 0, 100*time.Millisecond),
		span("aaaa", "2", "second", 50*time.Millisecond, 100*time.Millisecond),
		span("bbbb", "3", "later", 10*time.Minute, 10*time.Minute+100*time.Millisecond),
	}
	var out strings.Builder
	renderWaterfall(&out, "default/web", "aaaa", spans, 120)
	for _, line := range strings.Split(out.String(), "\n") {
		if !strings.Contains(line, " second ") {
			continue
		}
		bar := line[strings.Index(line, "|")+1 : strings.LastIndex(line, "|")]
		filled := strings.Count(bar, "█")
		// The span is the second half of its trace: about half the bar.
		if filled < len([]rune(bar))/3 || !strings.HasSuffix(strings.TrimRight(bar, " "), "█") {
			t.Errorf("span of the first trace drawn on a shared axis: %q", line)
		}
		return
	}
	t.Fatalf("no row for span 'second':\n%s", out.String())
}
