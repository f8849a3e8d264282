package netconfig_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig"
	"github.com/podvisor/podvisor/services/netconfig/ipam"
	"github.com/podvisor/podvisor/shared/record"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// fullPool declares a /29 with a gateway (5 addresses) and fills it with
// pods p0..p4; it returns their addresses by pod name.
func fullPool(e *env, network, cidr, gateway string) map[string]string {
	e.T.Helper()
	host := e.HostNames("")[0]
	e.declareRealized(network, events.NetworkSpec{CIDR: cidr, Gateway: gateway})
	names := []string{"p0", "p1", "p2", "p3", "p4"}
	for _, n := range names {
		e.schedule(n, "uid-"+n, host, network)
	}
	ips := map[string]string{}
	for _, p := range testenv.WaitN(e.Env, len(names), func(p *events.PodNetworkAttached) bool { return slices.Contains(names, p.Name) }) {
		ips[p.Name] = p.Attachments[0].IP
	}
	return ips
}

// declareWaiting declares a DNS service on network and waits for it to be
// recorded Pending with NoAddress.
func (e *env) declareWaiting(service, network string) {
	e.T.Helper()
	e.Publish(&events.NetworkServiceDeclared{Service: events.NetworkService{
		APIVersion: events.APIVersion, Kind: events.KindNetworkService, Metadata: events.Meta{Name: service},
		Spec: events.NetworkServiceSpec{Type: events.NetworkServiceDNS, Networks: []string{network}},
	}})
	rec := testenv.WaitRecord(e.Env, events.BucketNetServices, service, func(r *events.NetworkServiceRecord) bool { return r.Status != "" })
	if rec.Status != events.NetworkServicePending || rec.Reason != netconfig.ReasonServiceNoAddress {
		e.T.Fatalf("service %s recorded %s %s %q, want Pending NoAddress", service, rec.Status, rec.Reason, rec.Message)
	}
}

// waitServed waits for a service to be recorded Ready on network with the
// address want, its NoAddress reason and message cleared.
func (e *env) waitServed(service, network, want string) {
	e.T.Helper()
	rec := testenv.WaitRecord(e.Env, events.BucketNetServices, service, func(r *events.NetworkServiceRecord) bool { return len(r.Profiles) > 0 })
	p, _ := rec.Profile(network)
	if rec.Status != events.NetworkServiceReady || rec.Reason != "" || rec.Message != "" || p.Address != want || p.Port != 53 || p.PortGroup != events.PortGroupName(network) {
		e.T.Fatalf("service %s recorded %s %s %q with %+v, want Ready on %s at %s", service, rec.Status, rec.Reason, rec.Message, rec.Profiles, network, want)
	}
}

// serviceAddresses lists the addresses IPAM holds for network services on
// a network, by service owner uid.
func serviceAddresses(e *env, network string) map[string][]string {
	e.T.Helper()
	allocs, err := ipam.New(e.KV(events.BucketIPAM), e.Bus.JetStream()).Allocations(context.Background(), network)
	if err != nil {
		e.T.Fatal(err)
	}
	out := map[string][]string{}
	for _, a := range allocs {
		if a.Namespace == netconfig.ServiceNamespace {
			out[a.UID] = append(out[a.UID], a.IP)
		}
	}
	return out
}

// Services waiting for an address on a full pool get the addresses pods
// free, oldest declaration first, and their records say so.
func TestNetworkServiceWaitingGetsAFreedAddress(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 1}, nil)
	ips := fullPool(e, "small", "10.44.0.0/29", "10.44.0.1")
	// Declared in the order opposite to their names: the order of the
	// keys is not the order of the declarations.
	e.declareWaiting("zeta-dns", "small")
	e.declareWaiting("alpha-dns", "small")

	e.Publish(&events.PodDeleted{PodRef: events.PodRef{Namespace: "default", Name: "p2", UID: "uid-p2"},
		IPs: []events.NetworkIP{{Network: "small", IP: ips["p2"]}}})
	e.waitServed("zeta-dns", "small", ips["p2"])
	if rec := testenv.MustGet[events.NetworkServiceRecord](e.Env, events.BucketNetServices, "alpha-dns"); rec.Reason != netconfig.ReasonServiceNoAddress || len(rec.Profiles) != 0 {
		t.Fatalf("alpha-dns recorded %s %s with %+v, want NoAddress: one address was freed and the older service took it", rec.Status, rec.Reason, rec.Profiles)
	}

	e.Publish(&events.PodDeleted{PodRef: events.PodRef{Namespace: "default", Name: "p4", UID: "uid-p4"},
		IPs: []events.NetworkIP{{Network: "small", IP: ips["p4"]}}})
	e.waitServed("alpha-dns", "small", ips["p4"])
	e.waitRecord("small", func(r *events.NetworkRecord) bool { return r.IPsUsed == 5 })
	if got := serviceAddresses(e, "small"); len(got["service-zeta-dns"]) != 1 || len(got["service-alpha-dns"]) != 1 {
		t.Fatalf("service addresses in IPAM %v, want one each", got)
	}
}

