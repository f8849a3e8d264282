package netconfig_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/testenv"
)

// A DNS NetworkService gets a profile with a reserved address on each
// network it serves, a network that does not exist is named in the record,
// and pods attached afterwards are told the address.
func TestNetworkServiceProfilesAndNameservers(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 2}, nil)
	host := e.DC.Hosts()[0].Name
	spec := events.NetworkSpec{CIDR: "10.40.0.0/24", Gateway: "10.40.0.1"}
	e.declareRealized("frontend", spec)

	// A pod attached before any service has no nameserver; the attaches
	// keep that listing while the bucket is unchanged, and a declaration
	// changes it (checked by the pods attached below).
	e.schedule("early", "uid-early", host, "frontend")
	early := testenv.Wait(e.Env, func(p *events.PodNetworkAttached) bool { return p.Name == "early" })
	if ns := early.Attachments[0].Nameservers; len(ns) != 0 {
		t.Fatalf("pod attached before any network service got nameservers %v", ns)
	}

	e.Publish(&events.NetworkServiceDeclared{Service: events.NetworkService{
		APIVersion: events.APIVersion, Kind: events.KindNetworkService, Metadata: events.Meta{Name: "pod-dns"},
		Spec: events.NetworkServiceSpec{Type: events.NetworkServiceDNS, Networks: []string{"frontend", "missing"}},
	}})
	rec := testenv.WaitRecord(e.Env, events.BucketNetServices, "pod-dns", func(r *events.NetworkServiceRecord) bool { return len(r.Profiles) == 1 })
	prof := rec.Profiles[0]
	if rec.Status != events.NetworkServicePartial || !strings.Contains(rec.Message, "spec.networks[1]") || !strings.Contains(rec.Message, "missing") {
		t.Fatalf("record %s %q, want Partial naming spec.networks[1]", rec.Status, rec.Message)
	}
	if !netip.MustParsePrefix(spec.CIDR).Contains(netip.MustParseAddr(prof.Address)) || prof.Address == spec.Gateway ||
		prof.Port != 53 || prof.Domain != events.DNSDomain || prof.PortGroup != "pv-frontend" || prof.PrefixLength != 24 {
		t.Fatalf("profile %+v", prof)
	}

	// Declared again: the same address (idempotent), and the address is
	// never a pod's.
	e.Publish(&events.NetworkServiceDeclared{Service: events.NetworkService{
		Metadata: events.Meta{Name: "pod-dns"}, Spec: events.NetworkServiceSpec{Type: events.NetworkServiceDNS, Networks: []string{"frontend"}},
	}})
	rec = testenv.WaitRecord(e.Env, events.BucketNetServices, "pod-dns", func(r *events.NetworkServiceRecord) bool { return r.Status == events.NetworkServiceReady })
	if rec.Profiles[0].Address != prof.Address {
		t.Fatalf("address moved from %s to %s on a repeated declaration", prof.Address, rec.Profiles[0].Address)
	}
	for _, name := range []string{"a", "b", "c"} {
		e.schedule(name, "uid-"+name, host, "frontend")
	}
	attached := testenv.WaitN(e.Env, 3, func(p *events.PodNetworkAttached) bool { return p.Name != "early" })
	for _, p := range attached {
		att := p.Attachments[0]
		if att.IP == prof.Address || !slices.Equal(att.Nameservers, []string{prof.Address}) {
			t.Fatalf("pod %s attached %+v, want nameserver %s and another address", p.Name, att, prof.Address)
		}
	}
	e.waitRecord("frontend", func(r *events.NetworkRecord) bool { return r.IPsUsed == 5 })
}

// Pass-through data: a namespace must be registered first; values are
// stored per object and removed again.
func TestNetworkDataNeedsARegisteredNamespace(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 1}, nil)
	scope := events.NetworkDataScope{Kind: events.NetworkDataSwitch, Name: "pv-dvs"}
	e.Publish(&events.NetworkDataSetRequested{
		Scope: scope, Namespace: "fw.acme.example", Key: "profile", Value: "strict"})
	e.WaitDeadLetter(netconfig.Name, "namespace fw.acme.example: namespace not registered")

	e.Publish(&events.NetworkDataRegisterRequested{Namespace: "fw.acme.example", Owner: "acme"})
	testenv.WaitRecord(e.Env, events.BucketNetData, events.NetworkDataNamespacesKey, func(r *events.NetworkDataNamespaces) bool {
		return r.Namespaces["fw.acme.example"].Owner == "acme"
	})
	e.Publish(&events.NetworkDataSetRequested{
		Scope: scope, Namespace: "fw.acme.example", Key: "profile", Value: "strict"})
	testenv.WaitRecord(e.Env, events.BucketNetData, events.NetworkDataKey(scope), func(r *events.NetworkDataRecord) bool {
		return r.Values["fw.acme.example/profile"] == "strict" && r.Scope == scope
	})
	e.Publish(&events.NetworkDataRemoveRequested{
		Scope: scope, Namespace: "fw.acme.example", Key: "profile"})
	testenv.WaitRecord(e.Env, events.BucketNetData, events.NetworkDataKey(scope), func(r *events.NetworkDataRecord) bool { return len(r.Values) == 0 })
}

