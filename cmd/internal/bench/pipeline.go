package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/cmd/internal/runner"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/config"
	"github.com/podvisor/podvisor/shared/sim"
)

// Namespace holds the bench's pods.
const Namespace = "bench"

// Source is the CloudEvent source of the bench's requests.
const Source = "podvisor/bench"

// tuning are service settings for a burst of pods on the simulator, applied
// unless the environment sets them: more pods in flight per service than the
// defaults (which suit a real vCenter's slower tasks), and VM folders
// sharded because vCenter serializes creates in one folder. The
// provisioner's pod events get its default, 64 at once, named here so that
// setup.settings shows it (PODVISOR_PROVISIONER_POD_WORKERS=32 is the bench's
// value before pod events had their own count, PODVISOR_PROVISIONER_WORKERS).
var tuning = map[string]string{
	"PODVISOR_PROVISIONER_POD_WORKERS":   "64",
	"PODVISOR_PROVISIONER_FOLDER_SHARDS": "16",
}

// applyTuning returns the tuning in force (the environment wins over the
// bench's values) and the settings source the services read it from.
func applyTuning() (map[string]string, config.Source) {
	src := config.Layered(config.Env(), config.Map(tuning))
	settings := map[string]string{}
	for k := range tuning {
		settings[k], _ = src(k)
	}
	return settings, src
}

// benchPod is the manifest of pod name: one container of image with the
// bench's small requests.
func benchPod(name, image string) *corev1.Pod {
	return &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: Namespace},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "app", Image: image,
			Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse(podCPU),
				corev1.ResourceMemory: resource.MustParse(podMemory),
			}},
		}}},
	}
}

// benchPodSize is what the shared sizing gives a bench pod: the raw
// baselines create VMs of exactly this size.
func benchPodSize() events.PodVMSize { return events.SizePodVM(benchPod("size", "registry.local/x:1")) }

// watcher follows the pod events of the run from before the first publish,
// so no answer is missed, and keeps the first time each pod reached each
// event type.
type watcher struct {
	mu   sync.Mutex
	seen map[string]map[string]time.Time // subject → ce type → event time
	// expected are the pods of the run, settled how many of them reached
	// VM running (pod.vm.ready), Failed or Rejected: counted as events arrive, so that
	// waiting for the run costs nothing per event (a scan of every pod on
	// every event took CPU from the pipeline it measures).
	expected map[string]bool
	settled  int
	pulled   []events.ImagePulled
	changed  chan struct{}
	stops    []func()
}

func newWatcher(ctx context.Context, b *bus.Bus) (*watcher, error) {
	w := &watcher{seen: map[string]map[string]time.Time{}, changed: make(chan struct{}, 1)}
	for _, f := range []struct {
		stream   string
		subjects []string
	}{
		{events.StreamPods, []string{events.SubjectPodVMReady, events.SubjectPodRunning, events.SubjectPodFailed, events.SubjectPodImagesReady, events.SubjectPodRejected,
			events.SubjectPodAccepted, events.SubjectPodScheduled, events.SubjectPodUnschedulable, events.SubjectPodNetworkAttached}},
		{events.StreamImages, []string{events.SubjectImagePulled}},
	} {
		c, err := b.JetStream().OrderedConsumer(ctx, f.stream, jetstream.OrderedConsumerConfig{
			FilterSubjects: f.subjects, DeliverPolicy: jetstream.DeliverNewPolicy,
		})
		if err != nil {
			w.stop()
			return nil, err
		}
		cc, err := c.Consume(func(m jetstream.Msg) {
			if ev, err := bus.DecodeMessage(m); err == nil {
				w.add(ev)
			}
		})
		if err != nil {
			w.stop()
			return nil, err
		}
		w.stops = append(w.stops, cc.Stop)
	}
	return w, nil
}

