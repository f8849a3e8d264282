package bench

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/podvisor/podvisor/agent/bundle"
	"github.com/podvisor/podvisor/agent/cgroupfs"
	"github.com/podvisor/podvisor/agent/guestchannel"
	agentrt "github.com/podvisor/podvisor/agent/runtime"
	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/cmd/internal/runner"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/guestcluster"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/config"
	"github.com/podvisor/podvisor/shared/ociregistry"
	"github.com/podvisor/podvisor/shared/rootfs"
	"github.com/podvisor/podvisor/shared/telemetry"
)

// DataPlane is request → every container running for N pods with the
// simulated guests on (pod VM, agent as PID 1, overlay over the image disk,
// the OCI runtime), against the same bundles started directly with the
// same runtime in the same run: what podvisor adds to a container start.
// A burst (N pods at once) is set against the direct runtime; a paced run
// (pods at a steady rate) gives the latency a steady load sees.
type DataPlane struct {
	// Skipped says why the section did not run (it needs root, an OCI
	// runtime, busybox, mkfs.erofs and the agent binary); the figures are
	// then zero.
	Skipped string `json:"skipped,omitempty"`
	Pods    int    `json:"pods"`
	Hosts   int    `json:"hosts"`
	Image   string `json:"image"`
	// Runtime is the OCI runtime the guests run their containers with and
	// the direct baseline uses: crun when it is on PATH, else runc.
	Runtime string `json:"runtime"`
	// Channel is how the guests reach their host agents (socket, or serial:
	// network serial ports to the concentrator, over TLS).
	Channel string `json:"channel"`
	// Running counts the pods that reached Running (pod.running: every
	// container started in its guest) within the timeout.
	Running int     `json:"running"`
	Seconds float64 `json:"seconds"`
	// LatencyMS is from each pod's request (all sent at once) to its
	// pod.running.
	LatencyMS Latency       `json:"latency_ms"`
	Direct    DirectRuntime `json:"direct"`
	// P99ToDirect is LatencyMS.P99 / Direct.LatencyMS.P99 (target ≤ 3),
	// SecondsToDirect the ratio of the times for all N.
	P99ToDirect     float64 `json:"p99_to_direct"`
	SecondsToDirect float64 `json:"seconds_to_direct"`
	// Stages are p50/p99 ms from each pod's request to each event of the
	// pipeline, VM ready and running: where a pod's time goes.
	Stages []Stage `json:"stages,omitempty"`
	// Cost is the burst's JetStream writes and this process's CPU per pod
	// (the guests' processes not counted).
	Cost *Cost `json:"cost,omitempty"`
	// SpansP50MS are the medians over the burst's pods of each span's
	// duration, by span name (Config.DataPlaneSpans; summed per pod when a
	// span repeats).
	SpansP50MS map[string]float64 `json:"spans_p50_ms,omitempty"`
	// Paced is the run at a steady rate (nil when not asked for).
	Paced *PacedDataPlane `json:"paced,omitempty"`
}

// PacedDataPlane is request → every container running for pods requested
// one every 1/Rate seconds (after the burst, on the same all-in-one).
type PacedDataPlane struct {
	Rate      float64 `json:"rate"`
	Pods      int     `json:"pods"`
	Running   int     `json:"running"`
	LatencyMS Latency `json:"latency_ms"`
	Stages    []Stage `json:"stages,omitempty"`
	// Direct is the same number of containers started directly with the
	// runtime at the same rate, each timed from its own slot; P99ToDirect
	// is LatencyMS.P99 / Direct.LatencyMS.P99 (target ≤ 3).
	Direct      DirectRuntime `json:"direct"`
	P99ToDirect float64       `json:"p99_to_direct"`
}

// DirectRuntime is the baseline: N containers of the same bundle (the
// agent's runtime spec, the same command and resources, an overlay over the
// same image's files) started with `<runtime> run --detach`, Workers at a time,
// from one moment, or one every 1/Rate seconds (each then timed from its
// own slot).
type DirectRuntime struct {
	Runtime    string  `json:"runtime"`
	Containers int     `json:"containers"`
	Workers    int     `json:"workers"`
	Rate       float64 `json:"rate,omitempty"`
	Seconds    float64 `json:"seconds"`
	LatencyMS  Latency `json:"latency_ms"`
}

// dataPlaneCommand is what every container of the section runs.
var dataPlaneCommand = []string{"sleep", "3600"}

