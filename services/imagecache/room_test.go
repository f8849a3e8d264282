package imagecache_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
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
	ref, layer := pushZeros(t, e)
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

// pushZeros pushes an image of one layer holding 12 MiB of zeros: a few
// KiB compressed (what placement counts), 12 MiB as a disk.
func pushZeros(t *testing.T, e *env) (string, v1.Layer) {
	t.Helper()
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
	if _, err := ociregistry.Push(context.Background(), ref, layer); err != nil {
		t.Fatal(err)
	}
	return ref, layer
}

// TestCopyIsCheckedAndRecordedWithTheDiskSize: a chain copied to the
// datastore of the pod's host is the source's disk, 12 MiB here for a
// layer of a few KiB compressed. The copy is refused before it starts when
// the destination has not the room for the disk (DatastoreFull naming its
// size, no ready chain left there), and a copy made records the disk's
// size, as the source's record does. Before, copies skipped the room
// check, and the copy's record kept the layer's compressed size, so the
// collector under-counted what the datastore held.
func TestCopyIsCheckedAndRecordedWithTheDiskSize(t *testing.T) {
	e := startEnv(t, func(c *imagecache.Config) {
		c.Datastores = []string{localDS, sharedDS}
		c.ReserveBytes = 1 << 20
	})
	ctx := context.Background()
	ref, layer := pushZeros(t, e)
	diffID, err := layer.DiffID() // a base layer's chainID
	if err != nil {
		t.Fatal(err)
	}
	chainID := diffID.String()
	schedule := func(name, host string) {
		t.Helper()
		e.Publish(&events.PodScheduled{PodRef: events.PodRef{Namespace: "default", Name: name, UID: testenv.UID(name)}, Host: host, Cluster: "DC0_C0"})
	}
	const far = "DC0_C0_H1" // mounts the shared datastore only

	// Prefetched on the local datastore (listed first), which far does not mount.
	e.handled(e.accept("cramped", ref))
	src, ok, err := e.reader().chain(chainID, localDS)
	if err != nil || !ok || src.State != events.ChainStateReady || src.Size < 12<<20 {
		t.Fatalf("prefetched chain on %s: %+v (found %v, %v), want ready with the disk's size", localDS, src, ok, err)
	}

	e.vc.SetFreeSpace(t, sharedDS, 1<<20+4<<20)
	if err := e.svc.RefreshInventory(ctx); err != nil {
		t.Fatal(err)
	}
	schedule("cramped", far)
	failed := testenv.Wait(e.Env, func(f *events.PodImagesFailed) bool { return f.Name == "cramped" })
	if failed.Reason != "DatastoreFull" || !strings.Contains(failed.Message, fmt.Sprintf("%d-byte disk", src.Size)) {
		t.Fatalf("pod cramped: %+v, want DatastoreFull naming the %d-byte disk", failed, src.Size)
	}
	if rec, ok, _ := e.reader().chain(chainID, sharedDS); ok && rec.State == events.ChainStateReady {
		t.Fatalf("chain on %s is ready: %+v", sharedDS, rec)
	}
	if n := e.svc.Stats().ChainsCopied; n != 0 {
		t.Fatalf("%d chains copied into a datastore without room", n)
	}

	e.vc.SetFreeSpace(t, sharedDS, 1<<40)
	if err := e.svc.RefreshInventory(ctx); err != nil {
		t.Fatal(err)
	}
	e.handled(e.accept("roomy", ref))
	schedule("roomy", far)
	ready := testenv.Wait(e.Env, func(r *events.PodImagesReady) bool { return r.Name == "roomy" })
	if ds := ready.Containers[0].Datastore; ds != sharedDS {
		t.Fatalf("pod roomy got its image on %s, want a copy on %s", ds, sharedDS)
	}
	copied, ok, err := e.reader().chain(chainID, sharedDS)
	if err != nil || !ok || copied.State != events.ChainStateReady || copied.Size != src.Size {
		t.Fatalf("copied chain: %+v (found %v, %v), want ready with the source disk's %d bytes", copied, ok, err, src.Size)
	}
	if st := e.svc.Stats(); st.ChainsCopied != 1 || st.BytesCopied != src.Size {
		t.Fatalf("stats %+v, want 1 chain and %d bytes copied", st, src.Size)
	}
}