func (w *watcher) add(ev event.Event) {
	at := ev.Time()
	if at.IsZero() {
		at = time.Now()
	}
	w.mu.Lock()
	if ev.Type() == events.TypeImagePulled {
		var p events.ImagePulled
		if json.Unmarshal(ev.Data(), &p) == nil {
			w.pulled = append(w.pulled, p)
		}
	} else {
		m := w.seen[ev.Subject()]
		if m == nil {
			m = map[string]time.Time{}
			w.seen[ev.Subject()] = m
		}
		if _, ok := m[ev.Type()]; !ok {
			if terminal[ev.Type()] && w.expected[ev.Subject()] && !w.settledLocked(m) {
				w.settled++
			}
			m[ev.Type()] = at
		}
	}
	w.mu.Unlock()
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// terminal are the event types that settle a pod for the run.
var terminal = map[string]bool{events.TypePodVMReady: true, events.TypePodFailed: true, events.TypePodRejected: true}

func (w *watcher) settledLocked(m map[string]time.Time) bool {
	for t := range terminal {
		if _, ok := m[t]; ok {
			return true
		}
	}
	return false
}

// expect sets the pods of the run (before their requests go out).
func (w *watcher) expect(keys []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.expected = map[string]bool{}
	w.settled = 0
	for _, k := range keys {
		w.expected[k] = true
		if w.settledLocked(w.seen[k]) {
			w.settled++
		}
	}
}

// settledCount is how many expected pods settled so far.
func (w *watcher) settledCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.settled
}

func (w *watcher) stop() {
	for _, s := range w.stops {
		s()
	}
}

func (w *watcher) at(subject, ceType string) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, ok := w.seen[subject][ceType]
	return t, ok
}

func (w *watcher) pulledBytes() (n int64, count int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.pulled {
		n += p.Bytes
	}
	return n, len(w.pulled)
}

// waitFor blocks until done reports true, ctx ends or timeout passes.
func (w *watcher) waitFor(ctx context.Context, timeout time.Duration, done func() bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for !done() {
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return done()
		case <-w.changed:
		case <-tick.C:
		}
	}
	return true
}

// request publishes pod.requested for one bench pod.
func request(ctx context.Context, b *bus.Bus, name, image string) error {
	pod := benchPod(name, image)
	ev, err := bus.NewEvent(Source, events.TypePodRequested, events.PodKey(Namespace, name), &events.PodRequested{Pod: *pod})
	if err != nil {
		return err
	}
	// The stream stores one message at a time, each synced to disk: with
	// thousands of requests in flight on a busy machine the server's
	// acknowledgement can take longer than the client's default 5 s (a
	// 5,000-host run failed so). The request counts from before the
	// publish, so a longer wait is measured, not hidden.
	pctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	return b.Publish(pctx, ev)
}

// publishTimeout bounds the wait for the server's acknowledgement of one
// request.
const publishTimeout = 2 * time.Minute