// dataPlaneReady says why the data-plane section cannot run here, or "".
func dataPlaneReady(agent string) string {
	if os.Geteuid() != 0 {
		return "needs root: simulated guests run in namespaces and cgroups (run as root, or --data-plane-pods 0)"
	}
	if allinone.GuestRuntime() == "" {
		return "needs an OCI runtime (crun or runc) on PATH"
	}
	for _, tool := range []string{"mkfs.erofs", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Sprintf("needs %s on PATH", tool)
		}
	}
	if _, err := os.Stat(ociregistry.BusyboxPath); err != nil {
		return "needs busybox-static (" + ociregistry.BusyboxPath + ") for the image"
	}
	if _, err := os.Stat(agent); err != nil {
		return fmt.Sprintf("needs the pod VM agent at %s (make build, or --agent)", agent)
	}
	return ""
}

// startGuests starts a private all-in-one with simulated guests running the
// agent, on a short state dir of its own (guest channels are unix sockets
// under it), with the bench's tuning and the settings of extra on top, and
// dials it as identity. stop closes both and removes the state dir.
func startGuests(ctx context.Context, cfg Config, agent, channel string, clusters, per int, extra map[string]string, identity string) (*allinone.System, *bus.Bus, func(), error) {
	dir, err := os.MkdirTemp("", "pvg-")
	if err != nil {
		return nil, nil, nil, err
	}
	_, settings := applyTuning()
	if extra != nil {
		settings = config.Layered(config.Map(extra), settings)
	}
	specs, err := runner.Select("all")
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, nil, err
	}
	// No guest cluster is measured: without its controller, up does not
	// push the guest cluster control-plane image (a layer the size of
	// kube-apiserver, gzipped at start), which took about a quarter of
	// this process's CPU during a burst of 100 pods.
	specs = slices.DeleteFunc(specs, func(s runner.Spec) bool { return s.Name == guestcluster.Name })
	sys, err := allinone.Start(ctx, allinone.Config{
		StateDir: dir, Clusters: clusters, HostsPerCluster: per, Services: specs, Seed: 1, Logger: cfg.Logger,
		Settings: settings, Guests: allinone.GuestsOn, Agent: agent, GuestChannel: channel,
	})
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, nil, err
	}
	b, err := sys.Dial(ctx, identity)
	if err != nil {
		sys.Close()
		os.RemoveAll(dir)
		return nil, nil, nil, err
	}
	return sys, b, func() { b.Close(); sys.Close(); os.RemoveAll(dir) }, nil
}

