package simtest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/podvisor/podvisor/agent/privtest"
)

var (
	builtMu   sync.Mutex
	builtDirs []string
)

// Binary returns a function that builds a Go main package (static,
// CGO_ENABLED=0), once per test binary, and returns the program's path:
// the pod VM agent for a simulated guest, say. pkg is what `go build` is
// given (an import path, or a directory relative to the test's package).
// TestMain calls RemoveBinaries after the run.
func Binary(pkg string) func() (string, error) {
	return sync.OnceValues(func() (string, error) {
		dir, err := os.MkdirTemp("", "podvisor-build-")
		if err != nil {
			return "", err
		}
		builtMu.Lock()
		builtDirs = append(builtDirs, dir)
		builtMu.Unlock()
		out := filepath.Join(dir, filepath.Base(pkg))
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", errors.New("go build " + pkg + ": " + string(b))
		}
		return out, nil
	})
}

// AgentBinary builds the pod VM agent (agent/cmd/podvm-agent).
var AgentBinary = Binary("github.com/podvisor/podvisor/agent/cmd/podvm-agent")

// GuestAgent is the start of a test that runs simulated guests: it skips
// the test (fails it under PODVISOR_REQUIRE_PRIVILEGED) unless it runs as
// root with what a guest's agent uses (runc, mkfs.erofs, mkfs.ext4,
// busybox) and tools, why saying what needs root, and returns the pod VM
// agent built for them.
func GuestAgent(t testing.TB, why string, tools ...string) string {
	t.Helper()
	privtest.Require(t, why)
	privtest.RequireTools(t, append([]string{"runc", "mkfs.erofs", "mkfs.ext4", "busybox"}, tools...)...)
	agent, err := AgentBinary()
	if err != nil {
		t.Fatalf("build podvm-agent: %v", err)
	}
	return agent
}

// RemoveBinaries removes what Binary built.
func RemoveBinaries() {
	builtMu.Lock()
	defer builtMu.Unlock()
	for _, d := range builtDirs {
		os.RemoveAll(d)
	}
	builtDirs = nil
}
