package imagecache_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/imagecache"
	"github.com/podvisor/podvisor/services/imagecache/chaindb"
	"github.com/podvisor/podvisor/services/imagecache/imagedisk"
	"github.com/podvisor/podvisor/shared/imagemeta"
	"github.com/podvisor/podvisor/shared/testenv"
)

// TestScheduledHostWithoutTheDatastoreGetsACopy: prefetch puts the chain on
// a datastore only one host mounts; a pod scheduled elsewhere gets the chain
// copied to a datastore its host mounts, without touching the registry.
func TestScheduledHostWithoutTheDatastoreGetsACopy(t *testing.T) {
	e := startEnv(t, func(c *imagecache.Config) { c.Datastores = []string{localDS, sharedDS} })
	web := e.reg.Ref("podvisor/web:1.0")
	nearSeq, farSeq := e.accept("near", web), e.accept("far", web)
	// Prefetch lands on the local datastore; nothing is ready yet because
	// not every host mounts it.
	deadline := time.Now().Add(20 * time.Second)
	for {
		// Locality counts a layer as held while it is still being pulled;
		// the prefetch is over when every layer has been pulled.
		loc, _ := imagemeta.NewReader(e.redis).Locality(context.Background(), []string{web})
		if loc[localDS] == 1 && e.svc.Stats().LayersPulled == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("prefetch did not complete on %s: locality %v", localDS, loc)
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.handled(nearSeq)
	e.handled(farSeq)
	if n := countReady(t, e.Events.Seen(), ""); n != 0 {
		t.Fatalf("%d pod.images.ready before scheduling, want 0 (the datastore is not on every host)", n)
	}
	pulledBefore := e.svc.Stats().BytesPulled

	e.Publish(&events.PodScheduled{PodRef: events.PodRef{Namespace: "default", Name: "near", UID: testenv.UID("near")}, Host: hostLocal, Cluster: "DC0_C0"})
	e.Publish(&events.PodScheduled{PodRef: events.PodRef{Namespace: "default", Name: "far", UID: testenv.UID("far")}, Host: "DC0_C0_H1", Cluster: "DC0_C0"})
	evs := e.WaitFor("both pods ready", 20*time.Second, func(evs []testenv.Seen) bool { return countReady(t, evs, "") == 2 })

	near, far := readyFor(t, evs, "near").Containers[0], readyFor(t, evs, "far").Containers[0]
	if near.Datastore != localDS {
		t.Fatalf("pod on %s got its image on %s, want %s", hostLocal, near.Datastore, localDS)
	}
	if far.Datastore != sharedDS || len(far.Chain) != 3 {
		t.Fatalf("pod on DC0_C0_H1 got %+v, want a 3-disk chain on %s", far, sharedDS)
	}
	st := e.svc.Stats()
	if st.BytesPulled != pulledBefore || st.ChainsCopied != 3 {
		t.Fatalf("stats %+v (before scheduling: %d bytes pulled): want no new pull and 3 chains copied", st, pulledBefore)
	}
	// The copy's disks chain to each other on the destination datastore.
	top, ok, _ := e.reader().chain(layerSizes(t, e, web)[2].ChainID, sharedDS)
	if !ok || top.ParentDisk != far.Chain[1] {
		t.Fatalf("copied top record %+v, want parent disk %s", top, far.Chain[1])
	}
	// far's references moved to the copy; near's stayed.
	local, _, _ := e.reader().chain(top.ChainID, localDS)
	if local.Refs != 1 || top.Refs != 1 {
		t.Fatalf("refs: %s=%d %s=%d, want 1 and 1", localDS, local.Refs, sharedDS, top.Refs)
	}
}

// TestRedisFlushedMidRun: Redis loses everything while pods are being
// prepared and again afterwards; every pod still gets its images, the
// metadata comes back from the datastores and pod VMs, and later pods need
// no pull.
func TestRedisFlushedMidRun(t *testing.T) {
	e := startEnv(t, nil)
	ctx := context.Background()
	web := e.reg.Ref("podvisor/web:1.0")
	for i := 0; i < 8; i++ {
		e.accept(fmt.Sprintf("a-%d", i), web)
		if i == 3 {
			if err := e.redis.FlushAll(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	evs := e.WaitFor("8 pods ready", 30*time.Second, func(evs []testenv.Seen) bool { return countReady(t, evs, "a-") == 8 })
	if n := len(testenv.In[events.PodImagesFailed](t, evs, nil)); n != 0 {
		t.Fatalf("%d pods failed across the flush", n)
	}
	ready := readyFor(t, evs, "a-0").Containers[0]

	// A pod VM chained to the image (what the provisioner creates).
	createPodVM(t, e, "pv-"+testenv.UID("a-0"), ready.Disk)

	if err := e.redis.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	// Wait for the rebuild that follows this flush to show, rather than for
	// the rebuild counter: a rebuild begun before the flush may finish (and
	// count) just after it.
	rebuilds := e.svc.Stats().Rebuilds
	var imgs []events.ImageRecord
	deadline := time.Now().Add(15 * time.Second)
	for {
		var err error
		imgs, err = imagemeta.NewReader(e.redis).Images(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if e.svc.Stats().Rebuilds > rebuilds && len(imgs) == 1 && imgs[0].Refs == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after FLUSHALL: %d rebuilds since, images = %+v", e.svc.Stats().Rebuilds-rebuilds, imgs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if imgs[0].Image != web || imgs[0].State != events.ChainStateReady || imgs[0].Datastore != sharedDS {
		t.Fatalf("images after rebuild = %+v, want web ready on %s with the pod VM's 1 reference", imgs, sharedDS)
	}
	base, _, _ := e.reader().chain(layerSizes(t, e, web)[0].ChainID, sharedDS)
	if base.Refs != 1 {
		t.Fatalf("base refs after rebuild = %d, want 1 (parents of the VM's image disk are referenced too)", base.Refs)
	}

	pulled := e.svc.Stats().BytesPulled
	for i := 0; i < 4; i++ {
		e.accept(fmt.Sprintf("b-%d", i), web)
	}
	evs = e.WaitFor("4 more pods ready", 20*time.Second, func(evs []testenv.Seen) bool { return countReady(t, evs, "b-") == 4 })
	if got := e.svc.Stats().BytesPulled; got != pulled {
		t.Fatalf("pods after the rebuild pulled %d bytes, want 0", got-pulled)
	}
	if readyFor(t, evs, "b-0").Containers[0].Disk != ready.Disk {
		t.Fatal("pods after the rebuild got another disk")
	}
}

// createPodVM creates a VM whose disk's parent is the image's top disk.
func createPodVM(t *testing.T, e *env, name, parentDisk string) {
	t.Helper()
	makeVM(t, e, types.VirtualMachineConfigSpec{Name: name}, "lsilogic", func(ctrl int32) []types.BaseVirtualDeviceConfigSpec {
		disk := &types.VirtualDisk{
			VirtualDevice: types.VirtualDevice{
				Key:           -100,
				ControllerKey: ctrl,
				UnitNumber:    types.NewInt32(0),
				Backing: &types.VirtualDiskFlatVer2BackingInfo{
					VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: "[" + sharedDS + "] " + name + "/rootfs.vmdk"},
					DiskMode:                     string(types.VirtualDiskModePersistent),
					Parent: &types.VirtualDiskFlatVer2BackingInfo{
						VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: parentDisk},
						DiskMode:                     string(types.VirtualDiskModePersistent),
					},
				},
			},
			CapacityInKB: 1024,
		}
		return []types.BaseVirtualDeviceConfigSpec{&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd,
			FileOperation: types.VirtualDeviceConfigSpecFileOperationCreate, Device: disk}}
	})
}

// makeVM creates the VM spec describes on the shared datastore, with a SCSI
// controller of the given type and the devices disks makes for it (given
// the controller's key).
func makeVM(t *testing.T, e *env, spec types.VirtualMachineConfigSpec, controller string, disks func(ctrl int32) []types.BaseVirtualDeviceConfigSpec) {
	t.Helper()
	ctx := context.Background()
	f := find.NewFinder(e.vc.Client.Client)
	f.SetDatacenter(e.vc.DC)
	folders, err := e.vc.DC.Folders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := f.DefaultResourcePool(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ctrl, err := object.VirtualDeviceList{}.CreateSCSIController(controller)
	if err != nil {
		t.Fatal(err)
	}
	changes, err := object.VirtualDeviceList{ctrl}.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd)
	if err != nil {
		t.Fatal(err)
	}
	spec.GuestId = "otherLinux64Guest"
	spec.Files = &types.VirtualMachineFileInfo{VmPathName: "[" + sharedDS + "]"}
	spec.DeviceChange = append(changes, disks(ctrl.GetVirtualDevice().Key)...)
	task, err := folders.VmFolder.CreateVM(ctx, spec, pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Wait(ctx); err != nil {
		t.Fatalf("create VM %s: %v", spec.Name, err)
	}
}

// TestGarbageCollectionOrder: over budget, unreferenced chains go, children
// before parents; referenced chains and their parents stay.
func TestGarbageCollectionOrder(t *testing.T) {
	e, _, webLayers, workerLayers := startGC(t)
	ctx := context.Background()

	// With both pods alive nothing may go.
	if evicted := collectGarbage(t, e); len(evicted) != 0 {
		t.Fatalf("GC with every chain referenced evicted %v", evicted)
	}
	e.Publish(&events.PodDeleted{PodRef: events.PodRef{Namespace: "default", Name: "w1", UID: testenv.UID("w1")}, Images: []string{webLayers[0].DiffID}})
	waitRefs(t, e, webLayers[2].ChainID, 0)
	time.Sleep(5 * time.Millisecond)

	want := []string{webLayers[2].ChainID, webLayers[1].ChainID}
	if order := collectGarbage(t, e); !slices.Equal(order, want) {
		t.Fatalf("evicted %v, want web's top then its middle layer %v (base is still used by the worker pod)", order, want)
	}
	checkDisksGone(t, e, want...)
	e.WaitFor("image.evicted events", 10*time.Second, func(evs []testenv.Seen) bool {
		return len(testenv.In[events.ImageEvicted](t, evs, nil)) == 2
	})

	// The worker goes too: now its top layer, then the shared base.
	e.Publish(&events.PodDeleted{PodRef: events.PodRef{Namespace: "default", Name: "k1", UID: testenv.UID("k1")}})
	waitRefs(t, e, workerLayers[0].ChainID, 0)
	time.Sleep(5 * time.Millisecond)
	want = []string{workerLayers[1].ChainID, workerLayers[0].ChainID}
	if order := collectGarbage(t, e); !slices.Equal(order, want) {
		t.Fatalf("evicted %v, want the worker's top then the base %v", order, want)
	}
	chains, _ := imagemeta.NewReader(e.redis).Chains(ctx)
	if len(chains) != 0 {
		t.Fatalf("chain records left after full GC: %+v", chains)
	}

	// Pulling again after eviction works and is announced again.
	e.accept("w2", e.reg.Ref("podvisor/web:1.0"))
	e.WaitFor("web again", 20*time.Second, func(evs []testenv.Seen) bool { return readyFor(t, evs, "w2") != nil })
}

func waitRefs(t *testing.T, e *env, chainID string, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec, ok, _ := e.reader().chain(chainID, sharedDS)
		if ok && rec.Refs == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("refs of %s = %d, want %d", chainID, rec.Refs, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCrashedPullIsRedone: a replica took the lease of a chain, wrote part
// of the folder and died. The service waits for the lease to expire, then
// pulls the chain afresh; the record turns ready only with complete data.
func TestCrashedPullIsRedone(t *testing.T) {
	e := startEnv(t, nil)
	ctx := context.Background()
	worker := e.reg.Ref("podvisor/worker:1.0")
	layers := layerSizesFromRegistry(t, worker)
	store := imagedisk.New(e.vc.Client.Client, e.vc.DC)
	dead := events.ChainRecord{ChainID: layers[0].ChainID, Datastore: sharedDS, Disk: imagedisk.DiskPath(sharedDS, layers[0].ChainID),
		Layer: layers[0].Digest, DiffID: layers[0].DiffID, Depth: 1, Size: layers[0].Size}
	if got, err := chaindb.New(e.redis, nil).Begin(ctx, dead, "dead-replica", 1500*time.Millisecond); err != nil || got != chaindb.Acquired {
		t.Fatalf("fake replica lease: %v %v", got, err)
	}
	if err := store.Begin(ctx, dead); err != nil {
		t.Fatal(err)
	}
	// Half a flat extent, no descriptor: what a puller that died mid-upload leaves.
	ds, err := find.NewFinder(e.vc.Client.Client).Datastore(ctx, sharedDS)
	if err != nil {
		t.Fatal(err)
	}
	p := soap.DefaultUpload
	p.ContentLength = 7
	hex := strings.TrimPrefix(dead.ChainID, "sha256:")
	if err := ds.Upload(ctx, strings.NewReader("partial"), events.ImageRoot+"/"+hex+"/"+imagedisk.FlatFile, &p); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	e.accept("after-crash", worker)
	evs := e.WaitFor("pod ready after the dead lease expired", 20*time.Second, func(evs []testenv.Seen) bool { return readyFor(t, evs, "after-crash") != nil })
	if time.Since(start) < time.Second {
		t.Fatal("the chain was used before the crashed puller's lease expired")
	}
	disk, err := store.ReadDisk(ctx, sharedDS, dead.ChainID)
	if err != nil {
		t.Fatal(err)
	}
	rc, n, err := store.ReadFlat(ctx, sharedDS, dead.ChainID)
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
	if n != disk.Size || n < layers[0].Size {
		t.Fatalf("base flat extent is %d bytes, want the disk's %d (the partial one was replaced)", n, disk.Size)
	}
	if c := readyFor(t, evs, "after-crash").Containers[0]; c.Chain[0] != dead.Disk {
		t.Fatalf("chain %v does not start at %s", c.Chain, dead.Disk)
	}
}

// TestTwoReplicasPullOnce: two image-cache processes on the same bus, Redis
// and vCenter share the pods; the Redis lease makes the image's bytes come
// from the registry once in total.
func TestTwoReplicasPullOnce(t *testing.T) {
	e := startEnv(t, nil)
	second := e.newService(imagecache.Config{Workers: 8, LeaseTTL: 2 * time.Second, GCInterval: time.Hour, CheckInterval: time.Hour})
	e.Run(imagecache.Name+"-2", second.Run)

	web := e.reg.Ref("podvisor/web:1.0")
	for i := 0; i < 20; i++ {
		e.accept(fmt.Sprintf("r-%02d", i), web)
	}
	e.WaitFor("20 pods ready", 30*time.Second, func(evs []testenv.Seen) bool { return countReady(t, evs, "r-") == 20 })
	total := e.svc.Stats().BytesPulled + second.Stats().BytesPulled
	if want := sum(layerSizes(t, e, web)); total != want {
		t.Fatalf("two replicas pulled %d bytes in total (%d + %d), want the image size %d once",
			total, e.svc.Stats().BytesPulled, second.Stats().BytesPulled, want)
	}
}

// TestWipedDatastoreRecordsAreDropped: Redis says a chain is ready but its
// folder is gone (the datastore was replaced); the sync with the datastores
// drops the record and the next pod pulls the layer again instead of being
// handed a missing disk.
func TestWipedDatastoreRecordsAreDropped(t *testing.T) {
	e := startEnv(t, nil)
	ctx := context.Background()
	worker := e.reg.Ref("podvisor/worker:1.0")
	e.accept("first", worker)
	e.WaitFor("first ready", 20*time.Second, func(evs []testenv.Seen) bool { return readyFor(t, evs, "first") != nil })
	layers := layerSizes(t, e, worker)
	store := imagedisk.New(e.vc.Client.Client, e.vc.DC)
	if err := store.Delete(ctx, sharedDS, layers[1].ChainID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	rep, err := e.svc.Rebuild(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Stale != 1 || rep.Chains != 0 {
		t.Fatalf("rebuild = %+v, want 1 stale record dropped and nothing to restore", rep)
	}
	if _, ok, _ := e.reader().chain(layers[1].ChainID, sharedDS); ok {
		t.Fatal("record of the wiped chain survived")
	}
	before := e.svc.Stats().BytesPulled
	e.accept("second", worker)
	e.WaitFor("second ready", 20*time.Second, func(evs []testenv.Seen) bool { return readyFor(t, evs, "second") != nil })
	if got := e.svc.Stats().BytesPulled - before; got != layers[1].Size {
		t.Fatalf("second pod pulled %d bytes, want the wiped layer's %d again", got, layers[1].Size)
	}
}
