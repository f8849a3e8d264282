package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/podvisor/podvisor/shared/config"
	"github.com/podvisor/podvisor/shared/sim"
)

// Config says what to measure.
type Config struct {
	// Pods is N, the pods of the pipeline and the VMs of the raw baseline.
	Pods int
	// Hosts is the number of simulated hosts (clusters of up to 16).
	Hosts int
	// Rate, when above zero, applies pods at that many per second instead
	// of as fast as the publishers go; latency is then measured under a
	// steady load rather than a burst.
	Rate float64
	// Publishers publish pod.requested in parallel (default 32).
	Publishers int
	// RawWorkers are the worker counts the raw baseline tries (default 8,
	// 16, 32); the best is reported.
	RawWorkers []int
	// SequentialVMs caps the sequential baseline (default min(Pods, 200)):
	// its rate is steady, and a thousand VMs one at a time only cost time.
	SequentialVMs int
	// Timeout bounds the pipeline's wait for VM running (default 60 s + 100 ms
	// per pod).
	Timeout time.Duration
	// StateDir is a scratch directory (default: a new temporary one, removed
	// at the end).
	StateDir string
	// Progress receives one line per phase (nil: silent).
	Progress io.Writer
	// Bar, when set, draws the progress of the long phases (the pipeline,
	// the raw and sequential baselines): it is called once per phase with
	// the phase's total and returns a func that advances it by n.
	Bar func(phase string, total int) func(n int)
	// Logger receives the services' logs (default: discarded).
	Logger *slog.Logger
	// ImageMiB, when above zero, adds the image-disk measurement: an image
	// of that many MiB written cold into its disks against a plain
	// go-containerregistry pull and extract, then warm.
	ImageMiB int
	// DataPlanePods, when above zero, adds the data-plane section: that
	// many pods with guests on, request → every container running, against
	// the same containers started directly with the guests' OCI runtime
	// (needs root; skipped, saying why, elsewhere). DataPlaneRate, when
	// above zero, adds as many pods again requested at that many per
	// second: the latency under a steady load. Agent is the pod VM agent
	// binary (default: beside this executable).
	DataPlanePods int
	DataPlaneRate float64
	Agent         string
	// ForkPairs, when above zero, adds the fork section (fork.go): that
	// many created and as many forked pod VMs, guests on (needs root).
	ForkPairs int
	// QEMUPairs, when above zero, adds the boot image's section
	// (qemufork.go): that many templates booted under QEMU and children
	// forked from them (needs root, QEMU and the boot image's tools, and
	// the source tree the image is built from; skipped, saying why,
	// elsewhere).
	QEMUPairs int
	// ServicesApart runs each service of the pipeline as a `podvisor serve`
	// process of its own (the executable is this one), so that the memory
	// of the control plane is measured apart from NATS and the simulator,
	// which stay in this process (Memory.Services).
	ServicesApart bool
	// CPUProfile, when set, receives a pprof CPU profile of the pipeline
	// phase (from the first request to the last pod settled): where the
	// control plane spends its time.
	CPUProfile io.Writer
	// MemProfile, when set, is a file to write a pprof heap profile of this
	// process to once the pipeline's pods ran, taken after the collection
	// that the live-heap figure does: what the pods' state is made of. With
	// ServicesApart, each service process's own heap profile (after a
	// collection in it) goes to MemProfile.<process name> beside it.
	MemProfile string
	// DataPlaneCPUProfile, when set, receives a pprof CPU profile of the
	// data plane's burst (from its first request to its last pod running):
	// the control plane, the simulated guests' managers and the host agents
	// in this process (the guests' own processes are not in it).
	DataPlaneCPUProfile io.Writer
	// DataPlaneSpans records every service's spans through the data-plane
	// section and reports their medians over the burst's pods: where a
	// pod's time goes, step by step. Recording costs CPU, so that run's
	// figures are not comparable with a run without it.
	DataPlaneSpans bool
	// DataPlaneChannel is how the guests of the data-plane and fork
	// sections reach their host agents: allinone.GuestChannelSocket (the
	// default) or GuestChannelSerial (network serial ports to the host
	// agents' concentrator, over TLS, as pod VMs on a vCenter).
	DataPlaneChannel string
}

// Bench pod size: small enough that N pods fit the simulated hosts many
// times over, so the run measures the pipeline and not packing.
const (
	podCPU    = "100m"
	podMemory = "64Mi"
)

