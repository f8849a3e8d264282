package sim

import (
	"context"
	"testing"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25"
)

// startInproc starts a datacenter of one host for a test of the package's
// internals and returns it with its in-process client and its datacenter
// object; both end with the test.
func startInproc(t *testing.T) (context.Context, *Datacenter, *vim25.Client, *object.Datacenter) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	d, err := Start(ctx, Config{Clusters: 1, HostsPerCluster: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	vc, err := d.client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := find.NewFinder(vc, true).Datacenter(ctx, DatacenterName)
	if err != nil {
		t.Fatal(err)
	}
	return ctx, d, vc, dc
}
