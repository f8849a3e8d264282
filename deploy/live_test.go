package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tilt/live/start.sh and restart.sh are what makes a live update swap the
// binary inside a running dev container. They run here under the host's sh
// (the image runs them under busybox sh), with a stand-in podvisor.
func TestLiveUpdateScripts(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	root := repoRoot(t)
	dir := t.TempDir()
	live := filepath.Join(dir, "live")
	log := filepath.Join(dir, "log")
	fake := func(path, label string) {
		t.Helper()
		script := "#!/bin/sh\necho \"" + label + " $*\" >>" + log + "\nexec sleep 30\n"
		if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	imageBinary := filepath.Join(dir, "podvisor")
	fake(imageBinary, "image")

	start := exec.Command(sh, filepath.Join(root, "tilt", "live", "start.sh"), imageBinary, "serve", "scheduler")
	start.Env = append(os.Environ(), "PODVISOR_LIVE_DIR="+live)
	if err := start.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- start.Wait() }()
	t.Cleanup(func() {
		_ = start.Process.Kill()
		if pid, err := os.ReadFile(filepath.Join(live, "pid")); err == nil {
			if n, err := strconv.Atoi(strings.TrimSpace(string(pid))); err == nil {
				_ = syscall.Kill(n, syscall.SIGKILL)
			}
		}
	})

	waitForLog(t, log, "image serve scheduler")
	fake(filepath.Join(live, "podvisor"), "live")
	restart := exec.Command(sh, filepath.Join(root, "tilt", "live", "restart.sh"))
	restart.Env = append(os.Environ(), "PODVISOR_LIVE_DIR="+live)
	if out, err := restart.CombinedOutput(); err != nil {
		t.Fatalf("restart.sh: %v\n%s", err, out)
	}
	waitForLog(t, log, "live serve scheduler")
	select {
	case err := <-exited:
		t.Fatalf("start.sh exited after a restart (%v); it must run the new binary in its place", err)
	default:
	}

	// SIGTERM (pod deletion) stops podvisor and start.sh with it.
	pidText, _ := os.ReadFile(filepath.Join(live, "pid"))
	child, _ := strconv.Atoi(strings.TrimSpace(string(pidText)))
	if err := start.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("start.sh did not exit on SIGTERM")
	}
	if child == 0 || syscall.Kill(child, 0) == nil {
		t.Errorf("podvisor (pid %d) outlived start.sh's SIGTERM", child)
	}
}

func waitForLog(t *testing.T, path, line string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		data, _ := os.ReadFile(path)
		if strings.Contains(string(data), line+"\n") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q never appeared; log:\n%s", line, data)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
