package fabric_test

import (
	"context"
	"testing"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/services/netconfig/fabric"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
)

func newFabric(t *testing.T) (*fabric.Fabric, *sim.Datacenter) {
	t.Helper()
	ctx := context.Background()
	d := simtest.Start(t, sim.Config{Clusters: 2, HostsPerCluster: 2})
	c := simtest.Client(t, d)
	dc, err := find.NewFinder(c.Client).Datacenter(ctx, "DC0")
	if err != nil {
		t.Fatal(err)
	}
	return fabric.New(c.Client, dc), d
}

func TestHostsReportClusterAndState(t *testing.T) {
	f, d := newFabric(t)
	ctx := context.Background()
	if err := d.FailHost(ctx, d.Hosts()[0].Name); err != nil {
		t.Fatal(err)
	}
	hosts, err := f.Hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 4 {
		t.Fatalf("%d hosts, want 4", len(hosts))
	}
	for _, h := range hosts {
		spec, err := d.Host(h.Name)
		if err != nil || spec.Cluster != h.Cluster {
			t.Errorf("host %s in cluster %q, sim says %q (%v)", h.Name, h.Cluster, spec.Cluster, err)
		}
		want := fabric.Connected
		if h.Name == d.Hosts()[0].Name {
			want = fabric.NotResponding
		}
		if h.ConnectionState != want {
			t.Errorf("host %s is %s, want %s", h.Name, h.ConnectionState, want)
		}
	}
}

func TestPortGroupLifecycle(t *testing.T) {
	f, d := newFabric(t)
	ctx := context.Background()
	spec := fabric.PortGroupSpec{Name: "pv-x", VLAN: 10, Description: "podvisor network x version 1 mtu 1500", AllowPromiscuous: ptr(true)}

	if changed, err := f.EnsurePortGroup(ctx, "pv-dvs", spec); err != nil || !changed {
		t.Fatalf("create: changed=%v err=%v", changed, err)
	}
	if changed, err := f.EnsurePortGroup(ctx, "pv-dvs", spec); err != nil || changed {
		t.Fatalf("same spec again: changed=%v err=%v, want no change", changed, err)
	}
	pg, ok, err := f.FindPortGroup(ctx, "pv-x")
	if err != nil || !ok || !pg.Matches(spec) || pg.AllowPromiscuous == nil || !*pg.AllowPromiscuous || pg.MACChanges != nil {
		t.Fatalf("read back %+v (ok=%v err=%v), want the spec with promiscuous set and the rest inherited", pg, ok, err)
	}

	// A reconfiguration keeps the name (vSphere replaces the whole config).
	spec.VLAN = 11
	if changed, err := f.EnsurePortGroup(ctx, "pv-dvs", spec); err != nil || !changed {
		t.Fatalf("reconfigure: changed=%v err=%v", changed, err)
	}
	if pg, ok, _ := f.FindPortGroup(ctx, "pv-x"); !ok || pg.VLAN != 11 || pg.Name != "pv-x" {
		t.Fatalf("after reconfigure %+v", pg)
	}

	// Moving to another switch: created there, only its members carry it.
	sw, err := f.EnsureSwitch(ctx, "pv-dvs-test", 1500)
	if err != nil {
		t.Fatal(err)
	}
	h := d.Hosts()[0]
	joined, err := f.JoinAll(ctx, sw.Name, []types.ManagedObjectReference{h.Ref, h.Ref})
	if err != nil || len(joined) != 1 {
		t.Fatalf("JoinAll = %v, %v; want the host once", joined, err)
	}
	if again, err := f.Join(ctx, sw.Name, h.Ref); err != nil || again {
		t.Fatalf("Join of a member = %v, %v; want no change", again, err)
	}
	if _, err := f.EnsurePortGroup(ctx, sw.Name, spec); err != nil {
		t.Fatal(err)
	}
	pg, _, _ = f.FindPortGroup(ctx, "pv-x")
	if pg.Switch != sw.Ref {
		t.Fatalf("port group on %v, want moved to %v", pg.Switch, sw.Ref)
	}
	view, err := f.ObserveHost(ctx, h.Ref)
	if err != nil || !view.Carries(pg.Ref) {
		t.Fatalf("member host does not carry the moved port group (%v)", err)
	}
	other, err := f.ObserveHost(ctx, d.Hosts()[1].Ref)
	if err != nil || other.Carries(pg.Ref) {
		t.Fatalf("non-member host carries the port group (%v)", err)
	}
	if left, err := f.Leave(ctx, sw.Name, h.Ref); err != nil || !left {
		t.Fatalf("Leave = %v, %v", left, err)
	}
	if removed, err := f.RemovePortGroup(ctx, "pv-x"); err != nil || !removed {
		t.Fatalf("RemovePortGroup = %v, %v", removed, err)
	}
	if removed, err := f.RemovePortGroup(ctx, "pv-x"); err != nil || removed {
		t.Fatalf("second RemovePortGroup = %v, %v; want nothing to remove", removed, err)
	}
}

func ptr[T any](v T) *T { return &v }
