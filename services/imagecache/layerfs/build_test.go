package layerfs_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/services/imagecache/layerfs"
)

// trickyLayer has every kind of entry a layer carries, sizes around the
// block size, a directory of several dirent blocks (of many entries), names
// sorting before "." and nanosecond mtimes.
func trickyLayer(t testing.TB, sizes []int, many int) []byte {
	es := []entry{
		{name: "./", typ: tar.TypeDir, mode: 0o755},
		{name: "./etc/", typ: tar.TypeDir, mode: 0o755},
		{name: "./etc/opaque/.wh..wh..opq"},
		{name: "./etc/opaque/", typ: tar.TypeDir, mode: 0o750, uid: 7, gid: 8, xattrs: map[string]string{"user.dir": "d"}},
		{name: "./etc/.wh.gone"},
		{name: "./bin/su", body: "suid", mode: 0o4755, xattrs: map[string]string{"user.note": "hello", "security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"}},
		{name: "./bin/su-link", typ: tar.TypeLink, link: "bin/su"},
		{name: "./bin/su-link2", typ: tar.TypeLink, link: "./bin/su-link"},
		{name: "./tmp/", typ: tar.TypeDir, mode: 0o1777},
		{name: "./dev/null", typ: tar.TypeChar, mode: 0o666},
		{name: "./dev/sda", typ: tar.TypeBlock, mode: 0o660},
		{name: "./dev/fifo", typ: tar.TypeFifo, mode: 0o644},
		{name: "./abs", typ: tar.TypeSymlink, link: "/etc/passwd"},
		{name: "./long-link", typ: tar.TypeSymlink, link: strings.Repeat("x/", 1900) + "y"},
		{name: "./f", body: "owned", uid: 1000, gid: 1001, mode: 0o2640},
		{name: "./deep/a/b/c/file", body: "deep"},
		{name: "./-dash", body: "sorts before the dot"},
		{name: "./ space", body: "sorts first"},
		{name: "./empty", body: ""},
	}
	for _, size := range sizes {
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(i*7 + size)
		}
		es = append(es, entry{name: fmt.Sprintf("./sizes/%d", size), body: string(b)})
	}
	for i := range many {
		es = append(es, entry{name: fmt.Sprintf("./many/%s-%03d", strings.Repeat("n", i%40), i), body: fmt.Sprint(i)})
	}
	for i := range es {
		es[i].nsec = int64(i) * 1001
		switch es[i].typ {
		case tar.TypeBlock:
			es[i].major, es[i].minor = 8, 300
		case tar.TypeChar:
			es[i].major, es[i].minor = 1, 3
		}
	}
	return tarOf(t, es...)
}

