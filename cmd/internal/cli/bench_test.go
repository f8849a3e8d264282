package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A tiny bench run prints the JSON shape of the issue, and its ratios are
// the quotients of the rates it measured.
func TestBenchTinyRunJSONShapeAndRatios(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an all-in-one and three simulators")
	}
	chart := filepath.Join(t.TempDir(), "bench.svg")
	prof := filepath.Join(t.TempDir(), "cpu.prof")
	heap := filepath.Join(t.TempDir(), "heap.prof")
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	code := Main(ctx, []string{"--state-dir", t.TempDir(), "bench", "--pods", "20", "--hosts", "4", "-o", "json",
		"--raw-workers", "4,8", "--sequential-vms", "10", "--data-plane-pods", "0", "--chart", chart, "--cpuprofile", prof, "--memprofile", heap, "-q"}, strings.NewReader(""), &out, &errb)
	if code != 0 {
		t.Fatalf("bench: exit %d: %s", code, errb.String())
	}
	// --cpuprofile and --memprofile wrote pprof profiles (gzip-compressed
	// protobuf).
	for _, f := range []string{prof, heap} {
		if b, err := os.ReadFile(f); err != nil || len(b) < 100 || b[0] != 0x1f || b[1] != 0x8b {
			t.Errorf("%s: %d bytes, err %v; want a pprof profile", f, len(b), err)
		}
	}
	var doc map[string]any
	if err := json.Unmarshal(out.Bytes(), &doc); err != nil {
		t.Fatalf("bench -o json: %v\n%s", err, out.String())
	}
	num := func(path string) float64 {
		t.Helper()
		var v any = doc
		for _, k := range strings.Split(path, ".") {
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("%s: %v is not an object", path, v)
			}
			v = m[k]
		}
		f, ok := v.(float64)
		if !ok {
			t.Fatalf("%s = %v (%T), want a number", path, v, v)
		}
		return f
	}
	// The keys of the issue.
	podsPerS, rawRate, seqRate := num("pipeline.pods_per_s"), num("raw.vms_per_s"), num("sequential.vms_per_s")
	p50, p95, p99 := num("pipeline.latency_ms.p50"), num("pipeline.latency_ms.p95"), num("pipeline.latency_ms.p99")
	for name, v := range map[string]float64{"pods_per_s": podsPerS, "raw": rawRate, "sequential": seqRate, "p50": p50} {
		if v <= 0 {
			t.Errorf("%s = %v, want a measured positive number", name, v)
		}
	}
	if !(p50 <= p95 && p95 <= p99 && p99 <= num("pipeline.latency_ms.max")) {
		t.Errorf("latency percentiles out of order: %v %v %v", p50, p95, p99)
	}
	if got := num("pipeline.running"); got != 20 {
		t.Errorf("pipeline.running = %v, want all 20 pods", got)
	}
	// Ratios come from the rates of this run.
	near := func(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }
	if r := num("ratios.pipeline_to_raw"); !near(r, podsPerS/rawRate) {
		t.Errorf("pipeline_to_raw = %v, want %v / %v", r, podsPerS, rawRate)
	}
	if r := num("ratios.pipeline_to_sequential"); !near(r, podsPerS/seqRate) {
		t.Errorf("pipeline_to_sequential = %v, want %v / %v", r, podsPerS, seqRate)
	}
	// The raw figure is the best of the tries, one per worker count.
	tries := doc["raw"].(map[string]any)["tries"].([]any)
	best := 0.0
	for _, tr := range tries {
		best = math.Max(best, tr.(map[string]any)["vms_per_s"].(float64))
	}
	if len(tries) != 2 || best != rawRate {
		t.Errorf("raw tries %v, best %v, reported %v", tries, best, rawRate)
	}
	if num("sequential.vms") != 10 || num("raw.vms") != 20 {
		t.Errorf("baseline sizes: sequential %v, raw %v", num("sequential.vms"), num("raw.vms"))
	}
	// The extra figures are there and plausible.
	if num("scheduling_only.pods_per_s") <= 0 || num("scheduling_only.placed") <= 0 {
		t.Error("no scheduling-only rate")
	}
	if cold, warm := num("image_cache.cold_bytes"), num("image_cache.warm_bytes"); cold <= 0 || warm != 0 {
		t.Errorf("image cache bytes: cold %v, warm %v; want a cold pull and none warm", cold, warm)
	}
	if num("memory.peak_rss_bytes") < 1<<20 || num("memory.est_10k_pods_heap_bytes") < num("memory.heap_after_bytes") {
		t.Errorf("memory figures: %v", doc["memory"])
	}
	// The cost per pod: every pod is at least its request and its record
	// in JetStream, and the process spent CPU on it.
	if w := num("cost.writes_per_pod"); w < 2 {
		t.Errorf("cost.writes_per_pod = %v, want at least the request and the record of each pod", w)
	}
	if sum, w := num("cost.streams.PODS")+num("cost.streams.KV_pods"), num("cost.writes_per_pod"); sum > w+1e-9 || sum < 2 {
		t.Errorf("cost.streams PODS + KV_pods = %v, want at least 2 and at most the total %v", sum, w)
	}
	if num("cost.cpu_ms_per_pod") <= 0 {
		t.Errorf("cost.cpu_ms_per_pod = %v, want a measured positive number", num("cost.cpu_ms_per_pod"))
	}
	svg, err := os.ReadFile(chart)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<svg", "pods/s", "VMs/s", "p99", "20 of 20 pod VMs running", fmt.Sprintf("%.0f pods/s", num("scheduling_only.pods_per_s"))} {
		if !bytes.Contains(svg, []byte(want)) {
			t.Errorf("chart lacks %q", want)
		}
	}
}

func TestBenchRejectsBadFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"bench", "--pods", "0"}, "pods 0"},
		{[]string{"bench", "--hosts", "-1"}, "hosts -1"},
		{[]string{"bench", "--rate", "-5"}, "rate -5"},
		{[]string{"bench", "--raw-workers", "0"}, "raw workers 0"},
		{[]string{"bench", "--qemu-pairs", "-1"}, "qemu pairs -1"},
		{[]string{"bench", "-o", "xml"}, `-o "xml"`},
	} {
		_, errOut, code := run(t, t.TempDir(), "", tt.args...)
		if code != 2 || !strings.Contains(errOut, tt.want) {
			t.Errorf("%v: exit %d, %q; want exit 2 naming %q", tt.args, code, errOut, tt.want)
		}
	}
}
