package podvm_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/vim25/mo"

	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
)

// A burst of first creates into sharded folders walks each folder once:
// every folder is created by exactly one CreateFolder, none is tried twice
// and refused as a duplicate. A folder a person removed is walked and made
// again after a failed create forgets it.
func TestEnsureFolderWalksOnceUnderABurst(t *testing.T) {
	ctx := context.Background()
	d := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 1})
	vc := simtest.Client(t, d).Client
	dc, err := find.NewFinder(vc).Datacenter(ctx, sim.DatacenterName)
	if err != nil {
		t.Fatal(err)
	}
	c := podvm.New(vc, dc)

	const shards = 8
	before := d.Calls()
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Go(func() {
			if _, err := c.EnsureFolder(ctx, fmt.Sprintf("podvisor/bench/shard-%02d", i%shards)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	calls := sim.CallsSince(before, d.Calls())
	if got, want := calls["CreateFolder"], int64(2+shards); got != want {
		t.Errorf("CreateFolder called %d times for %d folders (calls: %v)", got, want, calls)
	}
	if n := sim.TotalCalls(calls); n > 4*(2+shards) {
		t.Errorf("%d calls to make %d folders: %v", n, 2+shards, calls)
	}

	bench, err := c.EnsureFolder(ctx, "podvisor/bench")
	if err != nil {
		t.Fatal(err)
	}
	task, err := bench.Destroy(ctx)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	c.CreateFailed(podvm.Spec{Name: "pv-x"}, podvm.Placement{Folder: "podvisor/bench/shard-00"})
	f, err := c.EnsureFolder(ctx, "podvisor/bench/shard-00")
	if err != nil {
		t.Fatal(err)
	}
	var m mo.Folder
	if err := f.Properties(ctx, f.Reference(), []string{"name", "parent"}, &m); err != nil {
		t.Fatalf("the folder made again after its parent was removed: %v", err)
	}
	if m.Name != "shard-00" {
		t.Errorf("folder name %q, want shard-00", m.Name)
	}
}
