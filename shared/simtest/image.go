package simtest

import (
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// BusyboxImage writes an erofs image holding busybox-static, the given
// applets as links to it, /etc/passwd, and files (path in the image →
// content): the filesystem of a one-layer image disk. It needs busybox and
// mkfs.erofs.
func BusyboxImage(t testing.TB, applets []string, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	stage := filepath.Join(dir, "stage")
	for _, d := range []string{"bin", "etc", "tmp"} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stage, "bin/busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range applets {
		if err := os.Symlink("busybox", filepath.Join(stage, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	all := map[string]string{"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n"}
	maps.Copy(all, files)
	for name, content := range all {
		p := filepath.Join(stage, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(dir, "base.erofs")
	if out, err := exec.Command("mkfs.erofs", img, stage).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.erofs: %v: %s", err, out)
	}
	return img
}
