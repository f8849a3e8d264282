//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// `podvisor bench --services-apart` runs every service as a process of its
// own and reports the control plane's memory apart from NATS and the
// simulator: each service's resident set, its private part, and the sum
// that counts the shared executable once. --memprofile writes a heap
// profile of the bench's process and of each service process.
func TestBenchMeasuresTheControlPlaneApart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	prof := filepath.Join(t.TempDir(), "heap.pb")
	cmd := exec.CommandContext(ctx, podvisorBin(t), "--state-dir", t.TempDir(), "bench", "--services-apart", "--memprofile", prof,
		"--pods", "20", "--hosts", "4", "--raw-workers", "4", "--sequential-vms", "5",
		"--image-mib", "0", "--data-plane-pods", "0", "--fork-pairs", "0", "-o", "json", "-q")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bench --services-apart: %v\n%s", err, stderr.String())
	}
	var res struct {
		Pipeline struct {
			Running int `json:"running"`
		} `json:"pipeline"`
		Memory struct {
			Services []struct {
				Name      string `json:"name"`
				RSSBytes  int64  `json:"rss_bytes"`
				PeakBytes int64  `json:"peak_rss_bytes"`
				AnonBytes int64  `json:"rss_anon_bytes"`
				FileBytes int64  `json:"rss_file_bytes"`
				Exe       string `json:"executable"`
			} `json:"services"`
			RSS      int64 `json:"control_plane_rss_bytes"`
			Resident int64 `json:"control_plane_resident_bytes"`
			Peak     int64 `json:"peak_rss_bytes"`
		} `json:"memory"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("bench -o json: %v\n%s", err, out)
	}
	if res.Pipeline.Running != 20 {
		t.Errorf("pipeline.running = %d, want all 20 pods with the services in processes of their own", res.Pipeline.Running)
	}
	m := res.Memory
	names := map[string]bool{}
	var sum, anon, file int64
	for _, s := range m.Services {
		names[strings.TrimSuffix(s.Name, "-0")] = true
		if s.RSSBytes <= 0 || s.AnonBytes <= 0 || s.FileBytes <= 0 || s.AnonBytes+s.FileBytes > s.RSSBytes || s.PeakBytes < s.RSSBytes {
			t.Errorf("%s: rss %d, anon %d, file %d, peak %d: want positive parts within the resident set, under its peak",
				s.Name, s.RSSBytes, s.AnonBytes, s.FileBytes, s.PeakBytes)
		}
		// make build puts podvisord beside podvisor: the services run it.
		if s.Exe != "podvisord" {
			t.Errorf("%s runs %q, want podvisord (beside the podvisor executable)", s.Name, s.Exe)
		}
		sum += s.RSSBytes
		anon += s.AnonBytes
		file = max(file, s.FileBytes)
	}
	for _, want := range []string{"scheduler", "provisioner", "imagecache", "netconfig", "migration"} {
		if !names[want] {
			t.Errorf("no memory figure for the %s process (got %v)", want, names)
		}
	}
	if m.RSS != sum || m.Resident != anon+file || m.Resident >= m.RSS {
		t.Errorf("control plane: rss %d (sum %d), resident %d (private %d + executable once %d): want the sums, resident below rss",
			m.RSS, sum, m.Resident, anon, file)
	}
	if m.Peak <= 0 {
		t.Errorf("peak_rss_bytes of the bench's own process = %d", m.Peak)
	}
	// A pprof profile is gzip-compressed protobuf.
	for _, f := range []string{prof, prof + ".scheduler-0", prof + ".provisioner-0"} {
		if b, err := os.ReadFile(f); err != nil || len(b) < 100 || b[0] != 0x1f || b[1] != 0x8b {
			t.Errorf("--memprofile: %s: %d bytes, err %v; want a pprof heap profile", f, len(b), err)
		}
	}
}
