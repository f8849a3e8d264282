package provisioner

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/podvisor/podvisor/shared/sim"
)

// countingRT counts the vSphere calls that go through it.
type countingRT struct {
	soap.RoundTripper
	n atomic.Int64
}

func (c *countingRT) RoundTrip(ctx context.Context, req, res soap.HasFault) error {
	c.n.Add(1)
	return c.RoundTripper.RoundTrip(ctx, req, res)
}

// The placement lookups of a create (host, its datastores and pool, port
// groups, folder) are made once and reused by the next creates on the host,
// and a datastore the host mounted since is found by a fresh lookup rather
// than refused from the cached list.
func TestCreateReusesPlacementLookups(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	counter := &countingRT{RoundTripper: e.sess.Vim().RoundTripper}
	vc := *e.sess.Vim()
	vc.RoundTripper = counter
	vms := podvm.New(&vc, object.NewDatacenter(&vc, e.sess.Datacenter.Reference()))
	vms.BlankEphemeral = true // no template build among the counted calls
	host := e.DC.Hosts()[0].Name
	spec := func(name, parent string) podvm.Spec {
		return podvm.Spec{Name: name, VCPUs: 1, MemoryMiB: 128,
			NICs:       []podvm.NIC{{Network: "default", PortGroup: "pv-default"}},
			ImageDisks: []string{parent}}
	}
	create := func(s podvm.Spec, p podvm.Placement) int64 {
		t.Helper()
		before := counter.n.Load()
		task, err := vms.StartCreate(ctx, s, p)
		if err != nil {
			t.Fatalf("create %s: %v", s.Name, err)
		}
		calls := counter.n.Load() - before
		if _, err := vms.WaitCreate(ctx, task); err != nil {
			t.Fatalf("create %s: %v", s.Name, err)
		}
		return calls
	}
	place := podvm.Placement{Host: host, Folder: "podvisor/lookups"}
	first := create(spec("pv-lookups-1", imageDisk("app")), place)
	second := create(spec("pv-lookups-2", imageDisk("app")), place)
	t.Logf("vSphere calls to submit a create: first %d, second %d", first, second)
	if second != 1 || first < 6 {
		t.Fatalf("vSphere calls to submit a create: first %d, second %d; want the second to make only CreateVM", first, second)
	}

	// A datastore mounted after the first lookup.
	hs, err := object.NewHostSystem(&vc, e.DC.Hosts()[0].Ref).ConfigManager().DatastoreSystem(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hs.CreateLocalDatastore(ctx, "late-ds", t.TempDir()); err != nil {
		t.Fatal(err)
	}
	parent := "[late-ds] app.vmdk"
	vdm := object.NewVirtualDiskManager(&vc)
	task, err := vdm.CreateVirtualDisk(ctx, parent, e.dco, &types.FileBackedVirtualDiskSpec{
		VirtualDiskSpec: types.VirtualDiskSpec{DiskType: string(types.VirtualDiskTypeThin), AdapterType: string(types.VirtualDiskAdapterTypeLsiLogic)},
		CapacityKb:      1024,
	})
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	create(spec("pv-lookups-3", parent), place)

	// A fault a retry would not fix, on a create that used cached lookups:
	// they may have gone stale (a port group re-created, a host re-added),
	// so the create is made again at once with fresh ones.
	failCreateVM(t, e, simulator.FaultTypeInvalidArgument, 1)
	if calls := create(spec("pv-lookups-5", imageDisk("app")), place); calls < 4 {
		t.Errorf("a create whose cached lookups met a fault made %d calls, want a second try with fresh lookups", calls)
	}
	e.DC.ClearFaults()

	// A datastore the host does not mount is still refused, permanently.
	_, err = vms.StartCreate(ctx, spec("pv-lookups-4", "[nowhere-ds] app.vmdk"), place)
	if err == nil || podvm.IsTransient(err) {
		t.Fatalf("create on an unmounted datastore: %v", err)
	}
}

// The first create on each host finds the host in one listing of every
// host, made once and reused for lookupTTL, not in a search per host:
// a search reads every host's name, so with thousands of hosts each host's
// first create cost as many reads as there are hosts.
func TestHostsAreListedOnceForAllHosts(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vms := podvm.New(e.sess.Vim(), object.NewDatacenter(e.sess.Vim(), e.sess.Datacenter.Reference()))
	vms.BlankEphemeral = true
	hosts := e.DC.Hosts()
	if len(hosts) < 2 {
		t.Fatalf("%d hosts, want two", len(hosts))
	}
	create := func(name, host string) map[string]int64 {
		t.Helper()
		before := e.DC.Calls()
		task, err := vms.StartCreate(ctx, podvm.Spec{Name: name, VCPUs: 1, MemoryMiB: 128,
			NICs:       []podvm.NIC{{Network: "default", PortGroup: "pv-default"}},
			ImageDisks: []string{imageDisk("app")}}, podvm.Placement{Host: host, Folder: "podvisor/hosts"})
		if err != nil {
			t.Fatalf("create %s on %s: %v", name, host, err)
		}
		calls := sim.CallsSince(before, e.DC.Calls())
		if _, err := vms.WaitCreate(ctx, task); err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		return calls
	}
	first := create("pv-hosts-1", hosts[0].Name)
	if first["CreateContainerView"] == 0 {
		t.Fatalf("the first create listed no hosts (calls %v): the test no longer sees the listing", first)
	}
	second := create("pv-hosts-2", hosts[1].Name)
	t.Logf("calls of the first create on a host: first host %v, second host %v", first, second)
	if n := second["CreateContainerView"]; n != 0 {
		t.Errorf("the first create on a second host made %d container views (calls %v), want the listing of the first create reused", n, second)
	}
	// A host the listing does not know (added since) is looked for in a
	// fresh listing, and a name no host has is refused for good.
	_, err := vms.StartCreate(ctx, podvm.Spec{Name: "pv-hosts-3", VCPUs: 1, MemoryMiB: 128,
		NICs:       []podvm.NIC{{Network: "default", PortGroup: "pv-default"}},
		ImageDisks: []string{imageDisk("app")}}, podvm.Placement{Host: "no-such-host", Folder: "podvisor/hosts"})
	if err == nil || podvm.IsTransient(err) || !strings.Contains(err.Error(), "no-such-host") {
		t.Errorf("create on a host no one has: %v, want a permanent not-found naming it", err)
	}
}
