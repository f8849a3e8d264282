package vsphere_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/vsphere"
)

func TestHostsMatchTheSimulator(t *testing.T) {
	d := simtest.Start(t, sim.Config{Clusters: 2, HostsPerCluster: 3, Seed: 3})
	s := connect(t, configFor(d))
	ctx := context.Background()

	hosts, err := s.Hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 6 {
		t.Fatalf("hosts = %d, want 6", len(hosts))
	}
	pools := map[string]types.ManagedObjectReference{}
	for _, c := range d.Clusters() {
		pools[c.Name] = c.ResourcePool
	}
	for _, h := range hosts {
		want, err := d.Host(h.Name)
		if err != nil {
			t.Fatalf("host %s unknown to the simulator", h.Name)
		}
		if h.Ref != want.Ref || h.Cluster != want.Cluster || h.ResourcePool != pools[want.Cluster] || h.ClusterRef.Type != "ClusterComputeResource" {
			t.Errorf("%s: placement = %v %s %v, want %v %s %v", h.Name, h.Ref, h.Cluster, h.ResourcePool, want.Ref, want.Cluster, pools[want.Cluster])
		}
		if int(h.CPUCores) != want.Cores || int(h.CPUThreads) != want.Threads || int(h.CPUMHz) != want.MHz ||
			h.CPUCapacityMHz != want.CPUCapacityMHz() || h.MemoryBytes != want.MemoryBytes {
			t.Errorf("%s: capacity = %d cores %d MHz %d B, sim says %d cores %d MHz %d B",
				h.Name, h.CPUCores, h.CPUMHz, h.MemoryBytes, want.Cores, want.MHz, want.MemoryBytes)
		}
		wantDS := append([]string(nil), want.Datastores...)
		slices.Sort(wantDS)
		if !slices.Equal(h.Datastores, wantDS) || !h.HasDatastore(sim.SharedDatastore) || h.HasDatastore("cluster-9-ds") {
			t.Errorf("%s: datastores = %v, want %v", h.Name, h.Datastores, wantDS)
		}
		if !h.HasNetwork(sim.DefaultNetwork) {
			t.Errorf("%s: networks = %v, want %s among them", h.Name, h.Networks, sim.DefaultNetwork)
		}
		if !h.Schedulable() {
			t.Errorf("%s: not schedulable at start: %s maintenance=%v", h.Name, h.ConnectionState, h.InMaintenance)
		}
	}
	if !slices.IsSortedFunc(hosts, func(a, b vsphere.Host) int { return strings.Compare(a.Name, b.Name) }) {
		t.Error("hosts are not sorted by name")
	}

	// State changes show up on the next read.
	failed, maint := hosts[0].Name, hosts[1].Name
	if err := d.FailHost(ctx, failed); err != nil {
		t.Fatal(err)
	}
	if err := d.SetMaintenance(ctx, maint, true); err != nil {
		t.Fatal(err)
	}
	hosts, err = s.Hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		switch h.Name {
		case failed:
			if h.ConnectionState != types.HostSystemConnectionStateNotResponding || h.Schedulable() {
				t.Errorf("failed host %s: %s schedulable=%v", h.Name, h.ConnectionState, h.Schedulable())
			}
		case maint:
			if !h.InMaintenance || h.Schedulable() {
				t.Errorf("host in maintenance %s: maintenance=%v schedulable=%v", h.Name, h.InMaintenance, h.Schedulable())
			}
		default:
			if !h.Schedulable() {
				t.Errorf("host %s lost schedulability", h.Name)
			}
		}
	}
}

func TestResourcePoolOfCluster(t *testing.T) {
	d := simtest.Start(t, sim.Config{Clusters: 2, HostsPerCluster: 1})
	s := connect(t, configFor(d))
	ctx := context.Background()
	for _, c := range d.Clusters() {
		pool, err := s.ResourcePoolOfCluster(ctx, c.Name)
		if err != nil {
			t.Fatal(err)
		}
		if pool.Reference() != c.ResourcePool {
			t.Errorf("pool of %s = %v, want %v", c.Name, pool.Reference(), c.ResourcePool)
		}
	}
	if _, err := s.ResourcePoolOfCluster(ctx, "cluster-9"); !errors.Is(err, vsphere.ErrNotFound) {
		t.Errorf("missing cluster: err = %v, want ErrNotFound", err)
	}
	if _, err := s.ResourcePoolOfCluster(ctx, ""); !errors.Is(err, vsphere.ErrInvalidName) {
		t.Errorf("empty cluster name: err = %v, want ErrInvalidName", err)
	}
}

