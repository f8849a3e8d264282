package bench

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner"
	"github.com/podvisor/podvisor/services/provisioner/templates"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/ociregistry"
	"github.com/podvisor/podvisor/shared/sim/guest"
	"github.com/podvisor/podvisor/shared/telemetry"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Fork is request → container running for pod VMs forked from a warm
// template (InstantClone) against pod VMs created, in one run on one
// simulated host with guests on: pairs of pods of the same image, one
// created (podvisor.io/instant-clone: "false") then one forked, one pod at
// a time, so each start is measured alone.
type Fork struct {
	// Skipped says why the section did not run (as DataPlane's).
	Skipped string `json:"skipped,omitempty"`
	Pairs   int    `json:"pairs"`
	// Channel is how the guests reach their host agents
	// (Config.DataPlaneChannel): socket, or serial (network serial ports
	// to the concentrator, as pod VMs on a vCenter).
	Channel string  `json:"channel"`
	Created Latency `json:"created_ms"`
	Forked  Latency `json:"forked_ms"`
	// CreatedVMReady and ForkedVMReady are request → pod.vm.ready (the
	// VM made and powered on): the rest of each start is its guest's.
	CreatedVMReady Latency `json:"created_vm_ready_ms"`
	ForkedVMReady  Latency `json:"forked_vm_ready_ms"`
	NotForked      int     `json:"not_forked"`
	// Resumed counts the forked pod VMs whose guest resumed the template's
	// standby rather than booting (shared/sim/standby.go).
	Resumed int `json:"resumed"`
	// CreatedToForkedP50 is Created.P50 / Forked.P50 (target ≥ 3).
	CreatedToForkedP50 float64 `json:"created_to_forked_p50"`
	// CreatedStagesP50MS and ForkedStagesP50MS are the median times from
	// the request to each of the pod's events (the pipeline's stages, then
	// vm_running for pod.vm.ready and running for pod.running): both kinds
	// go through the same stages up to network_attached, and differ after.
	// The guest's stages come from its console: guest_started (its agent
	// starts the pod: a created VM's at boot, a forked VM's when it takes
	// the standby over, inside the instant clone, so before vm_running),
	// disks_ready and container_started (the runtime returned).
	CreatedStagesP50MS map[string]float64 `json:"created_stages_p50_ms"`
	ForkedStagesP50MS  map[string]float64 `json:"forked_stages_p50_ms"`
	// CreatedSpansP50MS and ForkedSpansP50MS are the median durations of
	// the spans of each kind's pods, by span name (summed per pod when a
	// pod has several of a name): where the time between the stages goes.
	CreatedSpansP50MS map[string]float64 `json:"created_spans_p50_ms"`
	ForkedSpansP50MS  map[string]float64 `json:"forked_spans_p50_ms"`
}