// An address freed where no pass over the waiting services followed (by a
// replica that stopped right after, or straight in IPAM) is given to them
// by the periodic resync; two replicas resyncing at once give each service
// one address.
func TestNetworkServiceWaitingIsServedByResync(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 1}, nil)
	ips := fullPool(e, "small", "10.45.0.0/29", "10.45.0.1")
	e.declareWaiting("zeta-dns", "small")
	e.declareWaiting("alpha-dns", "small")
	// No replica runs from here on: only the resyncs below can serve.
	e.stop()

	ctx := context.Background()
	alloc := ipam.New(e.KV(events.BucketIPAM), e.Bus.JetStream())
	for _, pod := range []string{"p1", "p3", "p4"} {
		if ip, err := alloc.Release(ctx, "small", "uid-"+pod); err != nil || ip != ips[pod] {
			t.Fatalf("release %s: %q, %v", pod, ip, err)
		}
	}

	// Two replicas resync at the same moment.
	sess := simtest.Session(t, e.DC)
	other, err := netconfig.NewForTest(netconfig.DefaultConfig(), e.Bus, sess.Vim(), sess.Datacenter, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, svc := range []*netconfig.Service{e.svc, other} {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = svc.Resync(ctx) }()
	}
	wg.Wait()
	// A replica that lost a race for the same service's address may
	// report it, and nothing else; the other one served it, and a later
	// pass is clean.
	if errs[0] != nil && errs[1] != nil {
		t.Fatalf("both resyncs failed: %v; %v", errs[0], errs[1])
	}
	for _, err := range errs {
		if err != nil && !lostRace(err) {
			t.Fatalf("resync failed with %v, want only a conflict or an allocation under way", err)
		}
	}
	if err := e.svc.Resync(ctx); err != nil {
		t.Fatal(err)
	}

	freed := []string{ips["p1"], ips["p3"], ips["p4"]}
	var served []string
	for _, name := range []string{"zeta-dns", "alpha-dns"} {
		rec := testenv.MustGet[events.NetworkServiceRecord](e.Env, events.BucketNetServices, name)
		p, _ := rec.Profile("small")
		if !slices.Contains(freed, p.Address) || slices.Contains(served, p.Address) {
			t.Fatalf("%s recorded %+v, want its own one of the freed addresses %v", name, rec.Profiles, freed)
		}
		served = append(served, p.Address)
		e.waitServed(name, "small", p.Address)
	}
	got := serviceAddresses(e, "small")
	if len(got) != 2 || len(got["service-zeta-dns"]) != 1 || len(got["service-alpha-dns"]) != 1 {
		t.Fatalf("service addresses in IPAM %v, want exactly one each", got)
	}
	e.waitRecord("small", func(r *events.NetworkRecord) bool { return r.IPsUsed == 4 })
}

// lostRace reports whether every error a resync joined is a write lost to
// another replica or its allocation of the same address under way.
func lostRace(err error) bool {
	errs := []error{err}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		errs = joined.Unwrap()
	}
	for _, e := range errs {
		if !record.Conflict(e) && !errors.Is(e, record.ErrConflict) && !errors.Is(e, ipam.ErrAllocationUnderWay) {
			return false
		}
	}
	return true
}

// A deleted service's address goes to the service waiting for one, and the
// deleted one's record stays gone.
func TestNetworkServiceWaitingGetsADeletedServicesAddress(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 1}, nil)
	// A /30 with its gateway has one address to hand out.
	e.declareRealized("tiny", events.NetworkSpec{CIDR: "10.46.0.0/30", Gateway: "10.46.0.1"})
	e.Publish(&events.NetworkServiceDeclared{Service: events.NetworkService{
		APIVersion: events.APIVersion, Kind: events.KindNetworkService, Metadata: events.Meta{Name: "holder-dns"},
		Spec: events.NetworkServiceSpec{Type: events.NetworkServiceDNS, Networks: []string{"tiny"}},
	}})
	e.waitServed("holder-dns", "tiny", "10.46.0.2")
	e.declareWaiting("waiting-dns", "tiny")

	e.Publish(&events.NetworkServiceDeleteRequested{Name: "holder-dns"})
	e.waitServed("waiting-dns", "tiny", "10.46.0.2")
	e.Eventually("holder-dns's record to be deleted", func() bool {
		return testenv.Get[events.NetworkServiceRecord](e.Env, events.BucketNetServices, "holder-dns") == nil
	})
	if got := serviceAddresses(e, "tiny"); len(got) != 1 || len(got["service-waiting-dns"]) != 1 {
		t.Fatalf("service addresses in IPAM %v, want waiting-dns's alone", got)
	}
}