// runPipeline starts the all-in-one, measures the image cache, then applies
// the pods and measures them to VM running (pod.vm.ready). It returns the simulated hosts for
// the scheduling-only run.
func runPipeline(ctx context.Context, cfg Config, clusters, per int, res *Result, p progress) ([]sim.HostSpec, error) {
	settings, src := applyTuning()
	res.Setup.Settings = settings
	specs, err := runner.Select("all")
	if err != nil {
		return nil, err
	}
	aio := allinone.Config{
		StateDir: cfg.StateDir, Clusters: clusters, HostsPerCluster: per, Services: specs, Seed: 1, Logger: cfg.Logger,
		Settings: src,
		// The pipeline measures the control plane to VM running: no guests,
		// even where an agent sits beside the binary (make build puts one
		// there), or every pod VM would boot one on the same cores.
		Guests: allinone.GuestsOff,
	}
	if cfg.ServicesApart {
		aio.Replicas, aio.ServiceEnv = 1, maps.Clone(settings)
		if cfg.MemProfile != "" {
			// Each service process serves its heap profile beside its
			// /metrics (writeHeapProfiles fetches them).
			aio.ServiceEnv["PODVISOR_PROFILING"] = "true"
		}
	}
	sys, err := allinone.Start(ctx, aio)
	if err != nil {
		return nil, err
	}
	defer sys.Close()
	hosts := sys.Datacenter.Hosts()
	b, err := sys.Dial(ctx, "bench")
	if err != nil {
		return nil, err
	}
	defer b.Close()
	if err := waitReady(ctx, b, len(hosts)); err != nil {
		return nil, err
	}
	w, err := newWatcher(ctx, b)
	if err != nil {
		return nil, err
	}
	defer w.stop()

	image := sys.Endpoints.Registry + "/podvisor/web:1.0"
	res.Setup.Image = image
	p.say("image cache: %s cold, then warm…", image)
	if res.ImageCache, err = measureImageCache(ctx, b, w, image); err != nil {
		return nil, err
	}
	if cfg.ImageMiB > 0 {
		p.say("image disks: a %d MiB image cold against go-containerregistry pull+extract, then warm…", cfg.ImageMiB)
		if res.ImageDisks, err = measureImageDisks(ctx, b, w, sys.Endpoints.Registry, sys.RegistryOptions(), cfg.ImageMiB); err != nil {
			return nil, fmt.Errorf("image disks: %w", err)
		}
	}

	heapBefore := liveHeap()
	meter, err := startCost(ctx, b.JetStream())
	if err != nil {
		return nil, fmt.Errorf("cost meter: %w", err)
	}
	if cfg.CPUProfile != nil {
		if err := pprof.StartCPUProfile(cfg.CPUProfile); err != nil {
			return nil, fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile() // a no-op once stopped below
	}
	keys := make([]string, cfg.Pods)
	for i := range keys {
		keys[i] = events.PodKey(Namespace, podName(i))
	}
	w.expect(keys)
	calls := sys.Datacenter.Calls()
	published := &sync.Map{} // pod key → time.Time
	if err := applyPods(ctx, b, cfg, image, published); err != nil {
		return nil, err
	}
	// The bar follows the settled count; waitFor wakes on each event.
	advance, shown := cfg.bar("pipeline", cfg.Pods), 0
	settled := func() bool {
		n := w.settledCount()
		advance(n - shown)
		shown = n
		return n == cfg.Pods
	}
	if !w.waitFor(ctx, cfg.Timeout, settled) && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	pprof.StopCPUProfile()
	callsAfter := sys.Datacenter.Calls()
	if res.Cost, err = meter.done(ctx, cfg.Pods); err != nil {
		return nil, fmt.Errorf("cost meter: %w", err)
	}
	res.Pipeline = pipelineFigures(w, keys, cfg, published)
	res.Pipeline.VSphere = vsphereCalls(calls, callsAfter, cfg.Pods)
	if res.Pipeline.VMRunning == 0 {
		return nil, fmt.Errorf("no pod VM reached running (pod.vm.ready) within %s (%d failed)", cfg.Timeout, res.Pipeline.Failed)
	}
	heapAfter := liveHeap()
	// Every applied pod holds state (records, queues, VMs) whether or not it
	// reached VM running in time, so the heap is divided by the pods applied.
	res.Memory = memoryFigures(heapBefore, heapAfter, cfg.Pods)
	if cfg.ServicesApart {
		if res.Memory.Services, err = serviceMemory(allinone.ProcsDir(cfg.StateDir)); err != nil {
			return nil, fmt.Errorf("memory of the service processes: %w", err)
		}
		var file int64
		for _, m := range res.Memory.Services {
			res.Memory.ControlPlaneRSSBytes += m.RSSBytes
			res.Memory.ControlPlanePeakBytes += m.PeakBytes
			res.Memory.ControlPlaneResidentBytes += m.AnonBytes
			res.Memory.ControlPlanePSSBytes += m.PSSBytes
			file = max(file, m.FileBytes)
		}
		res.Memory.ControlPlaneResidentBytes += file
		res.Memory.Method += "; services in processes of their own, measured apart from this process (NATS, the simulator, the bench)"
	}
	// After the figures: making a profile reads the executable's symbol
	// tables, pages a process would not touch otherwise.
	if cfg.MemProfile != "" {
		if err := writeHeapProfiles(ctx, cfg); err != nil {
			return nil, fmt.Errorf("heap profile: %w", err)
		}
	}
	return hosts, nil
}

func podName(i int) string { return fmt.Sprintf("p-%05d", i) }

// applyPods publishes the N requests with cfg.Publishers in parallel, as
// fast as they go or at cfg.Rate.
// Each pod's request time (just before its publish) goes into published,
// keyed by pod key.
func applyPods(ctx context.Context, b *bus.Bus, cfg Config, image string, published *sync.Map) error {
	jobs := make(chan int)
	errs := make(chan error, cfg.Publishers)
	var wg sync.WaitGroup
	for range cfg.Publishers {
		wg.Go(func() {
			for i := range jobs {
				name := podName(i)
				published.Store(events.PodKey(Namespace, name), time.Now())
				if err := request(ctx, b, name, image); err != nil {
					select {
					case errs <- fmt.Errorf("publish %s: %w", name, err):
					default:
					}
				}
			}
		})
	}
	start := time.Now()
	for i := range cfg.Pods {
		if cfg.Rate > 0 {
			due := start.Add(time.Duration(float64(i) / cfg.Rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
		}
		select {
		case jobs <- i:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return ctx.Err()
	}
}

// pipelineFigures computes throughput and latency from the watcher's times.
func pipelineFigures(w *watcher, keys []string, cfg Config, published *sync.Map) Pipeline {
	out := Pipeline{Pods: len(keys), Rate: cfg.Rate}
	var first, last time.Time
	var lat []float64
	for _, k := range keys {
		v, ok := published.Load(k)
		if !ok {
			continue
		}
		pub := v.(time.Time)
		if first.IsZero() || pub.Before(first) {
			first = pub
		}
		if _, failed := w.at(k, events.TypePodFailed); failed {
			out.Failed++
			continue
		}
		if _, rejected := w.at(k, events.TypePodRejected); rejected {
			out.Failed++
			continue
		}
		run, ok := w.at(k, events.TypePodVMReady)
		if !ok {
			continue
		}
		out.VMRunning++
		if run.After(last) {
			last = run
		}
		lat = append(lat, float64(run.Sub(pub).Microseconds())/1000)
	}
	out.StagesP50MS = map[string]float64{}
	for _, st := range stageTypes {
		var d []float64
		for _, k := range keys {
			v, ok := published.Load(k)
			if !ok {
				continue
			}
			if at, ok := w.at(k, st.ceType); ok {
				d = append(d, float64(at.Sub(v.(time.Time)).Microseconds())/1000)
			}
		}
		if len(d) > 0 {
			slices.Sort(d)
			out.StagesP50MS[st.name] = percentile(d, 0.5)
		}
	}
	out.AttachedPerS = attachRate(w, keys)
	slices.Sort(lat)
	out.LatencyMS = Latency{P50: percentile(lat, 0.50), P95: percentile(lat, 0.95), P99: percentile(lat, 0.99)}
	if len(lat) > 0 {
		out.LatencyMS.Max = lat[len(lat)-1]
	}
	if out.VMRunning > 0 && last.After(first) {
		out.Seconds = last.Sub(first).Seconds()
		out.PodsPerS = float64(out.VMRunning) / out.Seconds
	}
	return out
}

// attachRate is the pods attached per second from the first pod.scheduled
// to the last pod.network.attached (0 when none was attached).
func attachRate(w *watcher, keys []string) float64 {
	var first, last time.Time
	n := 0
	for _, k := range keys {
		if at, ok := w.at(k, events.TypePodScheduled); ok && (first.IsZero() || at.Before(first)) {
			first = at
		}
		if at, ok := w.at(k, events.TypePodNetworkAttached); ok {
			n++
			if at.After(last) {
				last = at
			}
		}
	}
	if n == 0 || !last.After(first) {
		return 0
	}
	return float64(n) / last.Sub(first).Seconds()
}

// stageTypes are the events whose median time from the request the
// pipeline reports: where the time to VM running goes.
var stageTypes = []struct{ name, ceType string }{
	{"accepted", events.TypePodAccepted},
	{"images_ready", events.TypePodImagesReady},
	{"unschedulable", events.TypePodUnschedulable},
	{"scheduled", events.TypePodScheduled},
	{"network_attached", events.TypePodNetworkAttached},
	{"vm_running", events.TypePodVMReady},
}

// measureImageCache prepares image for a first pod (nothing on the
// datastore yet) and then for a second (everything there), timing each from
// its request to its pod.images.ready and counting the registry bytes
// pulled meanwhile.
func measureImageCache(ctx context.Context, b *bus.Bus, w *watcher, image string) (ImageCache, error) {
	out := ImageCache{Image: image}
	for i, name := range []string{"image-cold", "image-warm"} {
		key := events.PodKey(Namespace, name)
		bytesBefore, _ := w.pulledBytes()
		start := time.Now()
		if err := request(ctx, b, name, image); err != nil {
			return out, err
		}
		if !w.waitFor(ctx, time.Minute, func() bool { _, ok := w.at(key, events.TypePodImagesReady); return ok }) {
			return out, fmt.Errorf("%s: no pod.images.ready within a minute", key)
		}
		ready, _ := w.at(key, events.TypePodImagesReady)
		// The pull's announcement may trail the pod's readiness by a hop.
		time.Sleep(100 * time.Millisecond)
		bytesAfter, _ := w.pulledBytes()
		ms := float64(ready.Sub(start).Microseconds()) / 1000
		if i == 0 {
			out.ColdMS, out.ColdBytes = ms, bytesAfter-bytesBefore
		} else {
			out.WarmMS, out.WarmBytes = ms, bytesAfter-bytesBefore
		}
	}
	return out, nil
}

// waitReady waits until the scheduler's inventory holds every host and the
// default network is realized on all of them, so that the first pods are
// not parked as unschedulable while up is still settling.
func waitReady(ctx context.Context, b *bus.Bus, hosts int) error {
	// Thousands of hosts take a while to announce and to carry the
	// default network, the more so on a busy machine: the wait starts
	// again whenever the count moves.
	wait := max(2*time.Minute, time.Duration(hosts)*100*time.Millisecond)
	deadline := time.Now().Add(wait)
	var why string
	for time.Now().Before(deadline) {
		was := why
		why = readiness(ctx, b, hosts)
		if why == "" {
			return nil
		}
		if why != was {
			deadline = time.Now().Add(wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("podvisor did not become ready within %s: %s", wait, why)
}

func readiness(ctx context.Context, b *bus.Bus, hosts int) string {
	kv, err := b.KV(ctx, events.BucketHosts)
	if err != nil {
		return err.Error()
	}
	keys, err := kv.Keys(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		return err.Error()
	}
	if len(keys) < hosts {
		return fmt.Sprintf("scheduler inventory has %d of %d hosts", len(keys), hosts)
	}
	nkv, err := b.KV(ctx, events.BucketNetworks)
	if err != nil {
		return err.Error()
	}
	e, err := nkv.Get(ctx, events.NetworkRecordKey(events.DefaultNetwork))
	if err != nil {
		return "default network not declared yet"
	}
	var rec events.NetworkRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return err.Error()
	}
	if n := rec.HostsReady; n < hosts {
		return fmt.Sprintf("default network ready on %d of %d hosts", n, hosts)
	}
	return ""
}

// writeHeapProfiles writes this process's heap profile to cfg.MemProfile
// (as of the last collection, which liveHeap has just run) and, with the
// services apart, each service process's to cfg.MemProfile.<name>, fetched
// from its health server's /debug/pprof/heap after a collection there.
func writeHeapProfiles(ctx context.Context, cfg Config) error {
	var buf bytes.Buffer
	if err := pprof.Lookup("heap").WriteTo(&buf, 0); err != nil {
		return err
	}
	if err := os.WriteFile(cfg.MemProfile, buf.Bytes(), 0o644); err != nil {
		return err
	}
	if !cfg.ServicesApart {
		return nil
	}
	procs := allinone.ProcsDir(cfg.StateDir)
	files, err := filepath.Glob(filepath.Join(procs, "*.health"))
	if err != nil {
		return err
	}
	for _, f := range files {
		addr, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		name := strings.TrimSuffix(filepath.Base(f), ".health")
		url := "http://" + strings.TrimSpace(string(addr)) + "/debug/pprof/heap?gc=1"
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s answered %s", name, url, resp.Status)
		}
		if err := os.WriteFile(cfg.MemProfile+"."+name, data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// liveHeap is the Go heap in use after a full collection.
func liveHeap() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

func memoryFigures(before, after int64, pods int) Memory {
	m := Memory{
		PeakRSSBytes: peakRSS(), HeapBeforeBytes: before, HeapAfterBytes: after,
		Estimated: true,
		Method:    "heap per pod = (live heap once the pods ran − live heap before) / pods applied, both after a GC, in the process that runs the services, NATS and the simulator; 10k = heap after + per pod × (10000 − pods)",
	}
	if pods > 0 {
		m.HeapPerPodBytes = max(after-before, 0) / int64(pods)
	}
	m.Est10kPodsBytes = after + m.HeapPerPodBytes*int64(max(10_000-pods, 0))
	if pods >= 10_000 {
		m.Estimated = false
		m.Est10kPodsBytes = after
		m.Method = "measured: live heap with the pods running, after a GC"
	}
	return m
}

// peakRSS reads VmHWM (the resident set's high-water mark) from
// /proc/self/status; 0 where there is no procfs.
func peakRSS() int64 {
	m, _ := procMemory("self")
	return m.PeakBytes
}

// serviceMemory reads the memory of every service process whose pid file
// is in procs (<name>.pid, written by the all-in-one's supervisor).
func serviceMemory(procs string) ([]ProcessMemory, error) {
	files, err := filepath.Glob(filepath.Join(procs, "*.pid"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no service process in %s", procs)
	}
	var out []ProcessMemory
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		pid := strings.TrimSpace(string(data))
		m, err := procMemory(pid)
		if err != nil {
			return nil, fmt.Errorf("%s (pid %s): %w", filepath.Base(f), pid, err)
		}
		m.Name = strings.TrimSuffix(filepath.Base(f), ".pid")
		if exe, err := os.Readlink(filepath.Join("/proc", pid, "exe")); err == nil {
			m.Executable = filepath.Base(exe)
		}
		out = append(out, m)
	}
	return out, nil
}

// procMemory reads the memory figures of /proc/<pid>/status and
// /proc/<pid>/smaps_rollup.
func procMemory(pid string) (ProcessMemory, error) {
	var m ProcessMemory
	if err := readKB(filepath.Join("/proc", pid, "status"), map[string]*int64{
		"VmRSS": &m.RSSBytes, "VmHWM": &m.PeakBytes, "RssAnon": &m.AnonBytes, "RssFile": &m.FileBytes}); err != nil {
		return m, err
	}
	// smaps_rollup is Linux 4.14 and later: without it, no PSS (0).
	if err := readKB(filepath.Join("/proc", pid, "smaps_rollup"), map[string]*int64{"Pss": &m.PSSBytes}); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return m, err
	}
	return m, nil
}

// readKB sets each field of a /proc file of "Key: N kB" lines named in
// fields to N KiB in bytes.
func readKB(path string, fields map[string]*int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, rest, _ := strings.Cut(sc.Text(), ":")
		dst, ok := fields[key]
		if !ok {
			continue
		}
		if v := strings.Fields(rest); len(v) > 0 {
			kb, _ := strconv.ParseInt(v[0], 10, 64)
			*dst = kb << 10 // the kernel prints kB
		}
	}
	return sc.Err()
}