// A service declared before the networks it names (one manifest holds
// both, and the service's event is handled first) gets its profiles when
// each network gets its version, without being declared again.
func TestNetworkServiceDeclaredBeforeItsNetwork(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 2}, nil)
	e.Publish(&events.NetworkServiceDeclared{Service: events.NetworkService{
		APIVersion: events.APIVersion, Kind: events.KindNetworkService, Metadata: events.Meta{Name: "early-dns"},
		Spec: events.NetworkServiceSpec{Type: events.NetworkServiceDNS, Networks: []string{"later", "later2"}},
	}})
	// Nothing served yet: Pending, not Partial, with the reason.
	rec := testenv.WaitRecord(e.Env, events.BucketNetServices, "early-dns", func(r *events.NetworkServiceRecord) bool { return r.Status != "" })
	if rec.Status != events.NetworkServicePending || rec.Reason != netconfig.ReasonServiceNetworkMissing || len(rec.Profiles) != 0 ||
		!strings.Contains(rec.Message, `spec.networks[0]: network "later"`) || !strings.Contains(rec.Message, `spec.networks[1]: network "later2"`) {
		t.Fatalf("record %s %s %q with %d profiles, want Pending NetworkMissing naming both networks", rec.Status, rec.Reason, rec.Message, len(rec.Profiles))
	}
	e.declare("later", events.NetworkSpec{CIDR: "10.41.0.0/24", Gateway: "10.41.0.1"})
	testenv.WaitRecord(e.Env, events.BucketNetServices, "early-dns", func(r *events.NetworkServiceRecord) bool {
		return r.Status == events.NetworkServicePartial && len(r.Profiles) == 1 && r.Profiles[0].Network == "later"
	})
	e.declare("later2", events.NetworkSpec{CIDR: "10.42.0.0/24", Gateway: "10.42.0.1"})
	rec = testenv.WaitRecord(e.Env, events.BucketNetServices, "early-dns", func(r *events.NetworkServiceRecord) bool {
		return r.Status == events.NetworkServiceReady
	})
	if len(rec.Profiles) != 2 || rec.Profiles[0].Network != "later" || rec.Profiles[1].Network != "later2" {
		t.Fatalf("profiles %+v, want one on each network", rec.Profiles)
	}
}

// A service on a network whose pool is full records NoAddress, not
// NetworkMissing. When several networks fail, the reason is the first
// one's in spec order and the message names each network's problem.
func TestNetworkServiceOnAFullPool(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 1}, nil)
	host := e.DC.Hosts()[0].Name
	// A /30 with its gateway has one address to hand out: the pod takes it.
	e.declareRealized("tiny", events.NetworkSpec{CIDR: "10.43.0.0/30", Gateway: "10.43.0.1"})
	e.schedule("only", "uid-only", host, "tiny")
	testenv.Wait(e.Env, func(p *events.PodNetworkAttached) bool { return p.Name == "only" })

	for _, tt := range []struct {
		service    string
		networks   []string
		wantReason string
	}{
		{"full", []string{"tiny"}, netconfig.ReasonServiceNoAddress},
		{"full-first", []string{"tiny", "absent"}, netconfig.ReasonServiceNoAddress},
		{"missing-first", []string{"absent", "tiny"}, netconfig.ReasonServiceNetworkMissing},
	} {
		t.Run(tt.service, func(t *testing.T) {
			e.Publish(&events.NetworkServiceDeclared{Service: events.NetworkService{
				APIVersion: events.APIVersion, Kind: events.KindNetworkService, Metadata: events.Meta{Name: tt.service},
				Spec: events.NetworkServiceSpec{Type: events.NetworkServiceDNS, Networks: tt.networks},
			}})
			rec := testenv.WaitRecord(e.Env, events.BucketNetServices, tt.service, func(r *events.NetworkServiceRecord) bool { return r.Status != "" })
			if rec.Status != events.NetworkServicePending || rec.Reason != tt.wantReason || len(rec.Profiles) != 0 {
				t.Fatalf("record %s %s %q with %d profiles, want Pending %s", rec.Status, rec.Reason, rec.Message, len(rec.Profiles), tt.wantReason)
			}
			for i, n := range tt.networks {
				want := fmt.Sprintf(`spec.networks[%d]: network "absent"`, i)
				if n == "tiny" {
					want = fmt.Sprintf("spec.networks[%d]: network tiny: all 1 usable addresses", i)
				}
				if !strings.Contains(rec.Message, want) {
					t.Errorf("message %q does not contain %q", rec.Message, want)
				}
			}
		})
	}
}