// runFork starts an all-in-one with one host, guests on and one warm
// template per host, prepares the template with a first pod, then
// measures cfg.ForkPairs created and forked pods alternately.
func runFork(ctx context.Context, cfg Config, p progress) (*Fork, error) {
	agent := cfg.Agent
	if agent == "" {
		agent = allinone.DefaultAgentPath()
	}
	out := &Fork{Pairs: cfg.ForkPairs, Channel: cmp.Or(cfg.DataPlaneChannel, allinone.GuestChannelSocket)}
	if why := dataPlaneReady(agent); why != "" {
		out.Skipped = why
		return out, nil
	}
	// The services' spans, recorded in this process: the section is the
	// bench's last, so the tracing costs the others nothing.
	spans := telemetry.NewRecorder(0)
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sdktrace.NewSimpleSpanProcessor(spans)))
	otel.SetTracerProvider(tp)
	defer func() { _ = tp.Shutdown(context.Background()) }()
	sys, b, stop, err := startGuests(ctx, cfg, agent, out.Channel, 1, 1, map[string]string{provisioner.EnvTemplatesWarm: "1"}, bus.IdentityAdmin)
	if err != nil {
		return nil, err
	}
	defer stop()
	if err := waitReady(ctx, b, 1); err != nil {
		return nil, err
	}
	w, err := newWatcher(ctx, b)
	if err != nil {
		return nil, err
	}
	defer w.stop()
	image := sys.Endpoints.Registry + "/" + ociregistry.BusyboxRepoTag

	// The first pod pulls the image and has the template built; the
	// measured pods start once the template's guest is prepared.
	if _, err := runPods(ctx, b, w, image, []string{"fk-warm"}, 0, 2*time.Minute); err != nil {
		return nil, fmt.Errorf("first pod: %w", err)
	}
	tmpl, err := waitTemplate(ctx, b, 2*time.Minute)
	if err != nil {
		return nil, err
	}
	// The template's first fork boots its standby (shared/sim/standby.go):
	// the guest each later fork resumes, as a child of a running VM does
	// on vSphere. It is not measured.
	if _, _, err := runPodsAnnotated(ctx, b, w, image, "fk-forked-first", map[string]string{events.AnnotationInstantClone: "true"}, 2*time.Minute); err != nil {
		return nil, fmt.Errorf("first fork: %w", err)
	}
	p.say("fork: %d created and %d forked pod VMs, one at a time (%s channels)…", cfg.ForkPairs, cfg.ForkPairs, out.Channel)
	pods, err := b.KV(ctx, events.BucketPods)
	if err != nil {
		return nil, err
	}
	var created, forked, createdVM, forkedVM latencies
	createdStages, forkedStages := map[string][]float64{}, map[string][]float64{}
	createdSpans, forkedSpans := map[string][]float64{}, map[string][]float64{}
	for i := range cfg.ForkPairs {
		// The standby the last fork used is replaced in the background:
		// each pair starts once it is prepared, so that its disk copy and
		// boot take nothing from either pod measured.
		waitStandby(ctx, sys.Datacenter.Guests(), tmpl.VMRef, 30*time.Second)
		for _, fork := range []bool{false, true} {
			name := fmt.Sprintf("fk-created-%03d", i)
			if fork {
				name = fmt.Sprintf("fk-forked-%03d", i)
			}
			stages, sent, err := runPodsAnnotated(ctx, b, w, image, name, map[string]string{events.AnnotationInstantClone: fmt.Sprint(fork)}, 2*time.Minute)
			if err != nil {
				return nil, err
			}
			into, spansInto := createdStages, createdSpans
			if fork {
				into, spansInto = forkedStages, forkedSpans
			}
			for st, v := range stages {
				into[st] = append(into[st], v)
			}
			for n, v := range spanDurations(spans, events.PodKey(Namespace, name)) {
				spansInto[n] = append(spansInto[n], v)
			}
			lat, vmLat := stages[stageRunning], stages[stageVMRunning]
			var r events.PodRecord
			if e, err := pods.Get(ctx, events.PodRecordKey(Namespace, name)); err == nil {
				_ = json.Unmarshal(e.Value(), &r)
			}
			if g, ok := sys.Datacenter.Guests().Guest(r.VMRef); ok && r.VMRef != "" {
				for st, v := range guestStages(filepath.Join(g.Dir, "console.log"), sent) {
					into[st] = append(into[st], v)
				}
			}
			if fork {
				forked.add(lat)
				forkedVM.add(vmLat)
				if r.UID != "" && !r.IsTrue(events.PodConditionVMForked) {
					out.NotForked++
				}
				if g, ok := sys.Datacenter.Guests().Guest(r.VMRef); ok && r.VMRef != "" && g.Resumed {
					out.Resumed++
				}
			} else {
				created.add(lat)
				createdVM.add(vmLat)
			}
		}
	}
	out.Created, out.Forked = created.latency(), forked.latency()
	out.CreatedVMReady, out.ForkedVMReady = createdVM.latency(), forkedVM.latency()
	out.CreatedStagesP50MS, out.ForkedStagesP50MS = medians(createdStages), medians(forkedStages)
	out.CreatedSpansP50MS, out.ForkedSpansP50MS = medians(createdSpans), medians(forkedSpans)
	if out.Forked.P50 > 0 {
		out.CreatedToForkedP50 = out.Created.P50 / out.Forked.P50
	}
	p.say("fork: created p50 %.0f ms (VM ready %.0f ms), forked p50 %.0f ms (VM ready %.0f ms): %.2fx (%d forks fell back to a create, %d of %d resumed a standby)",
		out.Created.P50, out.CreatedVMReady.P50, out.Forked.P50, out.ForkedVMReady.P50, out.CreatedToForkedP50, out.NotForked, out.Resumed, cfg.ForkPairs)
	p.say("fork: stage medians from the request, created: %s", stageLine(out.CreatedStagesP50MS))
	p.say("fork: stage medians from the request, forked:  %s", stageLine(out.ForkedStagesP50MS))
	p.say("fork: provisioner span medians, created: %s", spanLine(out.CreatedSpansP50MS))
	p.say("fork: provisioner span medians, forked:  %s", spanLine(out.ForkedSpansP50MS))
	return out, nil
}