// runDataPlane starts an all-in-one with guests on, applies cfg.DataPlanePods
// pods of the busybox image at once and waits for each pod.running; then
// starts the same number of containers with the guests' runtime directly;
// then, with cfg.DataPlaneRate, applies pods at that rate.
func runDataPlane(ctx context.Context, cfg Config, p progress) (*DataPlane, error) {
	agent := cfg.Agent
	if agent == "" {
		agent = allinone.DefaultAgentPath()
	}
	out := &DataPlane{Pods: cfg.DataPlanePods, Runtime: allinone.GuestRuntime(), Channel: cmp.Or(cfg.DataPlaneChannel, allinone.GuestChannelSocket)}
	if why := dataPlaneReady(agent); why != "" {
		out.Skipped = why
		return out, nil
	}
	clusters, per := layout(min(cfg.Hosts, 16))
	out.Hosts = clusters * per
	var spans *telemetry.Recorder
	if cfg.DataPlaneSpans {
		// In place before the services start, as the fork section does.
		spans = telemetry.NewRecorder(0)
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sdktrace.NewSimpleSpanProcessor(spans)))
		prev := otel.GetTracerProvider()
		otel.SetTracerProvider(tp)
		defer func() { otel.SetTracerProvider(prev); _ = tp.Shutdown(context.Background()) }()
	}
	sys, b, stop, err := startGuests(ctx, cfg, agent, cfg.DataPlaneChannel, clusters, per, nil, "bench")
	if err != nil {
		return nil, err
	}
	defer stop()
	if err := waitReady(ctx, b, out.Hosts); err != nil {
		return nil, err
	}
	w, err := newWatcher(ctx, b)
	if err != nil {
		return nil, err
	}
	defer w.stop()
	out.Image = sys.Endpoints.Registry + "/" + ociregistry.BusyboxRepoTag

	// One pod first, so the image is on the datastore: the section measures
	// container starts, not the pull (the image section measures that).
	if _, err := runPods(ctx, b, w, out.Image, []string{"dp-warm"}, 0, 2*time.Minute); err != nil {
		return nil, fmt.Errorf("first pod: %w", err)
	}
	names := make([]string, cfg.DataPlanePods)
	for i := range names {
		names[i] = fmt.Sprintf("dp-%04d", i)
	}
	p.say("data plane: %d pods at once with guests on %d hosts (%s, %s channels)…", len(names), out.Hosts, out.Runtime, out.Channel)
	// Each guest formats its ephemeral disk and starts its agent and its
	// runtime: far more work per pod than a VM alone.
	timeout := max(cfg.Timeout, 2*time.Minute+time.Duration(len(names))*time.Second)
	meter, err := startCost(ctx, b.JetStream())
	if err != nil {
		return nil, err
	}
	if cfg.DataPlaneCPUProfile != nil {
		if err := pprof.StartCPUProfile(cfg.DataPlaneCPUProfile); err != nil {
			return nil, fmt.Errorf("data plane CPU profile: %w", err)
		}
	}
	lat, err := runPods(ctx, b, w, out.Image, names, 0, timeout)
	if cfg.DataPlaneCPUProfile != nil {
		pprof.StopCPUProfile()
	}
	if err != nil {
		return nil, err
	}
	if c, err := meter.done(ctx, len(names)); err == nil {
		out.Cost = &c
	}
	out.Running = len(lat.values)
	out.LatencyMS, out.Seconds, out.Stages = lat.latency(), lat.max/1000, lat.stages
	p.say("data plane: %d of %d pods running within %s, p99 %.0f ms", out.Running, len(names), timeout, out.LatencyMS.P99)
	if spans != nil {
		perPod := map[string][]float64{}
		for _, n := range names {
			for span, v := range spanDurations(spans, events.PodKey(Namespace, n)) {
				perPod[span] = append(perPod[span], v)
			}
		}
		out.SpansP50MS = medians(perPod)
		p.say("data plane: span medians over the burst's pods: %s", longestFirst(out.SpansP50MS, 8))
	}

	p.say("data plane: %d containers with %s directly…", len(names), out.Runtime)
	if out.Direct, err = runDirect(ctx, out.Runtime, out.Image, sys.RegistryOptions(), len(names), 0); err != nil {
		return nil, fmt.Errorf("direct runtime: %w", err)
	}
	if out.Direct.LatencyMS.P99 > 0 {
		out.P99ToDirect = out.LatencyMS.P99 / out.Direct.LatencyMS.P99
	}
	if out.Direct.Seconds > 0 {
		out.SecondsToDirect = out.Seconds / out.Direct.Seconds
	}
	if cfg.DataPlaneRate > 0 {
		if out.Paced, err = runPaced(ctx, cfg, b, w, out.Image, p); err != nil {
			return nil, fmt.Errorf("paced: %w", err)
		}
		pc := out.Paced
		p.say("data plane: %d containers with %s directly at %.0f/s…", pc.Pods, out.Runtime, pc.Rate)
		if pc.Direct, err = runDirect(ctx, out.Runtime, out.Image, sys.RegistryOptions(), pc.Pods, pc.Rate); err != nil {
			return nil, fmt.Errorf("direct runtime at %.0f/s: %w", pc.Rate, err)
		}
		if pc.Direct.LatencyMS.P99 > 0 {
			pc.P99ToDirect = pc.LatencyMS.P99 / pc.Direct.LatencyMS.P99
		}
	}
	return out, nil
}

// runPaced applies cfg.DataPlanePods more pods at cfg.DataPlaneRate per
// second and times each to its pod.running.
func runPaced(ctx context.Context, cfg Config, b *bus.Bus, w *watcher, image string, p progress) (*PacedDataPlane, error) {
	out := &PacedDataPlane{Rate: cfg.DataPlaneRate, Pods: cfg.DataPlanePods}
	names := make([]string, out.Pods)
	for i := range names {
		names[i] = fmt.Sprintf("dp-paced-%04d", i)
	}
	every := time.Duration(float64(time.Second) / out.Rate)
	p.say("data plane: %d pods at %.0f/s…", len(names), out.Rate)
	timeout := max(cfg.Timeout, 2*time.Minute+time.Duration(len(names))*(every+time.Second))
	lat, err := runPods(ctx, b, w, image, names, every, timeout)
	if err != nil {
		return nil, err
	}
	out.Running, out.LatencyMS, out.Stages = len(lat.values), lat.latency(), lat.stages
	p.say("data plane: %d of %d paced pods running, p99 %.0f ms", out.Running, len(names), out.LatencyMS.P99)
	return out, nil
}

