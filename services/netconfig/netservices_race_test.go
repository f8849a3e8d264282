package netconfig

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// waitingRetry sets up a service retry half done: network-config realizes
// networks "tiny" (a /30 with its gateway: one address) and "spare", then
// stops, and the test plays its handlers from there, so that it alone
// orders their steps. "late-dns" is declared on tiny while "holder-dns"
// holds its address, so it is recorded waiting; the holder is deleted and
// a retry (serveWaiting) has just taken the freed address for late-dns,
// before writing its record. It returns the retry's view of the service.
func waitingRetry(t *testing.T) (*Service, events.NetworkService) {
	t.Helper()
	te := testenv.Start(t, testenv.Datacenter(sim.Config{Clusters: 1, HostsPerCluster: 1}))
	sess := simtest.Session(t, te.DC)
	cfg := DefaultConfig()
	cfg.ProbeWindow, cfg.ProbeInterval, cfg.ResyncInterval = 250*time.Millisecond, 25*time.Millisecond, 0
	s, err := newService(cfg, te.Bus, sess.Vim(), sess.Datacenter, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := te.Run(Name, s.Run)
	for name, spec := range map[string]events.NetworkSpec{
		"tiny":  {CIDR: "10.47.0.0/30", Gateway: "10.47.0.1"},
		"spare": {CIDR: "10.48.0.0/29", Gateway: "10.48.0.1"},
	} {
		te.Publish(&events.NetworkDeclared{Network: events.Network{
			APIVersion: events.APIVersion, Kind: events.KindNetwork, Metadata: events.Meta{Name: name}, Spec: spec,
		}})
		testenv.Wait(te, func(p *events.NetworkRealized) bool { return p.Name == name })
	}
	stop()

	ctx := context.Background()
	if err := s.configureService(ctx, dnsService("holder-dns", "tiny"), true); err != nil {
		t.Fatal(err)
	}
	late := dnsService("late-dns", "tiny")
	if err := s.configureService(ctx, late, true); err != nil {
		t.Fatal(err)
	}
	if rec := serviceRecord(t, s, "late-dns"); rec == nil || rec.Reason != ReasonServiceNoAddress {
		t.Fatalf("late-dns recorded %+v, want it waiting with NoAddress", rec)
	}
	if err := s.onServiceDeleteRequested(ctx, nil, &events.NetworkServiceDeleteRequested{Name: "holder-dns"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.profile(ctx, late, "tiny"); err != nil {
		t.Fatal(err)
	}
	if got := serviceIPs(t, s, "tiny"); !slices.Equal(got, []string{"service-late-dns 10.47.0.2"}) {
		t.Fatalf("service addresses on tiny %v, want late-dns's alone", got)
	}
	return s, late
}

func dnsService(name string, networks ...string) events.NetworkService {
	return events.NetworkService{APIVersion: events.APIVersion, Kind: events.KindNetworkService, Metadata: events.Meta{Name: name},
		Spec: events.NetworkServiceSpec{Type: events.NetworkServiceDNS, Networks: networks}}
}

func serviceRecord(t *testing.T, s *Service, name string) *events.NetworkServiceRecord {
	t.Helper()
	rec, _, err := s.services.Get(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// serviceIPs lists the network services' addresses on a network as
// "owner-uid ip", sorted.
func serviceIPs(t *testing.T, s *Service, network string) []string {
	t.Helper()
	allocs, err := s.ipam.Allocations(context.Background(), network)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range allocs {
		if a.Namespace == ServiceNamespace {
			out = append(out, a.UID+" "+a.IP)
		}
	}
	slices.Sort(out)
	return out
}

// A service deleted in the middle of a retry. The delete comes after the
// retry's allocation: it gives back the address although the record has
// no profile for it (the retry could as well have failed before writing
// it). The retry then goes on to its record write, taking the address
// again on the way: it records nothing and gives the address back.
func TestNetworkServiceDeletedDuringARetryKeepsNoAddress(t *testing.T) {
	s, late := waitingRetry(t)
	ctx := context.Background()
	gone := func(after string) {
		t.Helper()
		if rec := serviceRecord(t, s, "late-dns"); rec != nil {
			t.Fatalf("late-dns recorded after %s: %+v", after, rec)
		}
		if got := serviceIPs(t, s, "tiny"); len(got) != 0 {
			t.Fatalf("service addresses on tiny %v after %s, want none", got, after)
		}
	}
	if err := s.onServiceDeleteRequested(ctx, nil, &events.NetworkServiceDeleteRequested{Name: "late-dns"}); err != nil {
		t.Fatal(err)
	}
	gone("the delete")
	if err := s.configureService(ctx, late, false); err != nil {
		t.Fatalf("retry after the delete: %v, want nil (nothing to retry)", err)
	}
	gone("the retry")
}

// The service is declared anew without the network between the retry's
// allocation and its record write: the retry leaves the new record as it
// is and gives the address back.
func TestNetworkServiceRetryRacingADeclarationGivesTheAddressBack(t *testing.T) {
	s, late := waitingRetry(t)
	ctx := context.Background()
	if err := s.configureService(ctx, dnsService("late-dns", "spare"), true); err != nil {
		t.Fatal(err)
	}
	_, rev, err := s.services.Get(ctx, "late-dns")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.configureService(ctx, late, false); !errors.Is(err, errServiceMoved) {
		t.Fatalf("retry after a new declaration: %v, want errServiceMoved", err)
	}
	rec, after, err := s.services.Get(ctx, "late-dns")
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := rec.Profile("spare"); after != rev || !slices.Equal(rec.Spec.Networks, []string{"spare"}) || !ok || rec.Status != events.NetworkServiceReady {
		t.Fatalf("record at revision %d after the retry (%d before): %+v, want the new declaration's untouched", after, rev, rec)
	} else if got := serviceIPs(t, s, "spare"); !slices.Equal(got, []string{"service-late-dns " + p.Address}) {
		t.Fatalf("service addresses on spare %v, want late-dns's %s", got, p.Address)
	}
	if got := serviceIPs(t, s, "tiny"); len(got) != 0 {
		t.Fatalf("service addresses on tiny %v after the retry, want none", got)
	}
}

// A retry took the address on tiny and failed before recording it; the
// service is then declared anew without tiny. The declaration gives that
// address back although the record it replaces has no profile on tiny:
// no later delete names tiny, and the orphan sweep keeps an address whose
// service's record names its network.
func TestNetworkServiceDeclaredWithoutANetworkGivesItsUnrecordedAddressBack(t *testing.T) {
	s, _ := waitingRetry(t)
	ctx := context.Background()
	if err := s.configureService(ctx, dnsService("late-dns", "spare"), true); err != nil {
		t.Fatal(err)
	}
	if got := serviceIPs(t, s, "tiny"); len(got) != 0 {
		t.Fatalf("service addresses on tiny %v after the declaration without it, want none", got)
	}
	if err := s.onServiceDeleteRequested(ctx, nil, &events.NetworkServiceDeleteRequested{Name: "late-dns"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"tiny", "spare"} {
		if got := serviceIPs(t, s, n); len(got) != 0 {
			t.Fatalf("service addresses on %s %v after the delete, want none", n, got)
		}
	}
}

// The orphan sweep frees a network service's address whose record is gone
// or no longer names the address's network, on two sightings an interval
// apart, as it frees a pod's. late-dns's retry takes the address again
// right after the delete gave it back and fails its record write, and the
// delete removes the record; moved-dns holds an address on spare, which
// its record does not name. Kept: late-dns's address while its record
// still names tiny (waiting, no profile yet), and kept-dns's on spare.
func TestOrphanSweepReleasesAServiceAddressWithoutItsRecord(t *testing.T) {
	s, late := waitingRetry(t)
	ctx := context.Background()
	interval := s.cfg.OrphanSweepInterval
	if err := s.configureService(ctx, dnsService("kept-dns", "spare"), true); err != nil {
		t.Fatal(err)
	}
	moved := dnsService("moved-dns", "tiny") // tiny is full: it waits there
	if err := s.configureService(ctx, moved, true); err != nil {
		t.Fatal(err)
	}
	if _, err := s.profile(ctx, moved, "spare"); err != nil {
		t.Fatal(err)
	}
	sweep := func(at time.Time, want ...string) {
		t.Helper()
		got, err := s.SweepOrphans(ctx, at)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Sort(got); !slices.Equal(got, want) {
			t.Fatalf("sweep at +%s released %v, want %v", at.Sub(time.Now()).Round(time.Minute), got, want)
		}
	}
	movedIP := func() string {
		for _, a := range serviceIPs(t, s, "spare") {
			if ip, ok := strings.CutPrefix(a, "service-moved-dns "); ok {
				return ip
			}
		}
		t.Fatal("moved-dns holds no address on spare")
		return ""
	}()

	first := time.Now().Add(interval + time.Minute) // every address older than an interval
	sweep(first)
	if err := s.onServiceDeleteRequested(ctx, nil, &events.NetworkServiceDeleteRequested{Name: "late-dns"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.profile(ctx, late, "tiny"); err != nil {
		t.Fatal(err)
	}
	if got := serviceIPs(t, s, "tiny"); !slices.Equal(got, []string{"service-late-dns 10.47.0.2"}) || serviceRecord(t, s, "late-dns") != nil {
		t.Fatalf("service addresses on tiny %v, want late-dns's held without its record", got)
	}
	// late-dns's record is missing for the first time; moved-dns's
	// record has not named spare since the first sweep.
	sweep(first.Add(interval), "spare/"+movedIP)
	sweep(first.Add(2*interval), "tiny/10.47.0.2")
	if got := serviceIPs(t, s, "tiny"); len(got) != 0 {
		t.Fatalf("service addresses on tiny %v, want none", got)
	}
	if got := serviceIPs(t, s, "spare"); len(got) != 1 || !strings.HasPrefix(got[0], "service-kept-dns ") {
		t.Fatalf("service addresses on spare %v, want kept-dns's alone", got)
	}
}
