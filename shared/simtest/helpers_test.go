package simtest_test

import (
	"context"
	"slices"
	"testing"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
)

// The inspection helpers say what vCenter says: where a VM runs, whether
// it exists, which hosts carry a port group, and the disks made.
func TestVMAndNetworkHelpers(t *testing.T) {
	d := simtest.Start(t, sim.Config{Clusters: 2, HostsPerCluster: 2, PortGroups: []sim.PortGroupSpec{{Name: "pv-web"}}})
	c := simtest.Client(t, d)
	ctx := context.Background()
	if all, one := simtest.HostNames(d, ""), simtest.HostNames(d, d.Clusters()[1].Name); len(all) != 4 || len(one) != 2 || !slices.IsSorted(all) {
		t.Fatalf("host names %v and %v, want 4 sorted and 2", all, one)
	}
	host := d.Hosts()[3]
	if got := simtest.ClusterOf(t, d, host.Name); got != host.Cluster {
		t.Errorf("ClusterOf(%s) = %s, want %s", host.Name, got, host.Cluster)
	}
	vm, _, err := simtest.NewPodVM(ctx, c, d, simtest.PodVM{Name: "vm-a", Host: host, NumCPUs: 1, MemoryMB: 64,
		ExtraConfig: map[string]string{"guestinfo.x": "1"}, PowerOn: true})
	if err != nil {
		t.Fatal(err)
	}
	if h, pool := simtest.VMHost(t, c, vm.Reference()); h != host.Name || pool.Value == "" {
		t.Errorf("VMHost = %s, %v; want %s and a pool", h, pool, host.Name)
	}
	var m mo.VirtualMachine
	if err := c.RetrieveOne(ctx, vm.Reference(), []string{"runtime.powerState", "config.extraConfig"}, &m); err != nil {
		t.Fatal(err)
	}
	if m.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
		t.Errorf("power state %s, want on", m.Runtime.PowerState)
	}
	if !simtest.VMExists(c, vm.Reference()) || simtest.VMExists(c, types.ManagedObjectReference{Type: "VirtualMachine", Value: "vm-none"}) {
		t.Error("VMExists does not tell an existing VM from a missing one")
	}
	if pg := simtest.PortGroup(t, c, "pv-web"); !pg.Exists || len(pg.Hosts) != 4 {
		t.Errorf("pv-web = %+v, want it on every host", pg)
	}
	if pg := simtest.PortGroup(t, c, "pv-none"); pg.Exists {
		t.Errorf("pv-none = %+v, want none", pg)
	}
	dc, err := find.NewFinder(c.Client).DefaultDatacenter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	disk := "[" + sim.SharedDatastore + "] disks/a.vmdk"
	simtest.CreateDisks(t, c, dc, "["+sim.SharedDatastore+"] disks", disk)
	if _, err := object.NewVirtualDiskManager(c.Client).QueryVirtualDiskUuid(ctx, disk, dc); err != nil {
		t.Errorf("disk %s: %v", disk, err)
	}
}

// A bare vcsim gets a datastore on one host, and its free space reads as
// set.
func TestVPX(t *testing.T) {
	v := simtest.StartVPX(t, 2)
	v.AddLocalDatastore(t, "DC0_C0_H0", "local-ds")
	v.SetFreeSpace(t, "local-ds", 12345)
	ctx := context.Background()
	ds, err := find.NewFinder(v.Client.Client).SetDatacenter(v.DC).Datastore(ctx, "local-ds")
	if err != nil {
		t.Fatal(err)
	}
	var m mo.Datastore
	if err := ds.Properties(ctx, ds.Reference(), []string{"summary", "host"}, &m); err != nil {
		t.Fatal(err)
	}
	if m.Summary.FreeSpace != 12345 || len(m.Host) != 1 {
		t.Errorf("local-ds: free %d on %d hosts, want 12345 on 1", m.Summary.FreeSpace, len(m.Host))
	}
}