// buildImage writes layer with Read and Erofs.
func buildImage(t testing.TB, layer []byte) *layerfs.Image {
	t.Helper()
	l, err := layerfs.Read(context.Background(), bytes.NewReader(layer), layerfs.Options{TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Remove()
	img, err := l.Erofs("sha256:test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = img.Remove() })
	return img
}

// TestBuildMatchesMkfs: the image written straight from the tar passes
// fsck.erofs, is the same bytes every time, and the kernel mounts it as
// the same tree (types, modes, owners, devices, mtimes with nanoseconds,
// link targets, hard links, xattrs incl. the opaque marker, contents) as
// the mkfs.erofs image of the staged layer.
func TestBuildMatchesMkfs(t *testing.T) {
	privtest.Require(t, "stages layers and mounts erofs")
	privtest.RequireTools(t, "mkfs.erofs", "fsck.erofs")
	layer := trickyLayer(t, []int{1, 4095, 4096, 4097, 8192 + 100, 1<<20 + 3, 3 << 20}, 400)
	img := buildImage(t, layer)
	if img.Size%layerfs.SectorSize != 0 {
		t.Fatalf("image size %d, want a multiple of %d", img.Size, layerfs.SectorSize)
	}
	if out, err := exec.Command("fsck.erofs", "--extract", img.Path).CombinedOutput(); err != nil {
		t.Fatalf("fsck.erofs: %v: %s", err, out)
	}
	first, _ := os.ReadFile(img.Path)
	again, _ := os.ReadFile(buildImage(t, layer).Path)
	if !bytes.Equal(first, again) {
		t.Fatal("the same layer gave two different images")
	}

	st, err := layerfs.Stage(context.Background(), bytes.NewReader(layer), layerfs.Options{TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Remove()
	ref, err := st.Erofs(context.Background(), "sha256:test", layerfs.CompressionNone)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Remove()

	got, want := treeOf(t, mountErofs(t, img.Path)), treeOf(t, mountErofs(t, ref.Path))
	if len(got) < 400 {
		t.Fatalf("only %d entries in the mounted image", len(got))
	}
	for _, p := range slices.Sorted(func(yield func(string) bool) {
		for k := range want {
			if !yield(k) {
				return
			}
		}
		for k := range got {
			if _, ok := want[k]; !ok && !yield(k) {
				return
			}
		}
	}) {
		if got[p] != want[p] {
			t.Errorf("%s:\n got %s\nwant %s", p, got[p], want[p])
		}
	}
}

func mountErofs(t testing.TB, image string) string {
	t.Helper()
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "erofs", "-o", "ro", image, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount %s: %v: %s", image, err, out)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
	return mnt
}

// treeOf describes every entry under root: type and mode, owner, device,
// mtime, size, nlink, link target, xattrs, content digest, and which
// earlier path it is a hard link of.
func treeOf(t testing.TB, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	inodes := map[uint64]string{}
	err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		d := fmt.Sprintf("mode %o owner %d:%d rdev %d:%d mtime %d.%09d nlink %d", st.Mode, st.Uid, st.Gid,
			unix.Major(st.Rdev), unix.Minor(st.Rdev), st.Mtim.Sec, st.Mtim.Nsec, st.Nlink)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			d += fmt.Sprintf(" size %d sha %x", len(b), sha256.Sum256(b))
			if first, ok := inodes[st.Ino]; ok {
				d += " link-of " + first
			} else {
				inodes[st.Ino] = rel
			}
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			d += " -> " + target
		}
		names := make([]byte, 64<<10)
		n, err := unix.Llistxattr(p, names)
		if err != nil && !errors.Is(err, unix.ENOTSUP) {
			return err
		}
		xs := strings.Split(strings.TrimRight(string(names[:n]), "\x00"), "\x00")
		slices.Sort(xs)
		for _, x := range xs {
			if x == "" {
				continue
			}
			v := make([]byte, 64<<10)
			m, err := unix.Lgetxattr(p, x, v)
			if err != nil {
				return fmt.Errorf("%s xattr %s: %w", rel, x, err)
			}
			d += fmt.Sprintf(" %s=%q", x, v[:m])
		}
		out[rel] = d
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestReadRefusals: what erofs cannot hold, or a layer must not carry, is
// refused with the entry and the reason.
func TestReadRefusals(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []entry
		want    string
	}{
		{"unknown xattr namespace", []entry{{name: "f", xattrs: map[string]string{"system.other": "x"}}}, "no namespace erofs stores"},
		{"huge xattrs", []entry{{name: "f", xattrs: map[string]string{"user.big": strings.Repeat("x", 5000)}}}, "more than the"},
		{"long name", []entry{{name: strings.Repeat("n", 256), body: "x"}}, "a name of more than 255 bytes"},
		{"file cap", []entry{{name: "f", body: strings.Repeat("x", 2000)}}, "past the cap"},
		{"hard link to a directory", []entry{{name: "d", typ: tar.TypeDir}, {name: "h", typ: tar.TypeLink, link: "d"}}, "not an earlier file"},
		{"whiteout under a file", []entry{{name: "f", body: "x"}, {name: "f/.wh.x"}}, "is not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := layerfs.Read(context.Background(), bytes.NewReader(tarOf(t, tc.entries...)), layerfs.Options{TempDir: t.TempDir(), MaxBytes: 1000})
			if err == nil || !errors.Is(err, layerfs.ErrInvalidLayer) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrInvalidLayer mentioning %q", err, tc.want)
			}
		})
	}
}

// TestRandomLayers: random layers made of the entries hostile and tricky
// layers are made of (names with "..", whiteouts, opaque markers, links to
// each other, devices, xattrs, sizes around the block size; a fixed seed,
// so a failure repeats). Read and Stage accept or refuse the same layers;
// an accepted layer passes fsck.erofs, and for the first ones the kernel
// mounts the same tree from both writers' images.
func TestRandomLayers(t *testing.T) {
	privtest.Require(t, "stages layers and mounts erofs")
	privtest.RequireTools(t, "mkfs.erofs", "fsck.erofs")
	rng := rand.New(rand.NewPCG(14, 14))
	parts := []string{"a", "b", "c d", "-x", ".wh.a", ".wh.b", ".wh..wh..opq", "..", "."}
	pick := func() string {
		var cs []string
		for range 1 + rng.IntN(3) {
			cs = append(cs, parts[rng.IntN(len(parts))])
		}
		return strings.Join(cs, "/")
	}
	types := []byte{tar.TypeReg, tar.TypeReg, tar.TypeDir, tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeChar, tar.TypeFifo}
	accepted, compared := 0, 0
	for i := range 200 {
		var es []entry
		for range 1 + rng.IntN(10) {
			e := entry{name: pick(), typ: types[rng.IntN(len(types))], mode: int64(rng.IntN(0o7777) + 1), uid: rng.IntN(3), gid: rng.IntN(3)}
			switch e.typ {
			case tar.TypeReg:
				e.body = strings.Repeat("z", []int{0, 1, 4095, 4096, 4097, 9000}[rng.IntN(6)])
			case tar.TypeSymlink, tar.TypeLink:
				e.link = pick()
			}
			if rng.IntN(4) == 0 {
				// trusted.*: user.* xattrs are for files and directories only.
				e.xattrs = map[string]string{"trusted.k": strings.Repeat("v", rng.IntN(100))}
			}
			es = append(es, e)
		}
		layer := tarOf(t, es...)
		l, rerr := layerfs.Read(context.Background(), bytes.NewReader(layer), layerfs.Options{TempDir: t.TempDir()})
		st, serr := layerfs.Stage(context.Background(), bytes.NewReader(layer), layerfs.Options{TempDir: t.TempDir()})
		if (rerr == nil) != (serr == nil) {
			t.Fatalf("layer %d %+v: Read: %v, Stage: %v", i, es, rerr, serr)
		}
		if rerr != nil {
			continue
		}
		accepted++
		img, err := l.Erofs("sha256:random")
		if err != nil {
			t.Fatalf("layer %d: an accepted layer gave no image: %v", i, err)
		}
		if out, err := exec.Command("fsck.erofs", "--extract", img.Path).CombinedOutput(); err != nil {
			t.Fatalf("layer %d %+v: fsck.erofs: %v: %s", i, es, err, out)
		}
		if compared < 15 {
			compared++
			ref, err := st.Erofs(context.Background(), "sha256:random", layerfs.CompressionNone)
			if err != nil {
				t.Fatal(err)
			}
			got, want := treeOf(t, mountErofs(t, img.Path)), treeOf(t, mountErofs(t, ref.Path))
			for p, w := range want {
				if got[p] != w {
					t.Errorf("layer %d %+v: %s:\n got %s\nwant %s", i, es, p, got[p], w)
				}
			}
			if len(got) != len(want) {
				t.Errorf("layer %d: %d entries, want %d", i, len(got), len(want))
			}
		}
		_ = st.Remove()
		_ = img.Remove()
	}
	if accepted < 20 {
		t.Fatalf("only %d of 200 random layers accepted: the test checks too few images", accepted)
	}
	t.Logf("%d of 200 random layers accepted, fsck-checked; %d compared with mkfs.erofs", accepted, compared)
}

// FuzzRead feeds arbitrary bytes to Read as a layer: it must never panic,
// and whatever it accepts must become an image fsck.erofs accepts.
func FuzzRead(f *testing.F) {
	f.Add(tarOf(f, entry{name: "d/", typ: tar.TypeDir, xattrs: map[string]string{"user.a": "1", "trusted.b": "2"}},
		entry{name: "d/f", body: strings.Repeat("x", 4097)}, entry{name: "dev", typ: tar.TypeChar},
		entry{name: "s", typ: tar.TypeSymlink, link: "d/f"}, entry{name: "p", typ: tar.TypeFifo}))
	f.Add(tarOf(f, entry{name: "a/b", body: "x"}, entry{name: "a/.wh..wh..opq"}, entry{name: "a/.wh.c"}))
	f.Add(tarOf(f, entry{name: "l", typ: '2', link: "/"}, entry{name: "l/x", body: "x"}))
	f.Add(tarOf(f, entry{name: "h", typ: '1', link: "f"}, entry{name: "f", body: "x"}))
	f.Add(tarOf(f, entry{name: "../x", body: "x"}))
	_, fsckErr := exec.LookPath("fsck.erofs")
	f.Fuzz(func(t *testing.T, data []byte) {
		tmp := t.TempDir()
		l, err := layerfs.Read(context.Background(), bytes.NewReader(data), layerfs.Options{TempDir: tmp, MaxEntries: 2048, MaxBytes: 16 << 20})
		if err != nil {
			if des, _ := os.ReadDir(tmp); len(des) != 0 {
				t.Fatalf("a refused layer left %d files behind", len(des))
			}
			return
		}
		defer l.Remove()
		img, err := l.Erofs("sha256:fuzz")
		if err != nil {
			t.Fatalf("an accepted layer gave no image: %v", err)
		}
		defer img.Remove()
		if fsckErr == nil {
			if out, err := exec.Command("fsck.erofs", "--extract", img.Path).CombinedOutput(); err != nil {
				t.Fatalf("fsck.erofs: %v: %s", err, out)
			}
		}
	})
}
