package layerfs_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/services/imagecache/internal/tartest"
	"github.com/podvisor/podvisor/services/imagecache/layerfs"
)

// entry is a tar entry for the tests.
type entry struct {
	name, link, body string
	typ              byte
	mode             int64
	uid, gid         int
	xattrs           map[string]string
	major, minor     int64
	nsec             int64 // of the mtime, 1600000000 s
}

func tarOf(t testing.TB, es ...entry) []byte {
	t.Helper()
	tes := make([]tartest.Entry, len(es))
	for i, e := range es {
		h := tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			Devmajor: e.major, Devminor: e.minor, Size: int64(len(e.body)), ModTime: time.Unix(1_600_000_000, e.nsec), Format: tar.FormatPAX}
		body := e.body
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag != tar.TypeReg {
			h.Size, body = 0, ""
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		tes[i] = tartest.Entry{Header: h, Body: body, Xattrs: e.xattrs}
	}
	return tartest.Tar(t, tes...)
}

// TestHostileLayersRefused: every hostile entry fails the layer with a
// reason naming it, and nothing is written outside the staging root.
func TestHostileLayersRefused(t *testing.T) {
	privtest.Require(t, "stages layers with owners and device nodes")
	for _, tc := range []struct {
		name    string
		entries []entry
		want    string
	}{
		{"dotdot name", []entry{{name: "../escape", body: "x"}}, "climbs above the root"},
		{"dotdot inside", []entry{{name: "a/../../escape", body: "x"}}, "climbs above the root"},
		{"through symlink", []entry{{name: "l", typ: tar.TypeSymlink, link: "/tmp"}, {name: "l/escape", body: "x"}}, "is not a directory"},
		{"through relative symlink", []entry{{name: "l", typ: tar.TypeSymlink, link: "../../.."}, {name: "l/escape", body: "x"}}, "is not a directory"},
		{"hard link absolute", []entry{{name: "h", typ: tar.TypeLink, link: "/etc/passwd"}}, "absolute path"},
		{"hard link dotdot", []entry{{name: "h", typ: tar.TypeLink, link: "../../etc/passwd"}}, "climbs above the root"},
		{"hard link to nothing", []entry{{name: "h", typ: tar.TypeLink, link: "nothing"}}, "not an earlier file"},
		{"duplicate", []entry{{name: "f", body: "1"}, {name: "f", body: "2"}}, "duplicate entry"},
		{"whiteout of own entry", []entry{{name: "f", body: "1"}, {name: ".wh.f"}}, "which the same layer has"},
		{"overlay xattr", []entry{{name: "d", typ: tar.TypeDir, mode: 0o755, xattrs: map[string]string{"trusted.overlay.redirect": "/x"}}}, "overlayfs metadata"},
		{"not a tar", nil, "read tar"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			outer := t.TempDir()
			root := filepath.Join(outer, "root")
			if err := os.Mkdir(root, 0o755); err != nil {
				t.Fatal(err)
			}
			data := []byte("this is not a tar stream at all, not even close to 512 bytes")
			if tc.entries != nil {
				data = tarOf(t, tc.entries...)
			}
			err := layerfs.StageInto(context.Background(), bytes.NewReader(data), root, layerfs.Options{}, nil)
			if err == nil || !errors.Is(err, layerfs.ErrInvalidLayer) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Stage: err = %v, want ErrInvalidLayer mentioning %q", err, tc.want)
			}
			assertOnlyRoot(t, outer)
			// Read refuses the same entries for the same reasons, and
			// leaves nothing behind.
			tmp := t.TempDir()
			_, err = layerfs.Read(context.Background(), bytes.NewReader(data), layerfs.Options{TempDir: tmp})
			if err == nil || !errors.Is(err, layerfs.ErrInvalidLayer) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Read: err = %v, want ErrInvalidLayer mentioning %q", err, tc.want)
			}
			if des, _ := os.ReadDir(tmp); len(des) != 0 {
				t.Fatalf("Read left %d files behind", len(des))
			}
		})
	}
}

