package bench

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestPercentileNearestRank(t *testing.T) {
	v := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, tt := range []struct {
		q    float64
		want float64
	}{{0.5, 5}, {0.95, 10}, {0.99, 10}, {0.1, 1}, {0, 1}} {
		if got := percentile(v, tt.q); got != tt.want {
			t.Errorf("percentile(%v) = %v, want %v", tt.q, got, tt.want)
		}
	}
	if percentile(nil, 0.5) != 0 {
		t.Error("percentile of nothing is not 0")
	}
}

func TestLayoutKeepsClustersAtSixteenHosts(t *testing.T) {
	for _, tt := range []struct{ hosts, clusters, per int }{{4, 1, 4}, {16, 1, 16}, {64, 4, 16}, {17, 2, 9}, {100, 7, 15}} {
		c, p := layout(tt.hosts)
		if c != tt.clusters || p != tt.per || c*p < tt.hosts {
			t.Errorf("layout(%d) = %d × %d, want %d × %d", tt.hosts, c, p, tt.clusters, tt.per)
		}
	}
}

func TestValidateNamesEveryBadField(t *testing.T) {
	err := Config{Pods: 0, Hosts: 20000, Rate: -1, RawWorkers: []int{0}}.Validate()
	for _, want := range []string{"pods 0", "hosts 20000", "rate -1", "raw workers 0"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v, want it to name %q", err, want)
		}
	}
	if err := (Config{Pods: 10, Hosts: 4}).withDefaults().Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
}

func TestRatiosAndMemoryEstimate(t *testing.T) {
	r := &Result{Pipeline: Pipeline{PodsPerS: 80}, Raw: Raw{VMsPerS: 100}, Sequential: Sequential{VMsPerS: 20}}
	if got := ratios(r); got.PipelineToRaw != 0.8 || got.PipelineToSequential != 4 {
		t.Errorf("ratios = %+v", got)
	}
	if got := ratios(&Result{Pipeline: Pipeline{PodsPerS: 5}}); got.PipelineToRaw != 0 {
		t.Errorf("ratio against an unmeasured baseline = %v, want 0", got.PipelineToRaw)
	}
	m := memoryFigures(100<<20, 110<<20, 1000)
	if m.HeapPerPodBytes != (10<<20)/1000 || m.Est10kPodsBytes != 110<<20+m.HeapPerPodBytes*9000 || !m.Estimated {
		t.Errorf("memory = %+v", m)
	}
	if m := memoryFigures(1, 2, 10_000); m.Estimated || m.Est10kPodsBytes != 2 {
		t.Errorf("at 10k pods the figure is measured: %+v", m)
	}
}

func TestDataPlaneSectionInTheTable(t *testing.T) {
	if err := (Config{Pods: 1, Hosts: 1, DataPlanePods: -1}).Validate(); err == nil || !strings.Contains(err.Error(), "data-plane pods -1") {
		t.Errorf("Validate: %v, want it to name the data-plane pods", err)
	}
	var out strings.Builder
	r := &Result{DataPlane: &DataPlane{Pods: 100, Skipped: "needs root: simulated guests run in namespaces and cgroups"}}
	if err := r.Table(&out); err != nil || !strings.Contains(out.String(), "data plane: skipped: needs root") {
		t.Errorf("a skipped section prints %q (%v), want the reason", out.String(), err)
	}
	out.Reset()
	r.DataPlane = &DataPlane{Pods: 100, Running: 100, Runtime: "crun", LatencyMS: Latency{P50: 900, P95: 1500, P99: 1800}, Seconds: 1.9,
		Direct: DirectRuntime{Runtime: "crun", Workers: 16, LatencyMS: Latency{P99: 900}, Seconds: 0.95}, P99ToDirect: 2, SecondsToDirect: 2,
		Paced: &PacedDataPlane{Rate: 50, Pods: 100, Running: 99, LatencyMS: Latency{P50: 700, P95: 1100, P99: 1234},
			Direct: DirectRuntime{Runtime: "crun", Rate: 50, LatencyMS: Latency{P50: 80, P95: 100, P99: 617}}, P99ToDirect: 2}}
	if err := r.Table(&out); err != nil || !strings.Contains(out.String(), "p99 2.00×") || !strings.Contains(out.String(), "crun run") ||
		!strings.Contains(out.String(), "runtime crun") {
		t.Errorf("the section prints %q (%v), want the p99 ratio against crun run and the guests' runtime", out.String(), err)
	}
	if !strings.Contains(out.String(), "paced (100 pods at 50/s): 99 Running") || !strings.Contains(out.String(), "700 / 1100 / 1234 ms") {
		t.Errorf("the section prints %q, want the paced run's count and percentiles", out.String())
	}
	if !strings.Contains(out.String(), "direct crun run at the same rate: 80 / 100 / 617 ms; p99 2.00×") {
		t.Errorf("the section prints %q, want the paced direct baseline and its ratio", out.String())
	}
	// Stages and the burst's writes per pod, when measured.
	out.Reset()
	r.DataPlane.Stages = []Stage{{Name: "vm_running", P50: 400, P99: 700}, {Name: "running", P50: 900, P99: 1800}}
	r.DataPlane.Cost = &Cost{WritesPerPod: 15, Streams: map[string]float64{"PODS": 8, "KV_pods": 7}, CPUMSPerPod: 30}
	r.DataPlane.Paced.Stages = []Stage{{Name: "running", P50: 700, P99: 1234}}
	if err := r.Table(&out); err != nil || !strings.Contains(out.String(), "data plane stages, p50/p99 ms after the request: vm_running 400/700, running 900/1800") ||
		!strings.Contains(out.String(), "data plane paced stages, p50/p99 ms after the request: running 700/1234") ||
		!strings.Contains(out.String(), "15.00 JetStream writes (PODS 8.00, KV_pods 7.00); CPU 30.0 ms") {
		t.Errorf("the section prints %q (%v), want each stage's p50/p99 and the burst's writes per pod", out.String(), err)
	}
	if err := (Config{Pods: 1, Hosts: 1, DataPlaneRate: -1}).Validate(); err == nil || !strings.Contains(err.Error(), "data-plane rate -1") {
		t.Errorf("Validate: %v, want it to name the data-plane rate", err)
	}
	if why := dataPlaneReady("/nonexistent/podvm-agent"); why == "" {
		t.Error("dataPlaneReady with no agent binary said ready")
	}
}

