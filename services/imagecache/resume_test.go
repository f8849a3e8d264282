package imagecache_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/imagecache/chaindb"
	"github.com/podvisor/podvisor/services/imagecache/imagedisk"
	"github.com/podvisor/podvisor/services/imagecache/oci"
	"github.com/podvisor/podvisor/shared/imagemeta"
	"github.com/podvisor/podvisor/shared/testenv"
)

// TestPausedPullerLeavesItsSuccessorsChain: a puller (another replica)
// began the base chain and was paused past its lease; the service took
// the chain over, pulled it and a pod references it. When the paused
// puller wakes, its renewal does not take the lease back, and its pull
// ending in an error neither removes the folder nor marks the chain
// failed: the chain stays ready with its disk, and the next pod uses it
// without a pull. Before, the renewal took the vanished lease again, and
// the failure deleted the successor's folder and marked the ready,
// referenced chain failed.
func TestPausedPullerLeavesItsSuccessorsChain(t *testing.T) {
	e := startEnv(t, nil)
	ctx := context.Background()
	worker := e.reg.Ref("podvisor/worker:1.0")
	layers := layerSizesFromRegistry(t, worker)
	base := events.ChainRecord{ChainID: layers[0].ChainID, Datastore: sharedDS, Disk: imagedisk.DiskPath(sharedDS, layers[0].ChainID),
		Layer: layers[0].Digest, DiffID: layers[0].DiffID, Depth: 1, Size: layers[0].Size}
	if got, err := chaindb.New(e.redis, nil).Begin(ctx, base, "paused", time.Minute); err != nil || got != chaindb.Acquired {
		t.Fatalf("the paused puller's Begin = %v, %v", got, err)
	}
	// Its lease expires while it is paused.
	if err := e.redis.Del(ctx, imagemeta.ChainLeaseKey(base.ChainID, sharedDS)).Err(); err != nil {
		t.Fatal(err)
	}
	e.accept("first", worker)
	evs := e.WaitFor("first ready", 20*time.Second, func(evs []testenv.Seen) bool { return readyFor(t, evs, "first") != nil })
	if c := readyFor(t, evs, "first").Containers[0]; c.Chain[0] != base.Disk {
		t.Fatalf("chain %v does not start at %s", c.Chain, base.Disk)
	}
	store := imagedisk.New(e.vc.Client.Client, e.vc.DC)
	disk, err := store.ReadDisk(ctx, sharedDS, base.ChainID)
	if err != nil {
		t.Fatal(err)
	}

	// The paused puller wakes; its registry connection is long gone.
	if renewed, err := e.svc.RenewLease(ctx, base, "paused"); err != nil || renewed {
		t.Fatalf("the paused puller's renewal = %v, %v; want the lease not taken back", renewed, err)
	}
	work := fmt.Errorf("fetch layer %s: %w: connection reset", base.Layer, oci.ErrRegistryUnavailable)
	if err := e.svc.FinishPull(ctx, base, "paused", work); err == nil {
		t.Fatal("the paused puller's failed pull finished without its error")
	}

	rec, ok, err := e.reader().chain(base.ChainID, sharedDS)
	if err != nil || !ok || rec.State != events.ChainStateReady || rec.Refs != 1 {
		t.Fatalf("base chain after the paused puller woke: %+v (found %v, %v), want ready with the pod's reference", rec, ok, err)
	}
	if _, err := store.ReadDisk(ctx, sharedDS, base.ChainID); err != nil {
		t.Fatalf("the base chain's descriptor is gone: %v", err)
	}
	rc, n, err := store.ReadFlat(ctx, sharedDS, base.ChainID)
	if err != nil {
		t.Fatalf("the base chain's flat extent is gone: %v", err)
	}
	rc.Close()
	if n != disk.Size {
		t.Fatalf("the base chain's flat extent is %d bytes, want the disk's %d", n, disk.Size)
	}

	pulled := e.svc.Stats().BytesPulled
	e.accept("second", worker)
	evs = e.WaitFor("second ready", 20*time.Second, func(evs []testenv.Seen) bool { return readyFor(t, evs, "second") != nil })
	if got := e.svc.Stats().BytesPulled - pulled; got != 0 {
		t.Fatalf("the second pod pulled %d bytes, want none", got)
	}
	if c := readyFor(t, evs, "second").Containers[0]; c.Chain[0] != base.Disk {
		t.Fatalf("second pod's chain %v does not start at %s", c.Chain, base.Disk)
	}
}