// TestEntryCap: a layer of more entries than the cap stops at the cap.
func TestEntryCap(t *testing.T) {
	privtest.Require(t, "stages layers with owners")
	var es []entry
	for i := range 20 {
		es = append(es, entry{name: "f" + string(rune('a'+i)), body: "x"})
	}
	_, err := layerfs.Stage(context.Background(), bytes.NewReader(tarOf(t, es...)), layerfs.Options{TempDir: t.TempDir(), MaxEntries: 10})
	if err == nil || !strings.Contains(err.Error(), "more than 10 entries") {
		t.Fatalf("Stage: err = %v, want the entry cap", err)
	}
	_, err = layerfs.Read(context.Background(), bytes.NewReader(tarOf(t, es...)), layerfs.Options{TempDir: t.TempDir(), MaxEntries: 10})
	if err == nil || !strings.Contains(err.Error(), "more than 10 entries") {
		t.Fatalf("Read: err = %v, want the entry cap", err)
	}
}

// assertOnlyRoot fails when outer holds anything but root.
func assertOnlyRoot(t testing.TB, outer string) {
	t.Helper()
	des, err := os.ReadDir(outer)
	if err != nil {
		t.Fatal(err)
	}
	if len(des) != 1 || des[0].Name() != "root" {
		var names []string
		for _, d := range des {
			names = append(names, d.Name())
		}
		t.Fatalf("written outside the staging root: %v", names)
	}
}

