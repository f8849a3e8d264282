package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/shared/simtest"
)

// The data-plane section through the CLI, guests on: a small burst runs
// every container, the same bundles run with the runtime directly, and
// --data-plane-spans reports where the pods' time went, step by step.
func TestBenchDataPlaneSectionWithSpans(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an all-in-one with guests")
	}
	privtest.Require(t, "the data-plane section boots simulated guests")
	privtest.RequireTools(t, "crun")
	agent, err := simtest.AgentBinary()
	if err != nil {
		t.Fatalf("build podvm-agent: %v", err)
	}
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	code := Main(ctx, []string{"--state-dir", t.TempDir(), "bench", "--agent", agent, "--pods", "2", "--hosts", "2",
		"--image-mib", "0", "--raw-workers", "2", "--sequential-vms", "2", "--fork-pairs", "0",
		"--data-plane-pods", "3", "--data-plane-rate", "0", "--data-plane-spans", "-o", "json", "-q"}, strings.NewReader(""), &out, &errb)
	if code != 0 {
		t.Fatalf("bench: exit %d: %s", code, errb.String())
	}
	var res struct {
		DataPlane struct {
			Skipped   string `json:"skipped"`
			Running   int    `json:"running"`
			LatencyMS struct {
				P99 float64 `json:"p99"`
			} `json:"latency_ms"`
			Direct struct {
				Containers int `json:"containers"`
			} `json:"direct"`
			P99ToDirect float64            `json:"p99_to_direct"`
			Spans       map[string]float64 `json:"spans_p50_ms"`
		} `json:"data_plane"`
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("bench -o json: %v\n%s", err, out.String())
	}
	dp := res.DataPlane
	if dp.Skipped != "" || dp.Running != 3 || dp.LatencyMS.P99 <= 0 || dp.Direct.Containers != 3 || dp.P99ToDirect <= 0 {
		t.Fatalf("data plane: %+v", dp)
	}
	for _, span := range []string{"provisioner.provision", "provisioner.create_vm", "provisioner.power_on"} {
		if dp.Spans[span] <= 0 {
			t.Errorf("span %s: median %v ms, want one per pod (spans: %v)", span, dp.Spans[span], dp.Spans)
		}
	}
}