func TestEnsureFolderIsIdempotentAndConcurrent(t *testing.T) {
	d := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 1})
	s := connect(t, configFor(d))
	ctx := context.Background()

	var wg sync.WaitGroup
	refs := make([]types.ManagedObjectReference, 8)
	errs := make([]error, 8)
	for i := range refs {
		wg.Go(func() {
			f, err := s.EnsureFolder(ctx, "podvisor/default")
			errs[i] = err
			if f != nil {
				refs[i] = f.Reference()
			}
		})
	}
	wg.Wait()
	for i := range refs {
		if errs[i] != nil {
			t.Fatalf("EnsureFolder #%d: %v", i, errs[i])
		}
		if refs[i] != refs[0] {
			t.Errorf("EnsureFolder #%d = %v, #0 = %v: concurrent calls must agree", i, refs[i], refs[0])
		}
	}
	again, err := s.EnsureFolder(ctx, "/podvisor/default/")
	if err != nil || again.Reference() != refs[0] {
		t.Errorf("EnsureFolder again = %v, %v; want %v", again, err, refs[0])
	}
	if again.InventoryPath != "/DC0/vm/podvisor/default" {
		t.Errorf("inventory path = %q", again.InventoryPath)
	}

	// Exactly one "podvisor" under vm and one "default" under it.
	f, err := s.Finder.Folder(ctx, "/DC0/vm/podvisor")
	if err != nil {
		t.Fatal(err)
	}
	children, err := f.Children(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(children) != 1 {
		t.Errorf("podvisor folder has %d children, want 1 (no duplicates from the race)", len(children))
	}
	vmFolder, err := s.Finder.Folder(ctx, "/DC0/vm")
	if err != nil {
		t.Fatal(err)
	}
	top, err := vmFolder.Children(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(top) != 1 {
		t.Errorf("vm folder has %d children, want 1", len(top))
	}

	for _, bad := range []string{"", "  ", "podvisor//x", "podvisor/../x", "a/" + string(make([]byte, 81))} {
		if _, err := s.EnsureFolder(ctx, bad); !errors.Is(err, vsphere.ErrInvalidName) {
			t.Errorf("EnsureFolder(%q) err = %v, want ErrInvalidName", bad, err)
		}
	}
}

func createVM(t *testing.T, s *vsphere.Session, folder *object.Folder, d *sim.Datacenter, name string) *object.VirtualMachine {
	t.Helper()
	ctx := context.Background()
	h := d.Hosts()[0]
	pool, err := s.ResourcePoolOfCluster(ctx, h.Cluster)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.DatastoreByName(ctx, sim.SharedDatastore); err != nil {
		t.Fatal(err)
	}
	task, err := folder.CreateVM(ctx, types.VirtualMachineConfigSpec{
		Name: name, GuestId: "otherLinux64Guest", NumCPUs: 1, MemoryMB: 128,
		Files: &types.VirtualMachineFileInfo{VmPathName: "[" + sim.SharedDatastore + "]"},
	}, pool, object.NewHostSystem(s.Vim(), h.Ref))
	if err != nil {
		t.Fatal(err)
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	return object.NewVirtualMachine(s.Vim(), info.Result.(types.ManagedObjectReference))
}

func TestFindVM(t *testing.T) {
	d := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 1})
	s := connect(t, configFor(d))
	ctx := context.Background()
	a, err := s.EnsureFolder(ctx, "podvisor/a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.EnsureFolder(ctx, "podvisor/b")
	if err != nil {
		t.Fatal(err)
	}

	if vm, err := s.FindVM(ctx, "pv-absent"); vm != nil || err != nil {
		t.Errorf("FindVM(absent) = %v, %v; want nil, nil", vm, err)
	}
	if vm, err := s.FindVMIn(ctx, a, "pv-absent"); vm != nil || err != nil {
		t.Errorf("FindVMIn(absent) = %v, %v; want nil, nil", vm, err)
	}

	created := createVM(t, s, a, d, "pv-1234")
	vm, err := s.FindVM(ctx, "pv-1234")
	if err != nil || vm == nil || vm.Reference() != created.Reference() {
		t.Fatalf("FindVM = %v, %v; want %v", vm, err, created.Reference())
	}
	vm, err = s.FindVMIn(ctx, a, "pv-1234")
	if err != nil || vm == nil || vm.Reference() != created.Reference() {
		t.Fatalf("FindVMIn = %v, %v; want %v", vm, err, created.Reference())
	}
	if vm, err := s.FindVMIn(ctx, b, "pv-1234"); vm != nil || err != nil {
		t.Errorf("FindVMIn(other folder) = %v, %v; want nil, nil", vm, err)
	}

	// vCenter allows the same name in another folder; podvisor must notice.
	createVM(t, s, b, d, "pv-1234")
	if _, err := s.FindVM(ctx, "pv-1234"); !errors.Is(err, vsphere.ErrDuplicateName) {
		t.Errorf("FindVM with two VMs of one name: err = %v, want ErrDuplicateName", err)
	}
	if _, err := s.FindVM(ctx, ""); !errors.Is(err, vsphere.ErrInvalidName) {
		t.Errorf("FindVM(\"\") err = %v, want ErrInvalidName", err)
	}
}

func TestDatastoreAndDVSByName(t *testing.T) {
	d := simtest.Start(t, sim.Config{Clusters: 2, HostsPerCluster: 1})
	s := connect(t, configFor(d))
	ctx := context.Background()

	for _, want := range d.Datastores() {
		ds, err := s.DatastoreByName(ctx, want.Name)
		if err != nil {
			t.Fatalf("DatastoreByName(%s): %v", want.Name, err)
		}
		if ds.Reference() != want.Ref {
			t.Errorf("DatastoreByName(%s) = %v, want %v", want.Name, ds.Reference(), want.Ref)
		}
		var m mo.Datastore
		if err := s.Client.RetrieveOne(ctx, ds.Reference(), []string{"summary.capacity"}, &m); err != nil || m.Summary.Capacity != want.CapacityBytes {
			t.Errorf("%s capacity = %d, %v; want %d", want.Name, m.Summary.Capacity, err, want.CapacityBytes)
		}
	}
	for _, tc := range []struct {
		name string
		want error
	}{
		{"missing-ds", vsphere.ErrNotFound},
		{"", vsphere.ErrInvalidName},
		{"bad]name", vsphere.ErrInvalidName},
		{"a/b", vsphere.ErrInvalidName},
	} {
		if _, err := s.DatastoreByName(ctx, tc.name); !errors.Is(err, tc.want) {
			t.Errorf("DatastoreByName(%q) err = %v, want %v", tc.name, err, tc.want)
		}
	}

	dvs, err := s.DVSByName(ctx, sim.DVSName)
	if err != nil {
		t.Fatal(err)
	}
	if dvs.Reference() != d.DVS() {
		t.Errorf("DVSByName = %v, want %v", dvs.Reference(), d.DVS())
	}
	if _, err := s.DVSByName(ctx, "pv-dvs-missing"); !errors.Is(err, vsphere.ErrNotFound) {
		t.Errorf("DVSByName(missing) err = %v, want ErrNotFound", err)
	}
}

// Names names objects of any kind, networks and port groups too (whose
// types shadow the entity's Name field).
func TestNamesOfAnyKind(t *testing.T) {
	d := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 1})
	s := connect(t, configFor(d))
	ctx := context.Background()
	h := d.Hosts()[0]
	var mh mo.HostSystem
	if err := s.Client.RetrieveOne(ctx, h.Ref, []string{"network", "datastore"}, &mh); err != nil {
		t.Fatal(err)
	}
	refs := append(append([]types.ManagedObjectReference{h.Ref}, mh.Network...), mh.Datastore...)
	names, err := vsphere.Names(ctx, s.Client.Client, refs)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, r := range refs {
		if names[r] == "" {
			t.Errorf("%s has no name: %v", r, names)
		}
		kinds[r.Type] = true
	}
	if names[h.Ref] != h.Name || !kinds["Network"] || !kinds["DistributedVirtualPortgroup"] || !kinds["Datastore"] {
		t.Errorf("names %v of kinds %v, want the host %s, a network, a port group and a datastore", names, kinds, h.Name)
	}
}
