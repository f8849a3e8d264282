package simtest

import (
	"context"
	"slices"
	"testing"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/sim"
)

// DropHostPortGroup removes a port group from one simulated host's
// networks through the simulator's own update path, as a host whose own
// configuration lost it reads back, while the switch and every record
// still say the host carries it.
func DropHostPortGroup(t testing.TB, d *sim.Datacenter, host, portGroup string) {
	t.Helper()
	spec, err := d.Host(host)
	if err != nil {
		t.Fatal(err)
	}
	m := d.Model()
	c := *m.Service.Context // a context of its own: vcsim locks belong to a context
	c.Context = context.Background()
	var pg types.ManagedObjectReference
	for _, e := range m.Map().All("DistributedVirtualPortgroup") {
		if p, ok := e.(*simulator.DistributedVirtualPortgroup); ok && p.Name == portGroup {
			pg = p.Self
		}
	}
	if pg.Value == "" {
		t.Fatalf("simtest: no port group %s", portGroup)
	}
	h, ok := m.Map().Get(spec.Ref).(*simulator.HostSystem)
	if !ok {
		t.Fatalf("simtest: host %s not in the simulator", host)
	}
	c.WithLock(h, func() {
		nets := slices.DeleteFunc(slices.Clone(h.Network), func(r types.ManagedObjectReference) bool { return r == pg })
		c.Map.Update(&c, h, []types.PropertyChange{{Name: "network", Val: nets}})
	})
}