func (c Config) withDefaults() Config {
	if c.Publishers == 0 {
		c.Publishers = 32
	}
	if len(c.RawWorkers) == 0 {
		c.RawWorkers = []int{8, 16, 32}
	}
	if c.SequentialVMs == 0 {
		c.SequentialVMs = min(c.Pods, 200)
	}
	if c.Timeout == 0 {
		c.Timeout = time.Minute + time.Duration(c.Pods)*100*time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate names every field that is out of range (by the words of its
// flag, which is what whoever runs the bench set).
func (c Config) Validate() error {
	var p config.Checks
	p.Must(1 <= c.Pods && c.Pods <= 100_000, "pods", c.Pods, "be between 1 and 100000")
	p.Must(1 <= c.Hosts && c.Hosts <= 10_000, "hosts", c.Hosts, "be between 1 and 10000")
	p.Must(c.Rate >= 0, "rate", c.Rate, "be 0 (as fast as possible) or a positive pods/s")
	p.Must(0 <= c.Publishers && c.Publishers <= 1024, "publishers", c.Publishers, "be between 1 and 1024")
	for _, w := range c.RawWorkers {
		p.Must(1 <= w && w <= 256, "raw workers", w, "be between 1 and 256")
	}
	p.Must(0 <= c.ImageMiB && c.ImageMiB <= 4096, "image MiB", c.ImageMiB, "be between 0 (skip) and 4096")
	p.Must(0 <= c.DataPlanePods && c.DataPlanePods <= 1000, "data-plane pods", c.DataPlanePods, "be between 0 (skip) and 1000")
	p.Must(0 <= c.DataPlaneRate && c.DataPlaneRate <= 1000, "data-plane rate", c.DataPlaneRate, "be between 0 (no paced run) and 1000 pods/s")
	p.Must(0 <= c.ForkPairs && c.ForkPairs <= 100, "fork pairs", c.ForkPairs, "be between 0 (skip) and 100")
	p.Must(0 <= c.QEMUPairs && c.QEMUPairs <= 20, "qemu pairs", c.QEMUPairs, "be between 0 (skip) and 20")
	p.Must(c.SequentialVMs >= 0, "sequential VMs", c.SequentialVMs, "be 0 (default) or more")
	return p.Err()
}

// layout spreads hosts over clusters of at most 16, as a real site would.
func layout(hosts int) (clusters, perCluster int) {
	clusters = (hosts + 15) / 16
	perCluster = (hosts + clusters - 1) / clusters
	return clusters, perCluster
}

// Result is one run's figures. The JSON keys pipeline.pods_per_s,
// pipeline.latency_ms.{p50,p95,p99}, raw.vms_per_s and
// sequential.vms_per_s are the contract; the rest is extra detail.
type Result struct {
	Pipeline   Pipeline    `json:"pipeline"`
	Raw        Raw         `json:"raw"`
	Sequential Sequential  `json:"sequential"`
	Ratios     Ratios      `json:"ratios"`
	Scheduling Scheduling  `json:"scheduling_only"`
	ImageCache ImageCache  `json:"image_cache"`
	ImageDisks *ImageDisks `json:"image_disks,omitempty"`
	DataPlane  *DataPlane  `json:"data_plane,omitempty"`
	Fork       *Fork       `json:"fork,omitempty"`
	QEMUFork   *QEMUFork   `json:"qemu_fork,omitempty"`
	Memory     Memory      `json:"memory"`
	Cost       Cost        `json:"cost"`
	Setup      Setup       `json:"setup"`
}

// Latency percentiles in milliseconds.
type Latency struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Pipeline is the all-in-one's measurement.
type Pipeline struct {
	PodsPerS  float64 `json:"pods_per_s"`
	LatencyMS Latency `json:"latency_ms"`
	Pods      int     `json:"pods"`
	// VMRunning counts the pods whose VM was created and powered on
	// (pod.vm.ready): the bench runs no guests, so that is where a pod's
	// control-plane path ends. The JSON name is kept from when this was
	// (wrongly) called Running, so saved results still read.
	VMRunning int     `json:"running"`
	Failed    int     `json:"failed"`
	Seconds   float64 `json:"seconds"`
	// Rate is the applied rate in pods/s (0: as fast as possible).
	Rate float64 `json:"rate"`
	// StagesP50MS is the median time from request to each pod event (a
	// stage no pod went through is absent): where the time goes.
	StagesP50MS map[string]float64 `json:"stages_p50_ms"`
	// AttachedPerS is network-config's rate: the pods attached
	// (pod.network.attached) divided by the time from the first
	// pod.scheduled to the last pod.network.attached.
	AttachedPerS float64 `json:"attached_per_s,omitempty"`
	// VSphere is the SOAP calls the simulated vCenter served during the
	// phase (every service's, watches and resyncs included), per pod.
	VSphere VSphereCalls `json:"vsphere_calls"`
}

// VSphereCalls is the SOAP calls a phase took from the simulated vCenter,
// divided by the pods (or VMs) it made: what it costs vCenter.
type VSphereCalls struct {
	PerPod float64 `json:"per_pod"`
	// ByMethod is the calls per pod of each method called.
	ByMethod map[string]float64 `json:"by_method,omitempty"`
}

// vsphereCalls divides the calls served between two snapshots of
// sim.Datacenter.Calls by n.
func vsphereCalls(before, after map[string]int64, n int) VSphereCalls {
	if n <= 0 {
		return VSphereCalls{}
	}
	calls := sim.CallsSince(before, after)
	v := VSphereCalls{PerPod: float64(sim.TotalCalls(calls)) / float64(n), ByMethod: map[string]float64{}}
	for m, c := range calls {
		v.ByMethod[m] = float64(c) / float64(n)
	}
	return v
}

// topMethods prints the methods with the most calls per pod first.
func (v VSphereCalls) topMethods(k int) string {
	names := slices.Collect(maps.Keys(v.ByMethod))
	slices.SortFunc(names, func(a, b string) int {
		return cmp.Or(cmp.Compare(v.ByMethod[b], v.ByMethod[a]), cmp.Compare(a, b))
	})
	var parts []string
	for i, n := range names {
		if i == k {
			parts = append(parts, "…")
			break
		}
		parts = append(parts, fmt.Sprintf("%s %.2f", n, v.ByMethod[n]))
	}
	return strings.Join(parts, ", ")
}

// Raw is the direct-govmomi baseline: the best of the tries.
type Raw struct {
	VMsPerS float64  `json:"vms_per_s"`
	Workers int      `json:"workers"`
	VMs     int      `json:"vms"`
	Tries   []RawTry `json:"tries"`
	// VSphere is the best try's calls per VM.
	VSphere VSphereCalls `json:"vsphere_calls"`
}

// RawTry is one worker count.
type RawTry struct {
	Workers int     `json:"workers"`
	VMsPerS float64 `json:"vms_per_s"`
	Seconds float64 `json:"seconds"`
	// VSphere is the calls per VM of this try.
	VSphere VSphereCalls `json:"vsphere_calls"`
}

// Sequential is one VM at a time.
type Sequential struct {
	VMsPerS float64 `json:"vms_per_s"`
	VMs     int     `json:"vms"`
	Seconds float64 `json:"seconds"`
}

// Ratios compare the pipeline with the baselines.
type Ratios struct {
	PipelineToRaw        float64 `json:"pipeline_to_raw"`
	PipelineToSequential float64 `json:"pipeline_to_sequential"`
}

// Scheduling is placement alone.
type Scheduling struct {
	PodsPerS float64 `json:"pods_per_s"`
	Pods     int     `json:"pods"`
	Placed   int     `json:"placed"`
	Hosts    int     `json:"hosts"`
}

// ImageCache compares a cold and a warm preparation of one image.
type ImageCache struct {
	Image     string  `json:"image"`
	ColdMS    float64 `json:"cold_ms"`
	WarmMS    float64 `json:"warm_ms"`
	ColdBytes int64   `json:"cold_bytes"`
	WarmBytes int64   `json:"warm_bytes"`
}

// Memory is what the control plane took.
type Memory struct {
	// PeakRSSBytes is the process's VmHWM after the pipeline: the five
	// services, NATS and the vCenter simulator together (redis-server is a
	// process of its own).
	PeakRSSBytes int64 `json:"peak_rss_bytes"`
	// HeapBeforeBytes and HeapAfterBytes are the live Go heap (after a GC)
	// before the pods were applied and once they ran.
	HeapBeforeBytes int64 `json:"heap_before_bytes"`
	HeapAfterBytes  int64 `json:"heap_after_bytes"`
	// HeapPerPodBytes is (after − before) / pods: records, caches, stream
	// state and the simulator's VM objects.
	HeapPerPodBytes int64 `json:"heap_per_pod_bytes"`
	// Est10kPodsBytes is HeapAfter + HeapPerPod × (10,000 − pods): an
	// estimate, not a measurement (run with --pods 10000 to measure).
	Est10kPodsBytes int64  `json:"est_10k_pods_heap_bytes"`
	Estimated       bool   `json:"est_10k_is_estimate"`
	Method          string `json:"method"`
	// Services, with ServicesApart, is each service process's memory once
	// the pods ran; the figures above are then this process's alone (NATS,
	// the simulator and the bench). The control plane is the services
	// without NATS, the simulator and Redis:
	//   - ControlPlaneRSSBytes and ControlPlanePeakBytes sum their VmRSS
	//     and VmHWM, as if no page were shared;
	//   - ControlPlaneResidentBytes counts what is resident once: their
	//     private (anonymous) pages, plus the largest file-backed share,
	//     the executable's pages they all map from the page cache;
	//   - ControlPlanePSSBytes sums their proportional set sizes (each
	//     resident page divided by the number of processes mapping it):
	//     the kernel's own answer to what a set of processes occupies,
	//     pages shared with processes outside the set included in part.
	Services                  []ProcessMemory `json:"services,omitempty"`
	ControlPlaneRSSBytes      int64           `json:"control_plane_rss_bytes,omitempty"`
	ControlPlanePeakBytes     int64           `json:"control_plane_peak_rss_bytes,omitempty"`
	ControlPlaneResidentBytes int64           `json:"control_plane_resident_bytes,omitempty"`
	ControlPlanePSSBytes      int64           `json:"control_plane_pss_bytes,omitempty"`
}

// ProcessMemory is one service process's memory, read from
// /proc/<pid>/status: resident set (VmRSS) and its high-water mark
// (VmHWM), and the resident set's anonymous (private heap and stacks) and
// file-backed (the mapped executable) parts; and from
// /proc/<pid>/smaps_rollup its proportional set size (Pss).
type ProcessMemory struct {
	Name string `json:"name"`
	// Executable is the file the process runs (podvisord, or podvisor
	// where no podvisord sits beside it): its size decides much of the
	// file-backed part.
	Executable string `json:"executable,omitempty"`
	RSSBytes   int64  `json:"rss_bytes"`
	PeakBytes  int64  `json:"peak_rss_bytes"`
	AnonBytes  int64  `json:"rss_anon_bytes"`
	FileBytes  int64  `json:"rss_file_bytes"`
	PSSBytes   int64  `json:"pss_bytes,omitempty"`
}

// Setup records the conditions of the run.
type Setup struct {
	Pods            int               `json:"pods"`
	Hosts           int               `json:"hosts"`
	Clusters        int               `json:"clusters"`
	HostsPerCluster int               `json:"hosts_per_cluster"`
	CPUs            int               `json:"cpus"`
	GoVersion       string            `json:"go_version"`
	Publishers      int               `json:"publishers"`
	PodCPU          string            `json:"pod_cpu"`
	PodMemory       string            `json:"pod_memory"`
	Image           string            `json:"image"`
	Settings        map[string]string `json:"settings"`
	Started         time.Time         `json:"started"`
	Seconds         float64           `json:"seconds"`
}

// Run measures everything in turn: the pipeline first (so that the peak
// RSS it reports is the all-in-one's, not the baselines'), then the
// baselines on fresh simulators, then scheduling alone.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	clusters, per := layout(cfg.Hosts)
	res := &Result{Setup: Setup{
		Pods: cfg.Pods, Hosts: clusters * per, Clusters: clusters, HostsPerCluster: per,
		CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), Publishers: cfg.Publishers,
		PodCPU: podCPU, PodMemory: podMemory, Started: time.Now().UTC(),
	}}
	if cfg.StateDir == "" {
		dir, err := os.MkdirTemp("", "podvisor-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		cfg.StateDir = dir
	}
	p := progress{w: cfg.Progress}

	p.say("pipeline: %d pods on %d hosts (%d clusters × %d)…", cfg.Pods, clusters*per, clusters, per)
	hosts, err := runPipeline(ctx, cfg, clusters, per, res, p)
	if err != nil {
		return nil, fmt.Errorf("bench: pipeline: %w", err)
	}
	p.say("pipeline: %.1f pods/s, p99 %.0f ms, %.1f vSphere calls per pod", res.Pipeline.PodsPerS, res.Pipeline.LatencyMS.P99, res.Pipeline.VSphere.PerPod)
	// The baselines build simulators of the same size again, which takes
	// minutes at thousands of hosts: what the pipeline measured is said
	// now, so a run stopped during them still leaves it.
	if b, err := json.Marshal(struct {
		Pipeline Pipeline `json:"pipeline"`
		Memory   Memory   `json:"memory"`
		Cost     Cost     `json:"cost"`
	}{res.Pipeline, res.Memory, res.Cost}); err == nil {
		p.say("pipeline figures: %s", b)
	}

	size := benchPodSize()
	for _, w := range cfg.RawWorkers {
		p.say("raw: %d VMs with %d workers…", cfg.Pods, w)
		try, err := runRaw(ctx, clusters, per, cfg.Pods, w, size, cfg.bar(fmt.Sprintf("raw, %d workers", w), cfg.Pods))
		if err != nil {
			return nil, fmt.Errorf("bench: raw with %d workers: %w", w, err)
		}
		res.Raw.Tries = append(res.Raw.Tries, try)
		p.say("raw: %d workers: %.1f VMs/s, %.1f vSphere calls per VM", w, try.VMsPerS, try.VSphere.PerPod)
	}
	best := slices.MaxFunc(res.Raw.Tries, func(a, b RawTry) int { return cmp.Compare(a.VMsPerS, b.VMsPerS) })
	res.Raw.VMsPerS, res.Raw.Workers, res.Raw.VMs, res.Raw.VSphere = best.VMsPerS, best.Workers, cfg.Pods, best.VSphere

	p.say("sequential: %d VMs one at a time…", cfg.SequentialVMs)
	try, err := runRaw(ctx, clusters, per, cfg.SequentialVMs, 1, size, cfg.bar("sequential", cfg.SequentialVMs))
	if err != nil {
		return nil, fmt.Errorf("bench: sequential: %w", err)
	}
	res.Sequential = Sequential{VMsPerS: try.VMsPerS, VMs: cfg.SequentialVMs, Seconds: try.Seconds}
	p.say("sequential: %.1f VMs/s", try.VMsPerS)

	res.Scheduling = runScheduling(hosts, cfg.Pods)
	p.say("scheduling only: %.0f pods/s", res.Scheduling.PodsPerS)

	if cfg.DataPlanePods > 0 {
		if res.DataPlane, err = runDataPlane(ctx, cfg, p); err != nil {
			return nil, fmt.Errorf("bench: data plane: %w", err)
		}
		if res.DataPlane.Skipped != "" {
			p.say("data plane: skipped: %s", res.DataPlane.Skipped)
		}
	}

	if cfg.ForkPairs > 0 {
		if res.Fork, err = runFork(ctx, cfg, p); err != nil {
			return nil, fmt.Errorf("bench: fork: %w", err)
		}
		if res.Fork.Skipped != "" {
			p.say("fork: skipped: %s", res.Fork.Skipped)
		}
	}

	if cfg.QEMUPairs > 0 {
		if res.QEMUFork, err = runQEMUFork(ctx, cfg, p); err != nil {
			return nil, fmt.Errorf("bench: qemu fork: %w", err)
		}
		if res.QEMUFork.Skipped != "" {
			p.say("qemu fork: skipped: %s", res.QEMUFork.Skipped)
		}
	}

	res.Ratios = ratios(res)
	res.Setup.Seconds = time.Since(res.Setup.Started).Seconds()
	return res, nil
}

// ratios divides the pipeline's rate by the baselines' (0 when a baseline
// measured nothing).
func ratios(r *Result) Ratios {
	div := func(a, b float64) float64 {
		if b <= 0 {
			return 0
		}
		return a / b
	}
	return Ratios{
		PipelineToRaw:        div(r.Pipeline.PodsPerS, r.Raw.VMsPerS),
		PipelineToSequential: div(r.Pipeline.PodsPerS, r.Sequential.VMsPerS),
	}
}

type progress struct{ w io.Writer }

// bar is Config.Bar, or a func that does nothing.
func (c Config) bar(phase string, total int) func(n int) {
	if c.Bar == nil {
		return func(int) {}
	}
	return c.Bar(phase, total)
}

func (p progress) say(format string, args ...any) {
	if p.w != nil {
		fmt.Fprintf(p.w, "bench: "+format+"\n", args...)
	}
}

// percentile of sorted values (nearest rank).
func percentile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
