package bench

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The guest's stages are read from its console: the agent's start is its
// init line's time less the init's duration; lines from before the
// request (a standby's own boot) do not count.
func TestGuestStagesReadTheConsole(t *testing.T) {
	sent := time.Date(2026, 12, 2, 12, 17, 1, 0, time.UTC)
	console := filepath.Join(t.TempDir(), "console.log")
	lines := `time=2026-12-02T12:17:00.788Z level=INFO msg="standby: prepared, waiting to be taken over" took=145ms
time=2026-12-02T12:17:00.900Z level=INFO msg="boot phase" phase=init ms=3
time=2026-12-02T12:17:01.050Z level=INFO msg="boot phase" phase=init ms=12.5
time=2026-12-02T12:17:01.080Z level=INFO msg="boot phase" phase=disks ms=0.239 total_ms=6.477
time=2026-12-02T12:17:01.150Z level=INFO msg="container created" part=supervisor container=app runtime=crun prepare_ms=3 runtime_ms=60
time=2026-12-02T12:17:01.170Z level=INFO msg="container created" part=supervisor container=sidecar runtime=crun prepare_ms=3 runtime_ms=20
time=2026-12-02T12:17:01.200Z level=INFO msg="boot phase" phase=network ms=0.5 nics=1
time=2026-12-02T12:17:01.300Z level=INFO msg="container started" part=supervisor container=app runtime=crun prepare_ms=33 runtime_ms=347
time=2026-12-02T12:17:01.400Z level=INFO msg="container started" part=supervisor container=sidecar runtime=crun prepare_ms=3 runtime_ms=47
not a log line
`
	if err := os.WriteFile(console, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	got := guestStages(console, sent)
	want := map[string]float64{stageGuestStarted: 37.5, stageDisksReady: 80, stageContainerCreated: 150, stageNetworkReady: 200, stageContainerStarted: 300}
	if len(got) != len(want) {
		t.Fatalf("stages %v, want %v", got, want)
	}
	for k, v := range want {
		if d := got[k] - v; d > 0.001 || d < -0.001 {
			t.Errorf("%s = %.3f ms, want %.3f", k, got[k], v)
		}
	}
	if got := guestStages(filepath.Join(t.TempDir(), "none"), sent); len(got) != 0 {
		t.Errorf("no console: %v, want nothing", got)
	}
}