func TestVSphereCallsPerPod(t *testing.T) {
	before := map[string]int64{"CreateVM_Task": 3, "Login": 1}
	after := map[string]int64{"CreateVM_Task": 13, "Login": 1, "PowerOnVM_Task": 10, "RetrievePropertiesEx": 25}
	v := vsphereCalls(before, after, 10)
	if v.PerPod != 4.5 || v.ByMethod["RetrievePropertiesEx"] != 2.5 || v.ByMethod["CreateVM_Task"] != 1 {
		t.Errorf("calls = %+v, want 4.5 per pod with 2.5 RetrievePropertiesEx and 1 CreateVM_Task", v)
	}
	if _, ok := v.ByMethod["Login"]; ok {
		t.Errorf("Login, not called during the phase, is counted: %+v", v)
	}
	if got, want := v.topMethods(2), "RetrievePropertiesEx 2.50, CreateVM_Task 1.00, …"; got != want {
		t.Errorf("topMethods = %q, want %q", got, want)
	}
	if got := vsphereCalls(before, after, 0); got.PerPod != 0 {
		t.Errorf("no pods: %+v, want nothing", got)
	}
}

// procMemory reads a live process's figures: its proportional set size is
// at most its resident set (shared pages count in part), and the resident
// set is its anonymous and file-backed parts (shared memory aside).
func TestProcMemoryReadsALiveProcess(t *testing.T) {
	m, err := procMemory(strconv.Itoa(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if m.RSSBytes <= 0 || m.PeakBytes < m.RSSBytes {
		t.Errorf("rss %d, peak %d: want 0 < rss ≤ peak", m.RSSBytes, m.PeakBytes)
	}
	// Pss against the Rss of the same read: status and smaps_rollup are
	// two reads, between which the process may fault in a page.
	var rollupRSS int64
	if err := readKB(filepath.Join("/proc", strconv.Itoa(os.Getpid()), "smaps_rollup"), map[string]*int64{"Rss": &rollupRSS}); err != nil {
		t.Fatal(err)
	}
	if m.PSSBytes <= 0 || m.PSSBytes > rollupRSS+64<<10 {
		t.Errorf("pss %d, rss in smaps_rollup %d: want 0 < pss ≤ rss", m.PSSBytes, rollupRSS)
	}
	if m.AnonBytes <= 0 || m.FileBytes <= 0 || m.AnonBytes+m.FileBytes > m.RSSBytes {
		t.Errorf("anon %d + file %d, rss %d: want both parts within the resident set", m.AnonBytes, m.FileBytes, m.RSSBytes)
	}
	if _, err := procMemory("0"); err == nil {
		t.Error("pid 0: no error")
	}
}
