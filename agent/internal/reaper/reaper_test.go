package reaper

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestExitCodesAndSignals(t *testing.T) {
	for _, tc := range []struct {
		script       string
		code, signal int
	}{
		{"exit 3", 3, 0},
		{"kill -9 $$", 137, 9},
		{"kill -TERM $$", 143, 15},
	} {
		st, err := Wait(exec.Command("/bin/sh", "-c", tc.script))
		if err != nil {
			t.Fatal(err)
		}
		if st.ExitCode() != tc.code || st.Signal() != tc.signal {
			t.Errorf("%q: exit %d signal %d, want %d %d", tc.script, st.ExitCode(), st.Signal(), tc.code, tc.signal)
		}
	}
}

// An orphan comes back to the reaper (a subreaper here, PID 1 in a guest)
// and its status waits for Claim, even when it ended before the claim —
// a container's init started by `runc run --detach` does both.
func TestClaimOrphan(t *testing.T) {
	for _, script := range []string{
		// The orphan ends before it is claimed: its parent has exec'd sleep
		// by then, which never reaps it (a shell might, and the orphan
		// would never come back), so it returns to the reaper, already
		// ended, when sleep ends.
		"(sleep 0.1; exit 4) & echo $!; exec sleep 0.4",
		"(sleep 0.2; exit 4) & echo $!", // orphan outlives its parent
	} {
		out, st, err := Output(exec.Command("/bin/sh", "-c", script))
		if err != nil || st.ExitCode() != 0 {
			t.Fatalf("%q: %v %v", script, st, err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
		if err != nil {
			t.Fatalf("%q: %q", script, out)
		}
		select {
		case st := <-Claim(pid):
			if st.ExitCode() != 4 {
				t.Errorf("%q: orphan exit %d, want 4", script, st.ExitCode())
			}
		case <-time.After(5 * time.Second):
			t.Errorf("%q: orphan %d never reaped", script, pid)
		}
	}
}
