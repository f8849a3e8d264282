package qemu

import (
	"bufio"
	"net"
	"path/filepath"
	"strings"
	"testing"
)

// fakeMonitor answers QEMU's human monitor protocol on a unix socket: a
// greeting and a prompt, then for each command its echo, answers[cmd]
// and a prompt.
func fakeMonitor(t *testing.T, answers map[string]string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "monitor.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = c.Write([]byte("QEMU 7.2.22 monitor - type 'help' for more information\r\n" + prompt))
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					cmd := strings.TrimSpace(line)
					_, _ = c.Write([]byte(cmd + "\r\n" + answers[cmd] + prompt))
				}
			}()
		}
	}()
	return path
}

// A command's output is what comes between its echo and the next prompt;
// a command the monitor refuses is an error naming what it said.
func TestMonitorCommands(t *testing.T) {
	path := fakeMonitor(t, map[string]string{
		"info status": "VM status: paused (inmigrate)\r\n",
		"migrate_set_capability x-ignore-shared on": "",
		"cont": "Error: Migration is not finished yet\r\n",
	})
	out, err := hmp(path, "info status")
	if err != nil || !strings.Contains(out, "inmigrate") {
		t.Errorf("info status: %q, %v; want the status", out, err)
	}
	if _, err := hmp(path, "migrate_set_capability x-ignore-shared on"); err != nil {
		t.Errorf("a command with no output: %v", err)
	}
	if _, err := hmp(path, "cont"); err == nil || !strings.Contains(err.Error(), "Migration is not finished yet") {
		t.Errorf("a refused command: %v, want the monitor's error", err)
	}
	if _, err := hmp(filepath.Join(t.TempDir(), "none"), "cont"); err == nil {
		t.Error("no monitor: no error")
	}
}

// Only a booted machine, whose RAM is a shared file, forks.
func TestForkOfAChildRefused(t *testing.T) {
	child := &Machine{}
	if _, err := child.Fork(t.Context(), t.TempDir(), nil); err == nil || !strings.Contains(err.Error(), "only a booted machine forks") {
		t.Errorf("fork of a child: %v", err)
	}
}

// Missing names every tool not on PATH.
func TestMissingNamesTheTools(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	got := Missing()
	for _, tool := range Tools {
		if !strings.Contains(got, tool) {
			t.Errorf("Missing() = %q, want it to name %s", got, tool)
		}
	}
}

// The RAM's file goes on /dev/shm only where it fits whole.
func TestShmFits(t *testing.T) {
	dir := t.TempDir()
	if !shmFits(dir, 1) {
		t.Fatalf("%s has no room for a byte", dir)
	}
	if shmFits(dir, 1<<62) {
		t.Fatalf("%s has room for 4 EiB", dir)
	}
	if shmFits(filepath.Join(dir, "missing"), 1) {
		t.Fatal("a missing directory has room")
	}
}
