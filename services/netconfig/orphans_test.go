package netconfig_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig"
	"github.com/podvisor/podvisor/services/netconfig/ipam"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/testenv"
)

// TestAddressWhoseOwnerIsGoneIsReleased: an address outlives its pod when
// the pod's release ran before the address was taken (a fault run once
// left one so). The orphan sweep frees it once its owner has been missing
// for two sweeps an interval apart, and leaves alone the addresses of a
// live pod, of a native VM, of a declared network service, of a pod whose record
// shows up again between the sweeps, and of a pod missing for less than an
// interval.
func TestAddressWhoseOwnerIsGoneIsReleased(t *testing.T) {
	const interval = time.Hour // the loop never ticks: the test sweeps
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 1}, func(c *netconfig.Config) { c.OrphanSweepInterval = interval })
	host := e.HostNames("")[0]
	spec := events.NetworkSpec{VLAN: 7, CIDR: "10.7.0.0/24"}
	e.declareRealized("strays", spec)
	ip := map[string]string{}
	for _, name := range []string{"live", "gone", "back"} {
		e.schedule(name, "uid-"+name, host, "strays")
		att := testenv.Wait(e.Env, func(p *events.PodNetworkAttached) bool { return p.UID == "uid-"+name })
		ip[name] = att.Attachments[0].IP
	}
	ctx := context.Background()
	pool, err := ipam.PoolOf("strays", spec)
	if err != nil {
		t.Fatal(err)
	}
	alloc := ipam.New(e.KV(events.BucketIPAM), e.Bus.JetStream())
	vm, err := alloc.Allocate(ctx, pool, ipam.Owner{Namespace: "default", Name: "db", UID: "uid-vm", Host: host})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Put(e.Env, events.BucketVMs, events.VMRecordKey("default", "db"), &events.VMRecord{Namespace: "default", Name: "db", UID: "uid-vm"})
	e.Publish(&events.NetworkServiceDeclared{Service: events.NetworkService{
		APIVersion: events.APIVersion, Kind: events.KindNetworkService, Metadata: events.Meta{Name: "dns"},
		Spec: events.NetworkServiceSpec{Type: events.NetworkServiceDNS, Networks: []string{"strays"}},
	}})
	service, _ := testenv.WaitRecord(e.Env, events.BucketNetServices, "dns", func(r *events.NetworkServiceRecord) bool { return len(r.Profiles) > 0 }).Profile("strays")
	// Their releases lost: the records go, no pod.deleted.
	for _, name := range []string{"gone", "back"} {
		if err := e.KV(events.BucketPods).Delete(ctx, events.PodRecordKey("default", name)); err != nil {
			t.Fatal(err)
		}
	}

	now := time.Now().Add(interval + time.Minute) // every address older than an interval
	if got, err := e.svc.SweepOrphans(ctx, now); err != nil || len(got) != 0 {
		t.Fatalf("first sweep released %v (%v); an owner missing once is not gone yet", got, err)
	}
	// Between the sweeps "back"'s record shows up again (a read of a
	// lagging NATS node had missed it), and a pod missing only since now
	// ("late") appears on the second sweep for the first time.
	e.PutPodRecord(testenv.PendingRecord(podAccepted("back", "uid-back", []string{"strays"})))
	e.schedule("late", "uid-late", host, "strays")
	testenv.Wait(e.Env, func(p *events.PodNetworkAttached) bool { return p.UID == "uid-late" })
	if err := e.KV(events.BucketPods).Delete(ctx, events.PodRecordKey("default", "late")); err != nil {
		t.Fatal(err)
	}
	got, err := e.svc.SweepOrphans(ctx, now.Add(interval))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"strays/" + ip["gone"]}; !slices.Equal(got, want) {
		t.Fatalf("second sweep released %v, want %v (live %s, back %s, VM %s, service %s kept)", got, want, ip["live"], ip["back"], vm.IP, service.Address)
	}
	left, err := alloc.Allocations(ctx, "strays")
	if err != nil {
		t.Fatal(err)
	}
	var owners []string
	for _, a := range left {
		owners = append(owners, a.UID)
	}
	slices.Sort(owners)
	if want := []string{"service-dns", "uid-back", "uid-late", "uid-live", "uid-vm"}; !slices.Equal(owners, want) {
		t.Errorf("addresses left to %v, want %v", owners, want)
	}
	e.waitRecord("strays", func(r *events.NetworkRecord) bool { return r.IPsUsed == len(owners) })
}
