package simtest

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/vsphere"
)

// VCenter is a bare vcsim (simulator.VPX: datacenter DC0, hosts
// DC0_C0_H<i>, datastore LocalDS_0 on every host) with a client, for tests
// that want vcsim's own inventory rather than a sim.Datacenter; also a
// view of a sim.Datacenter's (Model, a Client, its Datacenter).
type VCenter struct {
	Model  *simulator.Model
	Client *govmomi.Client
	DC     *object.Datacenter
}

// StartVPX starts a vcsim of one cluster of hosts and one shared
// datastore, closed at cleanup.
func StartVPX(t testing.TB, hosts int) *VCenter {
	t.Helper()
	m := simulator.VPX()
	m.Datacenter, m.Cluster, m.ClusterHost, m.Host, m.Machine, m.Datastore = 1, 1, hosts, 0, 0, 1
	if err := m.Create(); err != nil {
		t.Fatal(err)
	}
	srv := m.Service.NewServer()
	t.Cleanup(func() { srv.Close(); m.Remove() })
	ctx := context.Background()
	c, err := govmomi.NewClient(ctx, srv.URL, true)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := find.NewFinder(c.Client).DefaultDatacenter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &VCenter{Model: m, Client: c, DC: dc}
}

// Session is a vSphere session on the simulator's client, as
// vsphere.Connect makes one: client, finder and datacenter.
func (v *VCenter) Session() *vsphere.Session {
	return &vsphere.Session{Client: v.Client, Finder: find.NewFinder(v.Client.Client, true).SetDatacenter(v.DC), Datacenter: v.DC}
}

// AddLocalDatastore creates datastore name, mounted on host only, in a
// directory of the test's.
func (v *VCenter) AddLocalDatastore(t testing.TB, host, name string) {
	t.Helper()
	ctx := context.Background()
	h, err := find.NewFinder(v.Client.Client).SetDatacenter(v.DC).HostSystem(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	dss, err := h.ConfigManager().DatastoreSystem(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := dss.CreateLocalDatastore(ctx, name, dir); err != nil {
		t.Fatalf("simtest: datastore %s on %s: %v", name, host, err)
	}
}

// SetFreeSpace changes what the API reports as a datastore's free space.
func (v *VCenter) SetFreeSpace(t testing.TB, ds string, free int64) {
	t.Helper()
	ctx := context.Background()
	obj, err := find.NewFinder(v.Client.Client).Datastore(ctx, ds)
	if err != nil {
		t.Fatal(err)
	}
	m := v.Model.Map()
	sds := m.Get(obj.Reference()).(*simulator.Datastore)
	sctx := *v.Model.Service.Context
	sctx.Context = ctx
	m.WithLock(&sctx, sds, func() {
		s := sds.Summary
		s.FreeSpace = free
		m.Update(&sctx, sds, []types.PropertyChange{{Name: "summary", Val: s}})
	})
}