// Stage names of runPodsAnnotated besides the pipeline's stageTypes.
const (
	stageVMRunning = "vm_running" // pod.vm.ready, as in stageTypes
	stageRunning   = "running"    // pod.running
)

// spanDurations sums, by span name, the durations of the spans of the
// traces that touched the pod key (every service's handling of its events,
// the provisioner's steps, the publishes), in milliseconds.
func spanDurations(rec *telemetry.Recorder, key string) map[string]float64 {
	traces := map[trace.TraceID]bool{}
	for _, sp := range rec.Find(func(sp telemetry.Span) bool {
		return sp.Attrs["ce.subject"] == key || sp.Attrs["pv.key"] == key || sp.Attrs["pod"] == key
	}) {
		traces[sp.TraceID] = true
	}
	out := map[string]float64{}
	for _, sp := range rec.Find(func(sp telemetry.Span) bool { return traces[sp.TraceID] }) {
		out[sp.Name] += ms(sp.Duration())
	}
	return out
}

// spanLine prints the provisioner's span medians, the longest first.
func spanLine(m map[string]float64) string {
	provisioner := map[string]float64{}
	for n, v := range m {
		if strings.HasPrefix(n, "provisioner") {
			provisioner[n] = v
		}
	}
	return longestFirst(provisioner, len(provisioner))
}

// longestFirst prints at most n span medians, the longest first.
func longestFirst(m map[string]float64, n int) string {
	var names []string
	for name := range m {
		names = append(names, name)
	}
	slices.SortFunc(names, func(a, b string) int { return cmp.Compare(m[b], m[a]) })
	var parts []string
	for _, name := range names[:min(n, len(names))] {
		parts = append(parts, fmt.Sprintf("%s %.1f", name, m[name]))
	}
	return strings.Join(parts, ", ") + " ms"
}

// medians is the median of each stage's values.
func medians(stages map[string][]float64) map[string]float64 {
	out := map[string]float64{}
	for st, v := range stages {
		slices.Sort(v)
		out[st] = percentile(v, 0.5)
	}
	return out
}

// stageLine prints stage medians in the order a pod goes through them.
func stageLine(m map[string]float64) string {
	var parts []string
	order := append(slices.Clone(stageTypes), []struct{ name, ceType string }{
		{stageGuestStarted, ""}, {stageDisksReady, ""}, {stageContainerCreated, ""}, {stageNetworkReady, ""},
		{stageContainerStarted, ""}, {stageRunning, events.TypePodRunning}}...)
	for _, st := range order {
		if v, ok := m[st.name]; ok {
			parts = append(parts, fmt.Sprintf("%s %.0f", st.name, v))
		}
	}
	return strings.Join(parts, ", ") + " ms"
}

// runPodsAnnotated requests one pod with annotations and returns the
// milliseconds from its request to each of its events: the pipeline's
// stages (stageTypes), then stageRunning for its pod.running; and when the
// request was sent.
func runPodsAnnotated(ctx context.Context, b *bus.Bus, w *watcher, image, name string, ann map[string]string, timeout time.Duration) (map[string]float64, time.Time, error) {
	pod := benchPod(name, image)
	pod.Annotations = ann
	pod.Spec.Containers[0].Command = dataPlaneCommand
	pod.Spec.TerminationGracePeriodSeconds = new(int64)
	ev, err := bus.NewEvent(Source, events.TypePodRequested, events.PodKey(Namespace, name), &events.PodRequested{Pod: *pod})
	if err != nil {
		return nil, time.Time{}, err
	}
	sent := time.Now()
	if err := b.Publish(ctx, ev); err != nil {
		return nil, sent, fmt.Errorf("publish %s: %w", name, err)
	}
	key := events.PodKey(Namespace, name)
	w.waitFor(ctx, timeout, func() bool { _, ok := w.at(key, events.TypePodRunning); return ok })
	at, ok := w.at(key, events.TypePodRunning)
	if !ok {
		return nil, sent, fmt.Errorf("pod %s not running within %s", name, timeout)
	}
	stages := map[string]float64{stageRunning: ms(at.Sub(sent))}
	for _, st := range stageTypes {
		if t, ok := w.at(key, st.ceType); ok {
			stages[st.name] = ms(t.Sub(sent))
		}
	}
	return stages, sent, nil
}