// TestErofsImage: a staged layer becomes an erofs image that the kernel
// mounts with the layer's whiteouts, opaque marker, owners, modes, device
// nodes, hard links and xattrs; the same layer gives the same bytes.
func TestErofsImage(t *testing.T) {
	privtest.Require(t, "stages layers and mounts erofs")
	privtest.RequireTools(t, "mkfs.erofs")
	layer := tarOf(t,
		entry{name: "./", typ: tar.TypeDir, mode: 0o755},
		entry{name: "./etc/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "./etc/opaque/", typ: tar.TypeDir, mode: 0o750, uid: 7, gid: 8},
		entry{name: "./etc/opaque/.wh..wh..opq"},
		entry{name: "./etc/.wh.gone"},
		entry{name: "./bin/su", body: "suid", mode: 0o4755, uid: 0, gid: 0, xattrs: map[string]string{"user.note": "hello"}},
		entry{name: "./bin/su-link", typ: tar.TypeLink, link: "bin/su"},
		entry{name: "./tmp/", typ: tar.TypeDir, mode: 0o1777},
		entry{name: "./dev/null", typ: tar.TypeChar, mode: 0o666},
		entry{name: "./abs", typ: tar.TypeSymlink, link: "/etc/passwd"},
		entry{name: "./f", body: "owned", uid: 1000, gid: 1001, mode: 0o2640},
	)
	dir := t.TempDir()
	build := func() (*layerfs.Image, []byte) {
		st, err := layerfs.Stage(context.Background(), bytes.NewReader(layer), layerfs.Options{TempDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Remove()
		img, err := st.Erofs(context.Background(), "sha256:test", layerfs.CompressionNone)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = img.Remove() })
		b, err := os.ReadFile(img.Path)
		if err != nil {
			t.Fatal(err)
		}
		if img.Size != int64(len(b)) || img.Size%layerfs.SectorSize != 0 {
			t.Fatalf("image size %d (file %d), want a multiple of %d", img.Size, len(b), layerfs.SectorSize)
		}
		return img, b
	}
	img, first := build()
	_, second := build()
	if !bytes.Equal(first, second) {
		t.Fatal("the same layer gave two different images")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "erofs", "-o", "ro", img.Path, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
	var st unix.Stat_t
	check := func(rel string, mode uint32, uid, gid uint32, rdev uint64) {
		t.Helper()
		if err := unix.Lstat(filepath.Join(mnt, rel), &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode != mode || st.Uid != uid || st.Gid != gid || st.Rdev != rdev {
			t.Fatalf("%s: mode %o %d:%d rdev %d, want %o %d:%d rdev %d", rel, st.Mode, st.Uid, st.Gid, st.Rdev, mode, uid, gid, rdev)
		}
		if st.Mtim.Sec != 1_600_000_000 {
			t.Fatalf("%s: mtime %d, want 1600000000", rel, st.Mtim.Sec)
		}
	}
	check("bin/su", unix.S_IFREG|0o4755, 0, 0, 0)
	check("f", unix.S_IFREG|0o2640, 1000, 1001, 0)
	check("tmp", unix.S_IFDIR|0o1777, 0, 0, 0)
	check("etc/opaque", unix.S_IFDIR|0o750, 7, 8, 0)
	check("dev/null", unix.S_IFCHR|0o666, 0, 0, 0)
	if err := unix.Lstat(filepath.Join(mnt, "etc/gone"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Fatalf("whiteout etc/gone: %v mode %o rdev %d, want a 0/0 character device", err, st.Mode, st.Rdev)
	}
	buf := make([]byte, 8)
	if n, err := unix.Lgetxattr(filepath.Join(mnt, "etc/opaque"), "trusted.overlay.opaque", buf); err != nil || string(buf[:n]) != "y" {
		t.Fatalf("opaque marker: %q %v", buf[:n], err)
	}
	if n, err := unix.Lgetxattr(filepath.Join(mnt, "bin/su"), "user.note", buf); err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("xattr user.note: %q %v", buf[:n], err)
	}
	var a, b unix.Stat_t
	_ = unix.Lstat(filepath.Join(mnt, "bin/su"), &a)
	_ = unix.Lstat(filepath.Join(mnt, "bin/su-link"), &b)
	if a.Ino != b.Ino || a.Nlink != 2 {
		t.Fatalf("hard link: inodes %d and %d, nlink %d; want one inode with 2 links", a.Ino, b.Ino, a.Nlink)
	}
	if target, err := os.Readlink(filepath.Join(mnt, "abs")); err != nil || target != "/etc/passwd" {
		t.Fatalf("symlink target %q %v, want /etc/passwd verbatim", target, err)
	}
}

// TestSparseBombRefused: a sparse entry declares a huge file whose holes the
// stream does not carry; it is refused before anything is written.
func TestSparseBombRefused(t *testing.T) {
	privtest.Require(t, "stages layers with owners")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	// A GNU sparse header: 1 TiB of holes, no data.
	h := &tar.Header{Name: "sparse", Typeflag: tar.TypeGNUSparse, Size: 0, Mode: 0o644, Format: tar.FormatGNU}
	_ = tw.WriteHeader(h)
	_ = tw.Close()
	raw := buf.Bytes()
	// Patch the real-size field of the old GNU header (offset 483, 12 octal
	// bytes) to 1 TiB: the archive/tar writer does not write sparse maps.
	copy(raw[483:495], []byte("20000000000\x00"))
	sum := 0
	copy(raw[148:156], []byte("        "))
	for _, c := range raw[:512] {
		sum += int(c)
	}
	copy(raw[148:156], fmt.Appendf(nil, "%06o\x00 ", sum))
	_, err := layerfs.Stage(context.Background(), bytes.NewReader(raw), layerfs.Options{TempDir: t.TempDir(), MaxBytes: 1 << 20})
	if err == nil || !strings.Contains(err.Error(), "sparse files are not supported") {
		t.Fatalf("Stage: err = %v, want sparse files refused", err)
	}
	_, err = layerfs.Read(context.Background(), bytes.NewReader(raw), layerfs.Options{TempDir: t.TempDir(), MaxBytes: 1 << 20})
	if err == nil || !strings.Contains(err.Error(), "sparse files are not supported") {
		t.Fatalf("Read: err = %v, want sparse files refused", err)
	}
}
