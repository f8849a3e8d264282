package imagecache_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/compression"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/imagecache/internal/tartest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// tent is a tar entry of a test layer.
type tent struct {
	name, link, body string
	typ              byte
	mode             int64
	uid, gid         int
	major, minor     int64
	mtime            int64
	xattrs           map[string]string
}

func dir(name string, mode int64) tent { return tent{name: name, typ: tar.TypeDir, mode: mode} }
func file(name, body string, mode int64) tent {
	return tent{name: name, body: body, typ: tar.TypeReg, mode: mode}
}

// layerOf builds a layer from entries (zstd-compressed when zstd is set).
func layerOf(t testing.TB, zstd bool, es ...tent) v1.Layer {
	t.Helper()
	tes := make([]tartest.Entry, len(es))
	for i, e := range es {
		h := tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			Devmajor: e.major, Devminor: e.minor, Format: tar.FormatPAX,
			ModTime: time.Unix(1_500_000_000+int64(i)*3600+e.mtime, 123_000_000)}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		tes[i] = tartest.Entry{Header: h, Body: e.body, Xattrs: e.xattrs}
	}
	b := tartest.Tar(t, tes...)
	var opts []tarball.LayerOption
	if zstd {
		opts = append(opts, tarball.WithCompression(compression.ZStd))
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// trickyImage has every entry kind across three layers: owners, setuid,
// setgid and sticky modes, xattrs, device nodes, a fifo, hard links,
// relative and absolute symlinks, whiteouts of a file and of a directory,
// an opaque directory, a file replaced by a directory and a symlink
// replaced by a file, and a file whited out and then made again.
func trickyImage(t testing.TB) v1.Image {
	big := strings.Repeat("podvisor image disk ", 50_000) // 1 MB, spans many blocks
	base := layerOf(t, false,
		dir("etc/", 0o755), dir("usr/", 0o755), dir("usr/bin/", 0o755), dir("tmp/", 0o1777), dir("var/", 0o755),
		dir("opaque/", 0o755), dir("srv/", 0o755), dir("srv/data/", 0o700), dir("dev/", 0o755),
		file("etc/passwd", "root:x:0:0::/root:/bin/sh\n", 0o644),
		file("etc/motd", "hello\n", 0o644),
		tent{name: "usr/bin/busybox", body: big, typ: tar.TypeReg, mode: 0o755},
		tent{name: "usr/bin/ls", link: "usr/bin/busybox", typ: tar.TypeLink},
		tent{name: "usr/bin/sh", link: "busybox", typ: tar.TypeSymlink, mode: 0o777},
		tent{name: "usr/bin/su", body: "su", typ: tar.TypeReg, mode: 0o4755},
		tent{name: "usr/bin/wall", body: "wall", typ: tar.TypeReg, mode: 0o2755, gid: 5},
		tent{name: "etc/alt", link: "/etc/passwd", typ: tar.TypeSymlink, mode: 0o777},
		tent{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
		tent{name: "dev/sda", typ: tar.TypeBlock, mode: 0o660, major: 8, minor: 0, gid: 6},
		tent{name: "dev/initctl", typ: tar.TypeFifo, mode: 0o600},
		file("var/old.txt", "old", 0o644),
		file("var/gone.txt", "gone", 0o644),
		file("opaque/a", "a", 0o644), file("opaque/b", "b", 0o644),
		file("srv/data/db", "db", 0o600),
		file("srv/notdir", "will be a directory", 0o644),
		tent{name: "home/", typ: tar.TypeDir, mode: 0o755},
		tent{name: "home/user/", typ: tar.TypeDir, mode: 0o750, uid: 1000, gid: 1000},
		tent{name: "home/user/.profile", body: "export PS1", typ: tar.TypeReg, mode: 0o640, uid: 1000, gid: 1000,
			xattrs: map[string]string{"user.origin": "base", "user.empty": ""}},
	)
	mid := layerOf(t, false,
		dir("etc/", 0o755), dir("var/", 0o755), dir("opaque/", 0o711), dir("srv/", 0o755),
		tent{name: "etc/passwd", body: "root:x:0:0::/root:/bin/ash\nuser:x:1000:1000::/home/user:/bin/sh\n", typ: tar.TypeReg, mode: 0o600},
		tent{name: "etc/alt", body: "now a file", typ: tar.TypeReg, mode: 0o644},
		tent{name: "var/.wh.old.txt"},
		tent{name: "var/.wh.gone.txt"},
		tent{name: "opaque/.wh..wh..opq"},
		file("opaque/c", "c", 0o644),
		tent{name: "srv/.wh.data"},
		tent{name: "srv/notdir/", typ: tar.TypeDir, mode: 0o755},
		file("srv/notdir/inside", "inside", 0o644),
		tent{name: "etc/shadow", body: "root:*:", typ: tar.TypeReg, mode: 0o640, gid: 42, xattrs: map[string]string{"user.secret": "yes"}},
		tent{name: "etc/shadow-", link: "etc/shadow", typ: tar.TypeLink},
	)
	top := layerOf(t, true,
		dir("var/", 0o755), dir("tmp/", 0o1777), dir("usr/", 0o755), dir("usr/bin/", 0o755),
		file("var/old.txt", "new again", 0o644),
		tent{name: "tmp/sticky-file", body: "t", typ: tar.TypeReg, mode: 0o1644},
		tent{name: "usr/bin/top", body: "top", typ: tar.TypeReg, mode: 0o755, uid: 0, gid: 0},
	)
	img, err := mutate.AppendLayers(empty.Image, base, mid, top)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// refEntry is one entry of the flattened reference export.
type refEntry struct {
	hdr    *tar.Header
	digest string
}

// flatten reads go-containerregistry's flattened export of img.
func flatten(t testing.TB, img v1.Image) map[string]refEntry {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	out := map[string]refEntry{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := strings.TrimSuffix(path.Clean(h.Name), "/")
		sum := sha256.New()
		if _, err := io.Copy(sum, tr); err != nil {
			t.Fatal(err)
		}
		out[p] = refEntry{hdr: h, digest: hex.EncodeToString(sum.Sum(nil))}
	}
	return out
}

// TestChainMountsAsTheFlattenedImage pulls an image with every tricky
// entry through the service, mounts each chain disk's flat extent on the
// datastore read-only as erofs, stacks them as overlay lowers (top first)
// and compares the tree entry by entry with go-containerregistry's
// flattened export of the same image.
func TestChainMountsAsTheFlattenedImage(t *testing.T) {
	privtest.Require(t, "mounts the image disks (erofs, overlay)")
	privtest.RequireTools(t, "mkfs.erofs", "mount")
	e := startEnv(t, nil)
	img := trickyImage(t)
	ref := e.reg.Addr() + "/tricky/app:1"
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	e.accept("tricky", ref)
	evs := e.WaitFor("tricky ready", 30*time.Second, func(evs []testenv.Seen) bool {
		return readyFor(t, evs, "tricky") != nil || len(testenv.In[events.PodImagesFailed](t, evs, nil)) > 0
	})
	ready := readyFor(t, evs, "tricky")
	if ready == nil {
		t.Fatalf("pull failed: %+v", testenv.In[events.PodImagesFailed](t, evs, nil)[0])
	}
	chain := ready.Containers[0].Chain
	if len(chain) != 3 {
		t.Fatalf("chain %v, want 3 disks", chain)
	}

	// Mount every link's flat extent as it sits on the datastore.
	var lowers []string
	for _, disk := range slices.Backward(chain) {
		flat := e.localPath(t, strings.TrimSuffix(disk, "disk.vmdk")+"disk-flat.vmdk")
		mnt := t.TempDir()
		mount(t, "-t", "erofs", "-o", "ro", flat, mnt)
		lowers = append(lowers, mnt)
	}
	merged := t.TempDir()
	mount(t, "-t", "overlay", "overlay", "-o", "ro,lowerdir="+strings.Join(lowers, ":"), merged)

	want := flatten(t, img)
	got := map[string]bool{}
	err = filepath.WalkDir(merged, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(merged, p)
		if rel != "." {
			got[rel] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s is in the mounted chain but not in the flattened image", p)
		}
	}
	for p, w := range want {
		if !got[p] {
			t.Errorf("%s is in the flattened image but not in the mounted chain", p)
			continue
		}
		compareEntry(t, merged, p, w, want)
	}
	t.Logf("compared %d entries of the flattened image with the mounted chain", len(want))
}

// compareEntry checks one path of the mounted chain against the reference.
func compareEntry(t *testing.T, root, p string, w refEntry, all map[string]refEntry) {
	t.Helper()
	full := filepath.Join(root, p)
	var st unix.Stat_t
	if err := unix.Lstat(full, &st); err != nil {
		t.Errorf("%s: %v", p, err)
		return
	}
	h := w.hdr
	if h.Typeflag == tar.TypeLink {
		// A hard link: the same inode as its target, and the target's data.
		var ts unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, h.Linkname), &ts); err != nil || ts.Ino != st.Ino || ts.Nlink < 2 {
			t.Errorf("%s: hard link to %s: inode %d vs %d (nlink %d), %v", p, h.Linkname, st.Ino, ts.Ino, ts.Nlink, err)
		}
		h = all[path.Clean(h.Linkname)].hdr
		w = all[path.Clean(h.Name)]
	}
	wantType := map[byte]uint32{tar.TypeReg: unix.S_IFREG, tar.TypeDir: unix.S_IFDIR, tar.TypeSymlink: unix.S_IFLNK,
		tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[h.Typeflag]
	if st.Mode&unix.S_IFMT != wantType {
		t.Errorf("%s: type %o, want %o", p, st.Mode&unix.S_IFMT, wantType)
	}
	if h.Typeflag != tar.TypeSymlink && int64(st.Mode&0o7777) != h.Mode&0o7777 {
		t.Errorf("%s: mode %o, want %o", p, st.Mode&0o7777, h.Mode&0o7777)
	}
	if int(st.Uid) != h.Uid || int(st.Gid) != h.Gid {
		t.Errorf("%s: owner %d:%d, want %d:%d", p, st.Uid, st.Gid, h.Uid, h.Gid)
	}
	if got := time.Unix(st.Mtim.Sec, st.Mtim.Nsec); !got.Equal(h.ModTime) {
		t.Errorf("%s: mtime %s, want %s", p, got, h.ModTime)
	}
	switch h.Typeflag {
	case tar.TypeSymlink:
		if target, err := os.Readlink(full); err != nil || target != h.Linkname {
			t.Errorf("%s: link target %q (%v), want %q", p, target, err, h.Linkname)
		}
	case tar.TypeReg:
		b, err := os.ReadFile(full)
		sum := sha256.Sum256(b)
		if err != nil || hex.EncodeToString(sum[:]) != w.digest {
			t.Errorf("%s: contents differ (%d bytes, %v)", p, len(b), err)
		}
	case tar.TypeChar, tar.TypeBlock:
		if int64(unix.Major(st.Rdev)) != h.Devmajor || int64(unix.Minor(st.Rdev)) != h.Devminor {
			t.Errorf("%s: device %d:%d, want %d:%d", p, unix.Major(st.Rdev), unix.Minor(st.Rdev), h.Devmajor, h.Devminor)
		}
	}
	wantX := map[string]string{}
	for k, v := range h.PAXRecords {
		if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			wantX[x] = v
		}
	}
	gotX := map[string]string{}
	names := make([]byte, 4096)
	n, err := unix.Llistxattr(full, names)
	if err != nil && !errors.Is(err, unix.ENOTSUP) {
		t.Errorf("%s: list xattrs: %v", p, err)
	}
	for x := range strings.SplitSeq(strings.TrimSuffix(string(names[:max(n, 0)]), "\x00"), "\x00") {
		if x == "" || !strings.HasPrefix(x, "user.") {
			continue // overlayfs's own and the kernel's are not the layer's
		}
		v := make([]byte, 4096)
		m, err := unix.Lgetxattr(full, x, v)
		if err != nil {
			t.Errorf("%s: xattr %s: %v", p, x, err)
			continue
		}
		gotX[x] = string(v[:m])
	}
	if fmt.Sprint(gotX) != fmt.Sprint(wantX) {
		t.Errorf("%s: xattrs %v, want %v", p, gotX, wantX)
	}
}

// mount runs mount(8) and unmounts at cleanup.
func mount(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
		t.Fatalf("mount %v: %v: %s", args, err, out)
	}
	target := args[len(args)-1]
	t.Cleanup(func() {
		if err := unix.Unmount(target, 0); err != nil {
			t.Errorf("unmount %s: %v", target, err)
		}
	})
}