// Stages of a pod's guest, read from its console (the agent's log lines):
// when its agent started the pod (a created VM's agent at its boot, a
// forked VM's when it took the standby over), when its disks were mounted,
// and when its first container's runtime returned.
const (
	stageGuestStarted     = "guest_started"
	stageDisksReady       = "disks_ready"
	stageContainerStarted = "container_started"
	// The agent creates the containers before it configures the network
	// and starts them after (a fork made before the pod's network was
	// attached waits for it in between).
	stageContainerCreated = "container_created"
	stageNetworkReady     = "network_ready"
)

// guestStages reads a guest's console and returns the milliseconds from
// sent to each guest stage it finds after sent. The agent logs the boot
// phase "init" with its duration, so the agent's start is that line's time
// less its ms (0 for a standby taken over: its start is the takeover).
func guestStages(console string, sent time.Time) map[string]float64 {
	b, err := os.ReadFile(console)
	if err != nil {
		return nil
	}
	out := map[string]float64{}
	for _, l := range strings.Split(string(b), "\n") {
		at, ok := logTime(l)
		if !ok || at.Before(sent) {
			continue
		}
		switch {
		case strings.Contains(l, `msg="boot phase" phase=init`):
			out[stageGuestStarted] = ms(at.Add(-logMS(l, "ms")).Sub(sent))
		case strings.Contains(l, `msg="boot phase" phase=disks`):
			out[stageDisksReady] = ms(at.Sub(sent))
		case strings.Contains(l, `msg="container created"`):
			if _, seen := out[stageContainerCreated]; !seen {
				out[stageContainerCreated] = ms(at.Sub(sent))
			}
		case strings.Contains(l, `msg="boot phase" phase=network`):
			out[stageNetworkReady] = ms(at.Sub(sent))
		case strings.Contains(l, `msg="container started"`):
			if _, seen := out[stageContainerStarted]; !seen {
				out[stageContainerStarted] = ms(at.Sub(sent))
			}
		}
	}
	return out
}

// logTime is the time= of a log line of the agent (slog's text format).
func logTime(line string) (time.Time, bool) {
	v, ok := logField(line, "time")
	if !ok {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	return t, err == nil
}

// logMS is a field of a log line in milliseconds, as a duration (0 when
// absent).
func logMS(line, key string) time.Duration {
	v, _ := logField(line, key)
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return 0
	}
	return time.Duration(f * float64(time.Millisecond))
}

// logField is the unquoted value of key=value in a log line.
func logField(line, key string) (string, bool) {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v, true
		}
	}
	return "", false
}

// waitStandby waits (at most timeout) for the template VM's standby guest
// to be prepared (its agent past init with the disks mounted, as its
// console says), so that its boot takes nothing from the pod measured next.
func waitStandby(ctx context.Context, g *guest.Manager, vm string, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if sb, ok := g.Standby(vm); ok {
			if b, err := os.ReadFile(filepath.Join(sb.Dir, "console.log")); err == nil && bytes.Contains(b, standbyPrepared) {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// standbyPrepared is what a standby's agent logs once it waits to be taken
// over (agent/cmd/podvm-agent, standBy).
var standbyPrepared = []byte("standby: prepared, waiting to be taken over")

// waitTemplate waits for a template whose guest is prepared.
func waitTemplate(ctx context.Context, b *bus.Bus, timeout time.Duration) (templates.Record, error) {
	kv, err := b.KV(ctx, bus.BucketPodTemplates)
	if err != nil {
		return templates.Record{}, err
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if lister, err := kv.ListKeys(ctx); err == nil {
			for k := range lister.Keys() {
				if e, err := kv.Get(ctx, k); err == nil {
					var r templates.Record
					if json.Unmarshal(e.Value(), &r) == nil && r.State == templates.StateReady && r.GuestReady {
						return r, nil
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return templates.Record{}, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return templates.Record{}, fmt.Errorf("no template prepared within %s", timeout)
}
