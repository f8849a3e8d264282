package supervisor

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/podvisor/podvisor/agent/guestchannel"
)

// root stands for the container's root as its processes see it
// (/proc/<pid>/root), its volumes mounted in it.
func TestLookProgramFindsWhatTheContainerWouldRun(t *testing.T) {
	rootfs := t.TempDir()
	write := func(p string, mode os.FileMode) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	write(rootfs+"/bin/busybox", 0o755)
	write(rootfs+"/opt/tool/run", 0o755)
	write(rootfs+"/data.txt", 0o644)
	write(rootfs+"/app/local.sh", 0o755)
	write(rootfs+"/shared/bin/fromvolume", 0o755)
	// An absolute link resolves inside the container's root, not the guest's.
	if err := os.Symlink("/bin/busybox", rootfs+"/bin/sh"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/hostname", rootfs+"/bin/escape"); err != nil {
		t.Fatal(err)
	}
	c := &guestchannel.Container{
		WorkingDir: "/app",
		Env:        []guestchannel.EnvVar{{Name: "PATH", Value: "/opt/tool:/bin:/shared/bin"}},
	}
	for _, tc := range []struct {
		program string
		want    error
	}{
		{"sh", nil},
		{"run", nil},
		{"fromvolume", nil},
		{"/shared/bin/fromvolume", nil},
		{"./local.sh", nil},
		{"local.sh", errProgramNotFound}, // not in PATH
		{"escape", errProgramNotFound},   // the guest's /etc/hostname is not the container's
		{"nope", errProgramNotFound},
		{"/data.txt/x", errProgramNotFound},
		{"/data.txt", errProgramNotExecutable},
		{"/bin", errProgramNotExecutable},
	} {
		if err := lookProgram(c, rootfs, tc.program); !errors.Is(err, tc.want) {
			t.Errorf("lookProgram(%q) = %v, want %v", tc.program, err, tc.want)
		}
	}
	c.Env = nil // the runtimes' default PATH
	if err := lookProgram(c, rootfs, "busybox"); err != nil {
		t.Errorf("busybox in the default PATH: %v", err)
	}
}

// What a shell says of a program it cannot run: an absolute path is no
// file, not a miss in $PATH.
func TestCannotRunSaysWhatAShellSays(t *testing.T) {
	for _, tc := range []struct {
		program  string
		err      error
		wantCode int32
		want     string
	}{
		{"/nonexistent", errProgramNotFound, 127, "/nonexistent: no such file or directory\n"},
		{"./local.sh", errProgramNotFound, 127, "./local.sh: no such file or directory\n"},
		{"nope", errProgramNotFound, 127, "nope: executable file not found in $PATH\n"},
		{"/data.txt", errProgramNotExecutable, 126, "/data.txt: permission denied\n"},
		{"data", errProgramNotExecutable, 126, "data: permission denied\n"},
	} {
		if code, msg := cannotRun(tc.program, tc.err); code != tc.wantCode || msg != tc.want {
			t.Errorf("cannotRun(%q, %v) = %d, %q; want %d, %q", tc.program, tc.err, code, msg, tc.wantCode, tc.want)
		}
	}
}
