package imagecache_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/imagecache"
	"github.com/podvisor/podvisor/services/imagecache/chaindb"
	"github.com/podvisor/podvisor/services/imagecache/imagedisk"
	"github.com/podvisor/podvisor/shared/imagemeta"
	"github.com/podvisor/podvisor/shared/testenv"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// startWithWebPod starts an image cache that never checks its metadata on
// its own (the tests call Rebuild) and returns it once pod p of the web
// image is ready, with p's pod.images.ready and the image's layers.
func startWithWebPod(t *testing.T) (*env, *events.PodImagesReady, []imagemeta.Layer) {
	t.Helper()
	e := startEnv(t, func(c *imagecache.Config) { c.CheckInterval = time.Hour })
	web := e.reg.Ref("podvisor/web:1.0")
	e.accept("p", web)
	evs := e.WaitFor("p ready", 20*time.Second, func(evs []testenv.Seen) bool { return readyFor(t, evs, "p") != nil })
	return e, readyFor(t, evs, "p"), layerSizes(t, e, web)
}

// TestRebuildReferencesOnlyPodsAndRetries: after Redis lost its data, the
// rebuild finds the pods' references in the pod VMs' disks. A reference it
// cannot write fails the rebuild, which leaves the metadata not intact so
// that the next check tries again (before, the error was dropped and the
// metadata marked intact without the reference: the collector could then
// evict a chain a running pod uses). A template VM (pv-template-<hash>)
// whose disks are the same image disks holds no reference, as in normal
// operation (before, it took one under "template-<hash>" that nothing
// ever dropped).
func TestRebuildReferencesOnlyPodsAndRetries(t *testing.T) {
	e, ready, layers := startWithWebPod(t)
	ctx := context.Background()
	top := ready.Containers[0].Disk
	createPodVM(t, e, "pv-"+testenv.UID("p"), top)
	createPodVM(t, e, "pv-template-0123456789abcdef", top)

	if err := e.redis.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	// The pod's reference set cannot be written: a key of another type
	// stands in for Redis refusing the write.
	podKey := imagemeta.PodKey(testenv.UID("p"))
	if err := e.redis.Set(ctx, podKey, "not a set", 0).Err(); err != nil {
		t.Fatal(err)
	}
	db := chaindb.New(e.redis, nil)
	if _, err := e.svc.Rebuild(ctx); err == nil || !strings.Contains(err.Error(), "pv-"+testenv.UID("p")) {
		t.Fatalf("Rebuild with a reference it cannot write = %v, want an error naming the pod VM", err)
	}
	if ok, err := db.Intact(ctx); err != nil || ok {
		t.Fatalf("metadata intact = %v, %v after a rebuild that lost a reference; want not, so the next check retries", ok, err)
	}

	if err := e.redis.Del(ctx, podKey).Err(); err != nil {
		t.Fatal(err)
	}
	rep, err := e.svc.Rebuild(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Refs != len(layers) {
		t.Fatalf("rebuild restored %d references, want the pod VM's %d (none for the template VM)", rep.Refs, len(layers))
	}
	if ok, err := db.Intact(ctx); err != nil || !ok {
		t.Fatalf("metadata intact = %v, %v after the rebuild; want intact", ok, err)
	}
	for _, l := range layers {
		rec, ok, err := e.reader().chain(l.ChainID, sharedDS)
		if err != nil || !ok || rec.Refs != 1 {
			t.Fatalf("chain %s after the rebuild: %+v (found %v, %v), want the pod's 1 reference", l.ChainID, rec, ok, err)
		}
	}
	if n, err := e.redis.Exists(ctx, imagemeta.PodKey("template-0123456789abcdef")).Result(); err != nil || n != 0 {
		t.Fatalf("the template VM holds references (%d, %v)", n, err)
	}
}

// TestRebuildReferencesUnderThePodsUID: a pod VM made again after an
// eviction is named pv-<uid>-<n>. The rebuild references its chains for
// the pod its guestinfo names, else for the uid in its name without the
// suffix, so that the pod's pod.deleted drops them. Before, it took
// "<uid>-<n>" for the uid: references no pod.deleted ever dropped, which
// kept the chains from the collector for good.
func TestRebuildReferencesUnderThePodsUID(t *testing.T) {
	e, ready, layers := startWithWebPod(t)
	ctx := context.Background()
	chain := ready.Containers[0].Chain

	// p's second VM, with the guestinfo the provisioner writes; and the
	// third VM of a pod whose uid has the provisioner's form, without
	// guestinfo (made by a version that wrote none, or edited away).
	uid := testenv.UID("p")
	const bare = "0b5c1f0e-6d1a-5e2b-9c3d-4f5a6b7c8d9e"
	createVM(t, e, "pv-"+uid+"-1", map[string]string{vsphere.GuestinfoUID: uid,
		vsphere.GuestinfoNamespace: "default", vsphere.GuestinfoPod: "p"}, chain...)
	createVM(t, e, "pv-"+bare+"-2", nil, chain...)

	if err := e.redis.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	rep, err := e.svc.Rebuild(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Refs != 2*len(layers) {
		t.Fatalf("rebuild restored %d references, want %d (each VM's chain)", rep.Refs, 2*len(layers))
	}
	for _, c := range []struct {
		uid  string
		want int64
	}{{uid, 1}, {bare, 1}, {uid + "-1", 0}, {bare + "-2", 0}} {
		if n, err := e.redis.Exists(ctx, imagemeta.PodKey(c.uid)).Result(); err != nil || n != c.want {
			t.Errorf("references of pod %q: %d (%v), want %d", c.uid, n, err, c.want)
		}
	}
	for _, l := range layers {
		if rec, ok, err := e.reader().chain(l.ChainID, sharedDS); err != nil || !ok || rec.Refs != 2 {
			t.Fatalf("chain %s after the rebuild: %+v (found %v, %v), want 2 references", l.ChainID, rec, ok, err)
		}
	}

	e.Publish(&events.PodDeleted{PodRef: events.PodRef{Namespace: "default", Name: "p", UID: uid}})
	e.Publish(&events.PodDeleted{PodRef: events.PodRef{Namespace: "default", Name: "q", UID: bare}})
	for _, l := range layers {
		waitRefs(t, e, l.ChainID, 0)
	}
}

// TestRebuildRestoresWhatRunningPodsUse is a restart of `podvisor up`:
// Redis comes back empty and the simulated vCenter without a single VM
// (the provisioner makes the pod VMs again later, from the pod records).
// The rebuild restores every chain found on the datastore as ready, and
// each running pod's references from its record (the images its
// pod.images.ready announced); a deleted pod's chains stay unreferenced.
// The collector, over budget and past the grace, then takes only what no
// pod uses. Before, the rebuild found references in the pod VMs alone:
// with none yet, every chain was left at 0 references and the collector
// deleted the disks of running pods.
func TestRebuildRestoresWhatRunningPodsUse(t *testing.T) {
	e := startEnv(t, func(c *imagecache.Config) {
		c.CheckInterval = time.Hour
		c.GCBudgetBytes = 1
		c.GCGrace = time.Nanosecond
	})
	ctx := context.Background()
	web, worker := e.reg.Ref("podvisor/web:1.0"), e.reg.Ref("podvisor/worker:1.0")
	e.accept("w1", web)
	e.accept("k1", worker)
	evs := e.WaitFor("pods ready", 20*time.Second, func(evs []testenv.Seen) bool { return countReady(t, evs, "") == 2 })
	webLayers, workerLayers := layerSizes(t, e, web), layerSizes(t, e, worker)
	// The provisioner folds pod.images.ready into the record of k1; w1 is
	// deleted.
	rec := testenv.MustGet[events.PodRecord](e.Env, events.BucketPods, events.PodRecordKey("default", "k1"))
	rec.Images = readyFor(t, evs, "k1").Containers
	e.PutPodRecord(rec)
	e.Publish(&events.PodDeleted{PodRef: events.PodRef{Namespace: "default", Name: "w1", UID: testenv.UID("w1")}})
	waitRefs(t, e, webLayers[2].ChainID, 0)

	if err := e.redis.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	rep, err := e.svc.Rebuild(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Chains != 4 || rep.Refs != len(workerLayers) {
		t.Fatalf("rebuild: %+v, want the 4 chains restored and k1's %d references", rep, len(workerLayers))
	}
	images, err := imagemeta.NewReader(e.redis).Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, im := range images {
		got[im.Image] = fmt.Sprintf("%s refs=%d", im.State, im.Refs)
	}
	if want := map[string]string{web: "ready refs=0", worker: "ready refs=1"}; !maps.Equal(got, want) {
		t.Fatalf("images after the rebuild: %v, want %v", got, want)
	}

	time.Sleep(time.Millisecond) // past the grace of 1ns
	if evicted := collectGarbage(t, e); !slices.Equal(evicted, []string{webLayers[2].ChainID, webLayers[1].ChainID}) {
		t.Fatalf("evicted %v, want only web's own layers %s, %s", evicted, webLayers[2].ChainID, webLayers[1].ChainID)
	}
	store := imagedisk.New(e.vc.Client.Client, e.vc.DC)
	for _, l := range workerLayers {
		if _, err := store.ReadDisk(ctx, sharedDS, l.ChainID); err != nil {
			t.Fatalf("k1's chain %s lost its disk: %v", l.ChainID, err)
		}
	}

	// k1's pod.deleted drops what the rebuild restored.
	e.Publish(&events.PodDeleted{PodRef: events.PodRef{Namespace: "default", Name: "k1", UID: testenv.UID("k1")}})
	waitRefs(t, e, workerLayers[1].ChainID, 0)
	waitRefs(t, e, workerLayers[0].ChainID, 0)
}
