package imagecache_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/imagecache"
	"github.com/podvisor/podvisor/services/imagecache/imagedisk"
	"github.com/podvisor/podvisor/shared/imagemeta"
	"github.com/podvisor/podvisor/shared/testenv"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// TestGarbageCollectionKeepsAttachedChains: a chain no pod references is
// kept past its grace while a VM has its disk attached: a pod VM template
// (pv-template-<hash>), which mounts its image's chain disks and holds no
// reference, or a VM whose disk is a child of the chain's. Once the VM is
// gone (its shared disks detached, then destroyed, as the provisioner does),
// the next pass collects the chain. Before, the collector deleted the
// folder from under the template: vCenter refuses to delete a locked disk,
// vcsim does not.
func TestGarbageCollectionKeepsAttachedChains(t *testing.T) {
	e, evs, webLayers, workerLayers := startGC(t)
	ctx := context.Background()
	webChain := readyFor(t, evs, "w1").Containers[0].Chain
	workerTop := readyFor(t, evs, "k1").Containers[0].Disk

	// A template of the web pod's shape, and a VM whose disk is a child of
	// the worker's top disk.
	const template = "pv-template-0123456789abcdef"
	createVM(t, e, template, nil, webChain...)
	createPodVM(t, e, "linked-clone", workerTop)

	e.Publish(&events.PodDeleted{PodRef: events.PodRef{Namespace: "default", Name: "w1", UID: testenv.UID("w1")}})
	e.Publish(&events.PodDeleted{PodRef: events.PodRef{Namespace: "default", Name: "k1", UID: testenv.UID("k1")}})
	waitRefs(t, e, webLayers[2].ChainID, 0)
	waitRefs(t, e, workerLayers[1].ChainID, 0)
	time.Sleep(5 * time.Millisecond) // past the grace

	collect := func(want ...string) {
		t.Helper()
		if got := collectGarbage(t, e); !slices.Equal(got, want) {
			t.Fatalf("evicted %v, want %v", got, want)
		}
	}
	store := imagedisk.New(e.vc.Client.Client, e.vc.DC)
	kept := func(ids ...string) {
		t.Helper()
		for _, id := range ids {
			if rec, ok, err := e.reader().chain(id, sharedDS); err != nil || !ok || rec.State != events.ChainStateReady {
				t.Fatalf("chain %s: %+v (found %v, %v), want its record kept ready", id, rec, ok, err)
			}
			if _, err := store.ReadDisk(ctx, sharedDS, id); err != nil {
				t.Fatalf("chain %s: %v, want its disk kept", id, err)
			}
		}
	}

	// Unreferenced, past their grace, over budget: all attached, none goes.
	collect()
	kept(webLayers[0].ChainID, webLayers[1].ChainID, webLayers[2].ChainID, workerLayers[1].ChainID)

	// The template goes: its chains go, but the base, which the worker's
	// top (still under the linked clone) names as parent.
	destroyVM(t, e, template)
	collect(webLayers[2].ChainID, webLayers[1].ChainID)
	checkDisksGone(t, e, webLayers[2].ChainID, webLayers[1].ChainID)
	kept(webLayers[0].ChainID, workerLayers[1].ChainID)

	destroyVM(t, e, "linked-clone")
	collect(workerLayers[1].ChainID, workerLayers[0].ChainID)
	checkDisksGone(t, e, workerLayers[1].ChainID, workerLayers[0].ChainID)
}

// startGC starts an image cache whose collector takes every chain no pod
// references (a budget of 1 byte, a grace of 1ns) once pod w1 of the web
// image and pod k1 of the worker image, which share their base layer, are
// ready. It returns the events seen by then and each image's layers.
func startGC(t *testing.T) (e *env, evs []testenv.Seen, webLayers, workerLayers []imagemeta.Layer) {
	t.Helper()
	e = startEnv(t, func(c *imagecache.Config) { c.GCBudgetBytes = 1; c.GCGrace = time.Nanosecond })
	web, worker := e.reg.Ref("podvisor/web:1.0"), e.reg.Ref("podvisor/worker:1.0")
	e.accept("w1", web)
	e.accept("k1", worker)
	evs = e.WaitFor("pods ready", 20*time.Second, func(evs []testenv.Seen) bool { return countReady(t, evs, "") == 2 })
	return e, evs, layerSizes(t, e, web), layerSizes(t, e, worker)
}

// collectGarbage runs one garbage collection pass and returns the chains
// it evicted, in the order it evicted them.
func collectGarbage(t *testing.T, e *env) []string {
	t.Helper()
	evicted, err := e.svc.CollectGarbage(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, ev := range evicted {
		ids = append(ids, ev.ChainID)
	}
	return ids
}

// checkDisksGone fails the test when the disk of any of the evicted chains
// ids is still on the datastore.
func checkDisksGone(t *testing.T, e *env, ids ...string) {
	t.Helper()
	store := imagedisk.New(e.vc.Client.Client, e.vc.DC)
	for _, id := range ids {
		if _, err := store.ReadDisk(t.Context(), sharedDS, id); err == nil {
			t.Fatalf("evicted chain %s still on the datastore", id)
		}
	}
}

// createVM creates a VM with the image disks attached as the provisioner
// attaches them to a pod VM or a template: the existing files, each a disk
// of its own, independent-nonpersistent; extra is its ExtraConfig.
func createVM(t *testing.T, e *env, name string, extra map[string]string, disks ...string) {
	t.Helper()
	var options []types.BaseOptionValue
	for k, v := range extra {
		options = append(options, &types.OptionValue{Key: k, Value: v})
	}
	makeVM(t, e, types.VirtualMachineConfigSpec{Name: name, ExtraConfig: options}, "pvscsi", func(ctrl int32) []types.BaseVirtualDeviceConfigSpec {
		var changes []types.BaseVirtualDeviceConfigSpec
		for i, path := range disks {
			changes = append(changes, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd,
				Device: &types.VirtualDisk{VirtualDevice: types.VirtualDevice{
					Key:           int32(-200 - i),
					ControllerKey: ctrl,
					UnitNumber:    types.NewInt32(int32(i)),
					Backing: &types.VirtualDiskFlatVer2BackingInfo{
						VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: path},
						DiskMode:                     string(types.VirtualDiskModeIndependent_nonpersistent),
					},
				}}})
		}
		return changes
	})
}

// destroyVM destroys a VM as the provisioner does: its shared disks (the
// image disks) detached first, so that their files stay.
func destroyVM(t *testing.T, e *env, name string) {
	t.Helper()
	ctx := context.Background()
	f := find.NewFinder(e.vc.Client.Client)
	f.SetDatacenter(e.vc.DC)
	vm, err := f.VirtualMachine(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if err := vsphere.DetachSharedDisks(ctx, e.vc.Client.Client, vm.Reference()); err != nil {
		t.Fatal(err)
	}
	task, err := vm.Destroy(ctx)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatalf("destroy VM %s: %v", name, err)
	}
}
