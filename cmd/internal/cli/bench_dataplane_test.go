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

// benchWithGuests runs `podvisor bench -o json` with the simulated guests'
// agent, its pipeline sections as small as they go, and the sections args
// choose; it returns the JSON.
func benchWithGuests(t *testing.T, args ...string) []byte {
	t.Helper()
	agent, err := simtest.AgentBinary()
	if err != nil {
		t.Fatalf("build podvm-agent: %v", err)
	}
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	code := Main(ctx, append([]string{"--state-dir", t.TempDir(), "bench", "--agent", agent, "--pods", "2", "--hosts", "2",
		"--image-mib", "0", "--raw-workers", "2", "--sequential-vms", "2", "-o", "json", "-q"}, args...), strings.NewReader(""), &out, &errb)
	if code != 0 {
		t.Fatalf("bench: exit %d: %s", code, errb.String())
	}
	return out.Bytes()
}

// The data-plane section through the CLI, guests on: a small burst runs
// every container, the same bundles run with the runtime directly, and
// --data-plane-spans reports where the pods' time went, step by step.
func TestBenchDataPlaneSectionWithSpans(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an all-in-one with guests")
	}
	privtest.Require(t, "the data-plane section boots simulated guests")
	privtest.RequireTools(t, "crun")
	out := benchWithGuests(t, "--fork-pairs", "0", "--data-plane-pods", "3", "--data-plane-rate", "0", "--data-plane-spans")
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
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("bench -o json: %v\n%s", err, out)
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

// The fork section on network serial ports (`bench --data-plane-channel
// serial`), as pod VMs on a vCenter: the template's guest and the forked
// pods' talk to the concentrator, every forked pod is an instant clone, and
// forks resume the template's standby.
func TestBenchForkSectionOnSerialChannels(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an all-in-one with guests")
	}
	privtest.Require(t, "the fork section boots simulated guests")
	privtest.RequireTools(t, "runc", "mkfs.erofs", "mkfs.ext4", "busybox")
	out := benchWithGuests(t, "--data-plane-pods", "0", "--fork-pairs", "2", "--data-plane-channel", "serial")
	var res struct {
		Fork struct {
			Skipped   string `json:"skipped"`
			Channel   string `json:"channel"`
			Pairs     int    `json:"pairs"`
			NotForked int    `json:"not_forked"`
			Resumed   int    `json:"resumed"`
			Forked    struct {
				P50 float64 `json:"p50"`
			} `json:"forked_ms"`
		} `json:"fork"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("bench -o json: %v\n%s", err, out)
	}
	f := res.Fork
	if f.Skipped != "" || f.Channel != "serial" || f.Pairs != 2 || f.NotForked != 0 || f.Resumed < 1 || f.Forked.P50 <= 0 {
		t.Fatalf("fork section on serial channels: %+v, want 2 pairs on serial channels, every pod forked, at least one resuming a standby", f)
	}
	t.Logf("fork section on serial channels: %+v", f)
}
