package supervisor

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/podvisor/podvisor/agent/guestchannel"
)

func TestLookProgramFindsWhatTheContainerWouldRun(t *testing.T) {
	rootfs, vol := t.TempDir(), t.TempDir()
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
	write(vol+"/bin/fromvolume", 0o755)
	// An absolute link resolves inside the container's root, not the guest's.
	if err := os.Symlink("/bin/busybox", rootfs+"/bin/sh"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/hostname", rootfs+"/bin/escape"); err != nil {
		t.Fatal(err)
	}
	c := &guestchannel.Container{
		WorkingDir:   "/app",
		Env:          []guestchannel.EnvVar{{Name: "PATH", Value: "/opt/tool:/bin:/shared/bin"}},
		VolumeMounts: []guestchannel.VolumeMount{{Name: "shared", MountPath: "/shared/"}},
	}
	volumes := map[string]string{"shared": vol}
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
		if err := lookProgram(c, rootfs, volumes, tc.program); !errors.Is(err, tc.want) {
			t.Errorf("lookProgram(%q) = %v, want %v", tc.program, err, tc.want)
		}
	}
	c.Env = nil // the runtimes' default PATH
	if err := lookProgram(c, rootfs, volumes, "busybox"); err != nil {
		t.Errorf("busybox in the default PATH: %v", err)
	}
}