// localPath is where the simulator keeps a datastore path's file.
func (e *env) localPath(t testing.TB, dsPath string) string {
	t.Helper()
	var p object.DatastorePath
	if !p.FromString(dsPath) {
		t.Fatalf("not a datastore path: %s", dsPath)
	}
	ctx := context.Background()
	f := find.NewFinder(e.vc.Client.Client, false)
	f.SetDatacenter(e.vc.DC)
	ds, err := f.Datastore(ctx, p.Datastore)
	if err != nil {
		t.Fatal(err)
	}
	var mds mo.Datastore
	if err := ds.Properties(ctx, ds.Reference(), []string{"info"}, &mds); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(mds.Info.GetDatastoreInfo().Url, p.Path)
}

// TestBombFailsThePodQuickly: a layer that inflates past the compression
// ratio cap fails the pod within seconds, naming the cap, and leaves no
// chain marked ready and no disk on the datastore.
func TestBombFailsThePodQuickly(t *testing.T) {
	privtest.Require(t, "writes image disks")
	e := startEnv(t, nil)
	zeros := strings.Repeat("\x00", 1<<20)
	var es []tent
	for i := range 48 {
		es = append(es, file(fmt.Sprintf("z%02d", i), zeros, 0o644))
	}
	bomb := layerOf(t, false, es...)
	img, err := mutate.AppendLayers(empty.Image, bomb)
	if err != nil {
		t.Fatal(err)
	}
	ref := e.reg.Addr() + "/hostile/bomb:1"
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	e.accept("bomb", ref)
	evs := e.WaitFor("bomb failed", 10*time.Second, func(evs []testenv.Seen) bool {
		return len(testenv.In[events.PodImagesFailed](t, evs, nil)) == 1
	})
	f := testenv.In[events.PodImagesFailed](t, evs, nil)[0]
	if f.Reason != "ImageLimitExceeded" || !strings.Contains(f.Message, "compression ratio cap") {
		t.Fatalf("bomb: %+v, want ImageLimitExceeded naming the compression ratio cap", f)
	}
	t.Logf("bomb failed after %s: %s", time.Since(start), f.Message)
	digest, _ := bomb.DiffID()
	rec, ok, _ := e.reader().chain(digest.String(), sharedDS)
	if !ok || rec.State != events.ChainStateFailed {
		t.Fatalf("bomb chain record = %+v (%v), want failed", rec, ok)
	}
	if _, err := os.Stat(e.localPath(t, rec.Disk)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("bomb chain disk on the datastore: %v", err)
	}
}
