package sim_test

import (
	"context"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"

	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
)

// The datacenter counts the calls it serves by method: a folder created and
// its name read back are one CreateFolder and one RetrievePropertiesEx.
func TestCallsCountsServedMethods(t *testing.T) {
	ctx := context.Background()
	d := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 1})
	c := simtest.Client(t, d)
	root := object.NewFolder(c.Client, c.ServiceContent.RootFolder)

	before := d.Calls()
	f, err := root.CreateFolder(ctx, "counted")
	if err != nil {
		t.Fatal(err)
	}
	var m mo.Folder
	if err := f.Properties(ctx, f.Reference(), []string{"name"}, &m); err != nil {
		t.Fatal(err)
	}
	got := sim.CallsSince(before, d.Calls())
	if len(got) != 2 || got["CreateFolder"] != 1 || got["RetrievePropertiesEx"] != 1 {
		t.Fatalf("calls served = %v, want one CreateFolder and one RetrievePropertiesEx", got)
	}
	if n := sim.TotalCalls(got); n != 2 {
		t.Fatalf("total = %d, want 2", n)
	}
}