// Stage is p50/p99 ms from a pod's request to one of its events.
type Stage struct {
	Name string  `json:"name"`
	P50  float64 `json:"p50"`
	P99  float64 `json:"p99"`
}

// dataPlaneStages are the events a data-plane pod is timed to: the
// pipeline's stages, then every container running.
var dataPlaneStages = append(slices.Clone(stageTypes[:len(stageTypes):len(stageTypes)]), struct{ name, ceType string }{"running", events.TypePodRunning})

// latencies are milliseconds from one start.
type latencies struct {
	values []float64
	max    float64
	stages []Stage
}

// add records one value.
func (l *latencies) add(v float64) {
	l.values = append(l.values, v)
	l.max = max(l.max, v)
}

func (l latencies) latency() Latency {
	s := slices.Clone(l.values)
	slices.Sort(s)
	return Latency{P50: percentile(s, 0.5), P95: percentile(s, 0.95), P99: percentile(s, 0.99), Max: l.max}
}

// runPods requests the pods, all at once or one every `every`, and returns,
// for each that reached pod.running within timeout (counted from the last
// request), the milliseconds from its request.
func runPods(ctx context.Context, b *bus.Bus, w *watcher, image string, names []string, every time.Duration, timeout time.Duration) (latencies, error) {
	sent := make([]time.Time, len(names))
	var wg sync.WaitGroup
	errs := make(chan error, len(names))
	start := time.Now()
	for i, n := range names {
		if every > 0 {
			// The rate's clock: each request leaves at its slot, however
			// long the earlier ones took to publish.
			if d := time.Until(start.Add(time.Duration(i) * every)); d > 0 {
				select {
				case <-time.After(d):
				case <-ctx.Done():
					return latencies{}, ctx.Err()
				}
			}
		}
		sent[i] = time.Now()
		wg.Go(func() {
			pod := benchPod(n, image)
			pod.Spec.Containers[0].Command = dataPlaneCommand
			pod.Spec.TerminationGracePeriodSeconds = new(int64)
			ev, err := bus.NewEvent(Source, events.TypePodRequested, events.PodKey(Namespace, n), &events.PodRequested{Pod: *pod})
			if err == nil {
				err = b.Publish(ctx, ev)
			}
			if err != nil {
				errs <- fmt.Errorf("publish %s: %w", n, err)
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		return latencies{}, err
	default:
	}
	running := func() int {
		n := 0
		for _, name := range names {
			if _, ok := w.at(events.PodKey(Namespace, name), events.TypePodRunning); ok {
				n++
			}
		}
		return n
	}
	w.waitFor(ctx, timeout, func() bool { return running() == len(names) })
	var out latencies
	for i, name := range names {
		if at, ok := w.at(events.PodKey(Namespace, name), events.TypePodRunning); ok {
			d := ms(at.Sub(sent[i]))
			out.add(d)
		}
	}
	if len(out.values) == 0 {
		return out, fmt.Errorf("no pod reached Running within %s", timeout)
	}
	for _, st := range dataPlaneStages {
		var d []float64
		for i, name := range names {
			if at, ok := w.at(events.PodKey(Namespace, name), st.ceType); ok {
				d = append(d, ms(at.Sub(sent[i])))
			}
		}
		if len(d) > 0 {
			slices.Sort(d)
			out.stages = append(out.stages, Stage{Name: st.name, P50: percentile(d, 0.5), P99: percentile(d, 0.99)})
		}
	}
	return out, ctx.Err()
}

// runDirect starts n containers of the image with runtime rt, each on its own
// overlay (lower = the image's files, upper/work of its own, as the agent
// builds a container's root) with the runtime spec the agent writes, from one
// moment with a pool of workers; then removes them all.
func runDirect(ctx context.Context, rt, image string, reg []remote.Option, n int, rate float64) (DirectRuntime, error) {
	out := DirectRuntime{Runtime: rt, Containers: n, Workers: 16, Rate: rate}
	dir, err := os.MkdirTemp("", "pvdirect-")
	if err != nil {
		return out, err
	}
	defer os.RemoveAll(dir)
	// The runtime's state, the bundles and the overlays on a tmpfs, as in a
	// pod VM's guest (the agent's state directory is one): the ratio compares
	// the work of a start, not the host filesystem's (on an ext4 without a
	// journal the search for a free inode skips, one by one, those deleted
	// in the last 60 s, so a file made there costs more after earlier runs).
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0700"); err != nil {
		return out, fmt.Errorf("tmpfs for the direct runs: %w", err)
	}
	defer func() { _ = unix.Unmount(dir, unix.MNT_DETACH) }()
	lower := filepath.Join(dir, "image")
	if err := extractImage(ctx, image, reg, lower); err != nil {
		return out, err
	}
	root := filepath.Join(dir, "runtime")
	cgroup := fmt.Sprintf("/podvisor-bench-direct-%d", os.Getpid())
	cpu, mem := resource.MustParse(podCPU), resource.MustParse(podMemory)
	c := &guestchannel.Container{Name: "app", Command: dataPlaneCommand,
		Resources: guestchannel.Resources{CPURequestMilli: cpu.MilliValue(), MemoryRequestBytes: mem.Value()}}
	ids := make([]string, n)
	bundles := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("pvbench-%d-%d", os.Getpid(), i)
		bundles[i] = filepath.Join(dir, fmt.Sprintf("c%04d", i))
	}
	// The workers' overlays live in their threads' mount namespaces
	// (agentrt.OnHostThread): they go with the containers.
	defer func() {
		_ = agentrt.OnHostThread(func() error {
			for _, id := range ids {
				_ = exec.Command(rt, "--root", root, "delete", "--force", id).Run()
			}
			return nil
		})
		_ = cgroupfs.RemoveTree(cgroup) // runc removes the containers' own cgroups; their parent stays
	}()
	start := time.Now()
	// slot is when container i is asked for: all at once, or one every
	// 1/rate seconds, as the paced pods are requested.
	slot := func(i int) time.Time { return start }
	if rate > 0 {
		every := time.Duration(float64(time.Second) / rate)
		slot = func(i int) time.Time { return start.Add(time.Duration(i) * every) }
	}
	lat := make([]float64, n)
	jobs := make(chan int)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range out.Workers {
		wg.Go(func() {
			// As the agent runs it in its guest: crun refuses a hybrid
			// cgroup host's view.
			err := agentrt.OnHostThread(func() error {
				for i := range jobs {
					if err := startDirect(rt, c, lower, bundles[i], root, ids[i], cgroup); err != nil {
						errs <- err
						continue
					}
					lat[i] = ms(time.Since(slot(i)))
				}
				return nil
			})
			if err != nil {
				errs <- err
				for range jobs {
				}
			}
		})
	}
	for i := range n {
		if d := time.Until(slot(i)); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
			}
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	out.Seconds = time.Since(start).Seconds()
	select {
	case err := <-errs:
		return out, err
	default:
	}
	l := latencies{values: lat}
	for _, v := range lat {
		l.max = max(l.max, v)
	}
	out.LatencyMS = l.latency()
	return out, nil
}

// startDirect mounts one container's overlay, writes its bundle with the
// agent's bundle package and runs it detached, as the agent does.
func startDirect(rt string, c *guestchannel.Container, lower, dir, root, id, cgroup string) error {
	rootfs, upper, work := filepath.Join(dir, "rootfs"), filepath.Join(dir, "upper"), filepath.Join(dir, "work")
	for _, d := range []string{rootfs, upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount("overlay", rootfs, "overlay", 0, fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)); err != nil {
		return fmt.Errorf("overlay for %s: %w", id, err)
	}
	s, err := bundle.Spec(c, bundle.Params{Rootfs: rootfs, Hostname: "bench", CgroupsPath: cgroup + "/" + id})
	if err != nil {
		return err
	}
	if err := bundle.Write(dir, s); err != nil {
		return err
	}
	// The container inherits the runtime's stdio: a file, not a pipe that would
	// stay open as long as the container runs.
	logf, err := os.Create(filepath.Join(dir, "out"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(rt, "--root", root, "run", "--detach", "--bundle", dir, id)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Run(); err != nil {
		b, _ := os.ReadFile(logf.Name())
		return fmt.Errorf("%s run %s: %v: %s", rt, id, err, strings.TrimSpace(string(b)))
	}
	return nil
}

// extractImage writes the flattened image's directories, files and links
// under dir (the busybox image: a binary and its applet links); reg reach
// the registry.
func extractImage(ctx context.Context, image string, reg []remote.Option, dir string) error {
	r, err := name.ParseReference(image)
	if err != nil {
		return err
	}
	img, err := remote.Image(r, append([]remote.Option{remote.WithContext(ctx)}, reg...)...)
	if err != nil {
		return err
	}
	return rootfs.ExtractImage(img, dir)
}
