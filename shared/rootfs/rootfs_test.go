package rootfs

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type entry struct {
	name, link, body string
	kind             byte
	mode             int64
}

func tarOf(t *testing.T, entries ...entry) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.kind, Mode: e.mode, Size: int64(len(e.body)), Uid: os.Getuid(), Gid: os.Getgid()}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}

// An image's files, modes and links land under the directory.
func TestExtract(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "root")
	err := Extract(tarOf(t,
		entry{name: "bin/", kind: tar.TypeDir, mode: 0o755},
		entry{name: "bin/busybox", kind: tar.TypeReg, mode: 0o755, body: "elf"},
		entry{name: "bin/sh", kind: tar.TypeSymlink, link: "busybox"},
		entry{name: "bin/ls", kind: tar.TypeLink, link: "bin/busybox"},
		entry{name: "etc/hostname", kind: tar.TypeReg, mode: 0o600, body: "pod"},
		entry{name: "dev/null", kind: tar.TypeChar, mode: 0o666},
		entry{name: "etc/motd", kind: tar.TypeSymlink, link: "hostname"},
		entry{name: "etc/motd", kind: tar.TypeReg, mode: 0o644, body: "hi"},
	), dir)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "bin/sh")); err != nil || string(b) != "elf" {
		t.Errorf("bin/sh reads %q, %v", b, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "bin/busybox")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("bin/busybox: %v, %v", st, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "etc/hostname")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("etc/hostname: %v, %v", st, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "etc/hostname")); err != nil || string(b) != "pod" {
		t.Errorf("a file written through a link made before it: etc/hostname reads %q, %v", b, err)
	}
	if st, err := os.Lstat(filepath.Join(dir, "etc/motd")); err != nil || !st.Mode().IsRegular() {
		t.Errorf("etc/motd is not the file that replaced the link: %v, %v", st, err)
	}
	a, _ := os.Stat(filepath.Join(dir, "bin/busybox"))
	b, _ := os.Stat(filepath.Join(dir, "bin/ls"))
	if a == nil || b == nil || !os.SameFile(a, b) {
		t.Errorf("bin/ls is not a hard link of bin/busybox")
	}
	if _, err := os.Lstat(filepath.Join(dir, "dev/null")); !os.IsNotExist(err) {
		t.Errorf("a device was made: %v", err)
	}
}

// A hostile image cannot write outside the directory: a name that climbs
// out stays inside, and a path through a symbolic link pointing out is
// refused, naming the entry.
func TestExtractStaysInside(t *testing.T) {
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "root")
	if err := Extract(tarOf(t, entry{name: "../../outside/climbed", kind: tar.TypeReg, mode: 0o644, body: "x"}), dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "outside/climbed")); err != nil {
		t.Errorf("a climbing name is not kept inside: %v", err)
	}
	for _, tc := range [][]entry{
		{{name: "etc", kind: tar.TypeSymlink, link: outside}, {name: "etc/passwd", kind: tar.TypeReg, mode: 0o644, body: "root"}},
		{{name: "up", kind: tar.TypeSymlink, link: "../outside"}, {name: "up/dir/", kind: tar.TypeDir, mode: 0o755}},
		{{name: "etc", kind: tar.TypeSymlink, link: outside}, {name: "etc/shadow", kind: tar.TypeLink, link: "bin/sh"}},
	} {
		dir := filepath.Join(t.TempDir(), "root")
		err := Extract(tarOf(t, tc...), dir)
		if err == nil || !strings.Contains(err.Error(), tc[1].name) {
			t.Errorf("%s through %s -> %s: error %v, want one naming the entry", tc[1].name, tc[0].name, tc[0].link, err)
		}
	}
	if left, _ := os.ReadDir(outside); len(left) != 0 {
		t.Fatalf("written outside: %v", left)
	}
}
