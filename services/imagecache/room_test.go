package imagecache_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/imagecache"
	"github.com/podvisor/podvisor/shared/ociregistry"
	"github.com/podvisor/podvisor/shared/testenv"
)

// TestRoomIsCheckedWithTheDiskSize: a layer of 12 MiB of zeros is a few
// KiB compressed, so placement (which knows only compressed sizes) finds
// room on a datastore with 4 MiB to spare; its disk holds it uncompressed,
// and the upload is refused before it starts: DatastoreFull naming the
// disk's size, and no ready chain left behind.
func TestRoomIsCheckedWithTheDiskSize(t *testing.T) {
	e := startEnv(t, func(c *imagecache.Config) { c.ReserveBytes = 1 << 20 })
	ctx := context.Background()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	const size = 12 << 20
	if err := tw.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Mode: 0o644, Size: size}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	ref := e.reg.Ref("room/zeros:1")
	if _, err := ociregistry.Push(ctx, ref, layer); err != nil {
		t.Fatal(err)
	}
	for _, ds := range []string{sharedDS, localDS} {
		e.vc.SetFreeSpace(t, ds, 1<<20+4<<20)
	}
	if err := e.svc.RefreshInventory(ctx); err != nil {
		t.Fatal(err)
	}
	e.accept("zeros", ref)
	var failed *events.PodImagesFailed
	e.WaitFor("pod.images.failed for zeros", 30*time.Second, func(evs []testenv.Seen) bool {
		for _, f := range testenv.In[events.PodImagesFailed](t, evs, nil) {
			if f.Name == "zeros" {
				failed = f
				return true
			}
		}
		return readyFor(t, evs, "zeros") != nil
	})
	if failed == nil || failed.Reason != "DatastoreFull" || !strings.Contains(failed.Message, "byte disk") {
		t.Fatalf("pod zeros: %+v, want DatastoreFull naming the disk's size", failed)
	}
	diffID, err := layer.DiffID() // a base layer's chainID
	if err != nil {
		t.Fatal(err)
	}
	d := diffID.String()
	for _, ds := range []string{sharedDS, localDS} {
		if rec, ok, _ := e.reader().chain(d, ds); ok && rec.State == events.ChainStateReady {
			t.Errorf("chain on %s is ready: %+v", ds, rec)
		}
	}
}
