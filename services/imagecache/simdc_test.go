package imagecache_test

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmware/govmomi/find"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/imagecache/imagedisk"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// TestOnSimulatedDatacenter runs the image cache on the datacenter `podvisor
// up` simulates (an NFS datastore on every host, one datastore per cluster):
// chains go to the shared datastore, pods of two images sharing a base are
// ready at once, the datastores hold each distinct layer's bytes once, and a
// later pod.scheduled announces nothing new.
func TestOnSimulatedDatacenter(t *testing.T) {
	d := simtest.Start(t, sim.Config{Clusters: 2, HostsPerCluster: 2})
	c := simtest.Client(t, d)
	ctx := context.Background()
	dc, err := find.NewFinder(c.Client).DefaultDatacenter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e := startEnvOn(t, &simtest.VCenter{Model: d.Model(), Client: c, DC: dc}, nil)
	web, worker := e.reg.Ref("podvisor/web:1.0"), e.reg.Ref("podvisor/worker:1.0")
	for i := 0; i < 20; i++ {
		e.accept(fmt.Sprintf("web-%d", i), web)
	}
	for i := 0; i < 5; i++ {
		e.accept(fmt.Sprintf("worker-%d", i), worker)
	}
	evs := e.WaitFor("25 pods ready", 30*time.Second, func(evs []testenv.Seen) bool { return countReady(t, evs, "") == 25 })
	for _, r := range testenv.In[events.PodImagesReady](t, evs, nil) {
		if ds := r.Containers[0].Datastore; ds != sim.SharedDatastore {
			t.Fatalf("pod %s images on %s, want %s", r.Name, ds, sim.SharedDatastore)
		}
	}
	webLayers, workerLayers := layerSizes(t, e, web), layerSizes(t, e, worker)
	if got, want := e.svc.Stats().BytesPulled, sum(webLayers)+workerLayers[1].Size; got != want {
		t.Fatalf("pulled %d bytes, want the distinct layers' %d", got, want)
	}
	// What the image folders of every datastore hold: each distinct layer
	// once, as a filesystem (at most 4× the compressed bytes, no per-pod copies).
	var onDisk int64
	flats := 0
	for _, ds := range d.Datastores() {
		root := filepath.Join(ds.Dir, events.ImageRoot)
		_ = filepath.WalkDir(root, func(path string, de fs.DirEntry, err error) error {
			if err == nil && !de.IsDir() {
				info, _ := de.Info()
				onDisk += info.Size()
				if de.Name() == imagedisk.FlatFile {
					flats++
				}
			}
			return nil
		})
	}
	if distinct := sum(webLayers) + workerLayers[1].Size; onDisk > 4*distinct || flats != 4 {
		t.Fatalf("image folders hold %d bytes in %d disks, want 4 disks and at most 4× the %d distinct compressed layer bytes", onDisk, flats, distinct)
	}
	t.Logf("image folders: %d bytes for %d distinct compressed layer bytes", onDisk, sum(webLayers)+workerLayers[1].Size)
	store := imagedisk.New(c.Client, dc)
	ready, _, _, err := store.Scan(ctx, sim.SharedDatastore)
	if err != nil || len(ready) != 4 {
		t.Fatalf("chains on %s: %d (%v), want 4 (base, web's two, worker's one)", sim.SharedDatastore, len(ready), err)
	}

	host := d.Hosts()[0].Name
	e.handled(e.Publish(&events.PodScheduled{PodRef: events.PodRef{Namespace: "default", Name: "web-0", UID: testenv.UID("web-0")},
		Host: host, Cluster: d.Hosts()[0].Cluster, Datastores: []string{sim.ClusterDatastore(d.Hosts()[0].Cluster), sim.SharedDatastore}}))
	if n := countReady(t, e.Events.Seen(), "web-0"); n != 1 {
		t.Fatalf("web-0 announced %d times, want once (its chain is on a datastore every host mounts)", n)
	}
}
