package simtest_test

import (
	"context"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/vim25/mo"

	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
)

func TestStartServesUntilCleanup(t *testing.T) {
	var d *sim.Datacenter
	t.Run("inner", func(t *testing.T) {
		d = simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 2})
		c := simtest.Client(t, d)
		if n := len(d.Hosts()); n != 2 {
			t.Fatalf("hosts = %d, want 2", n)
		}
		var h mo.HostSystem
		if err := c.RetrieveOne(context.Background(), d.Hosts()[0].Ref, []string{"name"}, &h); err != nil {
			t.Fatalf("retrieve host: %v", err)
		}
		if h.Name != d.Hosts()[0].Name {
			t.Errorf("host name = %q, want %q", h.Name, d.Hosts()[0].Name)
		}
	})
	// The inner test's cleanup closed the datacenter.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := govmomi.NewClient(ctx, d.URL(), true); err == nil {
		t.Errorf("simulator still answers after the test's cleanup")
	}
}
