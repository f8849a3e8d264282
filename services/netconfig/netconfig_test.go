package netconfig_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/simulator"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig"
	"github.com/podvisor/podvisor/services/netconfig/fabric"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// TestParallelPushToSixteenHosts declares a network on every host of a 2×8
// datacenter and checks, through the vSphere API, that all 16 carry its port
// group, and that every host reported ready.
func TestParallelPushToSixteenHosts(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 2, HostsPerCluster: 8}, nil)
	start := time.Now()
	e.declare("default", netconfig.DefaultNetwork())
	r := testenv.Wait(e.Env, func(p *events.NetworkRealized) bool { return p.Name == "default" })
	elapsed := time.Since(start)
	if len(r.Ready) != 16 || len(r.Failed) != 0 {
		t.Fatalf("realized on %d hosts (%d failed), want 16 ready", len(r.Ready), len(r.Failed))
	}
	t.Logf("pushed to 16 hosts in %s (declare → network.realized)", elapsed)
	if got := e.portGroup("pv-default"); !got.Exists || !slices.Equal(got.Hosts, e.HostNames("")) {
		t.Fatalf("vSphere: pv-default on %v, want every host %v", got.Hosts, e.HostNames(""))
	}
	if n := len(testenv.WaitN(e.Env, 16, func(p *events.NetworkHostReady) bool { return p.Name == "default" })); n != 16 {
		t.Fatalf("%d network.host.ready events, want 16", n)
	}
	rec := e.record("default")
	if rec.Status != events.NetworkStatusReady || rec.Version != 1 || rec.HostsReady != 16 || rec.Switch != "pv-dvs" {
		t.Fatalf("record = status %s version %d ready %d switch %s", rec.Status, rec.Version, rec.HostsReady, rec.Switch)
	}

	// The same declaration again (what `podvisor up` does at every start)
	// stores no new version and publishes no new realization.
	realized := e.Events.Count(events.TypeNetworkRealized)
	e.WaitHandled(events.StreamNetworks, netconfig.Name+"-"+events.StreamNetworks, e.declare("default", netconfig.DefaultNetwork()))
	if rec := e.record("default"); rec.Version != 1 || len(rec.History) != 1 {
		t.Fatalf("re-declaring the same spec gave version %d with %d history entries, want 1 and 1", rec.Version, len(rec.History))
	}
	if n := e.Events.Count(events.TypeNetworkRealized); n != realized {
		t.Fatalf("re-declaring the same spec published %d more network.realized", n-realized)
	}
}

// TestScopedNetworkAndAttach is the acceptance path: frontend scoped to the
// first cluster appears on exactly that cluster's hosts; 12 pods scheduled
// there concurrently get unique addresses in the CIDR; a pod scheduled
// outside the scope is refused; deleting the network while pods use it is
// refused, and works once they are gone.
func TestScopedNetworkAndAttach(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 2, HostsPerCluster: 4}, nil)
	cluster1 := e.HostNames("cluster-1")
	cluster2 := e.HostNames("cluster-2")
	spec := events.NetworkSpec{VLAN: 120, CIDR: "10.20.0.0/24", Gateway: "10.20.0.1", Scope: events.NetworkScope{Clusters: []string{"cluster-1"}}}
	e.declareRealized("frontend", spec)

	pg := e.portGroup("pv-frontend")
	if !pg.Exists || pg.VLAN != 120 || !slices.Equal(pg.Hosts, cluster1) {
		t.Fatalf("vSphere: pv-frontend vlan %d on %v, want vlan 120 on exactly %v", pg.VLAN, pg.Hosts, cluster1)
	}
	a := e.availability("frontend")
	if !slices.Equal(a.Hosts, cluster1) || !slices.Equal(a.Scope, cluster1) || a.Version != 1 {
		t.Fatalf("net-hosts = %+v, want hosts and scope %v at version 1", a, cluster1)
	}

	// 12 pods scheduled at once over the cluster's hosts.
	const pods = 12
	for i := range pods {
		e.schedule(fmt.Sprintf("web-%d", i), fmt.Sprintf("uid-web-%d", i), cluster1[i%len(cluster1)], "frontend")
	}
	attached := testenv.WaitN[events.PodNetworkAttached](e.Env, pods, nil)
	prefix := netip.MustParsePrefix(spec.CIDR)
	ips := map[string]string{}
	for _, p := range attached {
		att := p.Attachments[0]
		ip := netip.MustParseAddr(att.IP)
		if !prefix.Contains(ip) || att.IP == spec.Gateway || att.PortGroup != "pv-frontend" || att.PrefixLength != 24 {
			t.Fatalf("pod %s got %+v, want an address of %s other than the gateway on pv-frontend", p.Name, att, spec.CIDR)
		}
		if !slices.Contains(cluster1, p.Host) {
			t.Fatalf("pod %s attached on %s, outside cluster-1", p.Name, p.Host)
		}
		if other, dup := ips[att.IP]; dup && other != p.Name {
			t.Fatalf("pods %s and %s share %s", other, p.Name, att.IP)
		}
		ips[att.IP] = p.Name
	}
	if len(ips) != pods {
		t.Fatalf("%d distinct addresses for %d pods", len(ips), pods)
	}
	e.waitRecord("frontend", func(r *events.NetworkRecord) bool { return r.IPsUsed == pods })

	// A pod scheduled on the other cluster is refused with the reason.
	e.schedule("stray", "uid-stray", cluster2[0], "frontend")
	f := testenv.Wait(e.Env, func(p *events.PodNetworkFailed) bool { return p.Name == "stray" })
	if f.Reason != netconfig.ReasonNotInScope {
		t.Fatalf("stray pod failed with %s (%s), want NotInScope", f.Reason, f.Message)
	}

	// Delete while in use: refused, port group kept.
	e.Publish(&events.NetworkDeleteRequested{Name: "frontend"})
	rej := testenv.Wait(e.Env, func(p *events.NetworkDeleteRejected) bool { return p.Name == "frontend" })
	if rej.Reason != netconfig.ReasonInUse || len(rej.Pods) != pods {
		t.Fatalf("delete rejected with %s and %d pods, want InUse and %d", rej.Reason, len(rej.Pods), pods)
	}
	if rec := e.record("frontend"); rec.Reason != netconfig.ReasonInUse || !strings.Contains(rec.Message, "delete refused") {
		t.Fatalf("record after refused delete: %s %q", rec.Reason, rec.Message)
	}
	if !e.portGroup("pv-frontend").Exists {
		t.Fatal("port group removed although the delete was refused")
	}

	// Pods go away: addresses are freed; then the delete goes through and
	// the hosts are cleaned.
	for _, p := range attached {
		e.Publish(&events.PodDeleted{
			PodRef: events.PodRef{Namespace: p.Namespace, Name: p.Name, UID: p.UID}, Host: p.Host,
			IPs: []events.NetworkIP{{Network: "frontend", IP: p.Attachments[0].IP}},
		})
	}
	e.waitRecord("frontend", func(r *events.NetworkRecord) bool { return r.IPsUsed == 0 })
	e.Publish(&events.NetworkDeleteRequested{Name: "frontend"})
	testenv.Wait(e.Env, func(p *events.NetworkDeleted) bool { return p.Name == "frontend" })
	if pg := e.portGroup("pv-frontend"); pg.Exists {
		t.Fatal("vSphere: pv-frontend still exists after network.deleted")
	}
}

// TestAddressExhaustion: a /29 with a gateway has 5 addresses; the sixth
// pod fails with AddressesExhausted, and a freed address is reused.
func TestAddressExhaustion(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 2}, nil)
	hosts := e.HostNames("")
	e.declareRealized("tiny", events.NetworkSpec{VLAN: 30, CIDR: "10.30.0.0/29", Gateway: "10.30.0.1"})
	for i := range 5 {
		e.schedule(fmt.Sprintf("p%d", i), fmt.Sprintf("uid-p%d", i), hosts[i%2], "tiny")
	}
	testenv.WaitN[events.PodNetworkAttached](e.Env, 5, nil)
	e.schedule("p5", "uid-p5", hosts[0], "tiny")
	f := testenv.Wait(e.Env, func(p *events.PodNetworkFailed) bool { return p.Name == "p5" })
	if f.Reason != netconfig.ReasonAddressesExhausted || !strings.Contains(f.Message, "10.30.0.0/29") {
		t.Fatalf("sixth pod: %s %q, want AddressesExhausted naming the CIDR", f.Reason, f.Message)
	}
	t.Logf("exhaustion message: %s", f.Message)
}

// TestRollbackOnLostManagementConnectivity: the simulator treats VLAN 4000
// as the management VLAN, so a version moving the network onto it cuts the
// hosts off; network-config notices through vCenter, rolls back to the last
// good version, and says why in the record.
func TestRollbackOnLostManagementConnectivity(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 2, HostsPerCluster: 2}, nil)
	if err := e.DC.SetManagementVLAN(4000); err != nil {
		t.Fatal(err)
	}
	cluster1 := e.HostNames("cluster-1")
	scope := events.NetworkScope{Clusters: []string{"cluster-1"}}
	e.declare("backend", events.NetworkSpec{VLAN: 200, CIDR: "10.40.0.0/24", Scope: scope})
	testenv.Wait(e.Env, func(p *events.NetworkRealized) bool { return p.Name == "backend" && p.Version == 1 })

	bad := events.Network{APIVersion: events.APIVersion, Kind: events.KindNetwork, Metadata: events.Meta{Name: "backend"},
		Spec: events.NetworkSpec{VLAN: 4000, CIDR: "10.40.0.0/24", Scope: scope}}
	badEvent, err := bus.NewEvent(events.OwnerSource(events.TypeNetworkDeclared), events.TypeNetworkDeclared, "backend", &events.NetworkDeclared{Network: bad})
	if err == nil {
		err = e.Bus.Publish(context.Background(), badEvent)
	}
	if err != nil {
		t.Fatal(err)
	}
	rb := testenv.Wait(e.Env, func(p *events.NetworkRolledBack) bool { return p.Name == "backend" })
	if rb.FromVersion != 2 || rb.ToVersion != 1 || !slices.Equal(rb.Hosts, cluster1) || rb.Reason != netconfig.ReasonConnectivityLost {
		t.Fatalf("rolledback = %+v, want from 2 to 1 on %v with ConnectivityLost", rb, cluster1)
	}
	rec := e.waitRecord("backend", func(r *events.NetworkRecord) bool { return r.HostsReady == len(cluster1) })
	if rec.Status != events.NetworkStatusRolledBack || rec.Version != 1 || rec.Spec.VLAN != 200 || !strings.Contains(rec.Message, "rolled back to version 1") {
		t.Fatalf("record = %s v%d vlan %d %q", rec.Status, rec.Version, rec.Spec.VLAN, rec.Message)
	}
	if v, _ := rec.FindVersion(2); v.Status != events.NetworkVersionRolledBack {
		t.Fatalf("history of version 2 = %+v, want RolledBack", v)
	}
	if pg := e.portGroup("pv-backend"); pg.VLAN != 200 {
		t.Fatalf("vSphere: pv-backend vlan %d after rollback, want 200", pg.VLAN)
	}
	t.Logf("get networks would show: %s %s", rec.Status, rec.Message)

	// The bad declaration handled again (a redelivery: same event id) finds
	// its version and does not re-apply it.
	rolledBack := e.Events.Count(events.TypeNetworkRolledBack)
	if err := e.svc.Declare(context.Background(), &badEvent, bad, "declared"); err != nil {
		t.Fatal(err)
	}
	if rec := e.record("backend"); rec.Version != 1 || len(rec.History) != 2 || e.Events.Count(events.TypeNetworkRolledBack) != rolledBack {
		t.Fatalf("redelivered bad declaration: version %d, %d versions, %d rollbacks; want 1, 2, %d",
			rec.Version, len(rec.History), e.Events.Count(events.TypeNetworkRolledBack), rolledBack)
	}
	a := e.availability("backend")
	if !slices.Equal(a.Hosts, cluster1) || a.Version != 1 {
		t.Fatalf("net-hosts after rollback = %+v", a)
	}
}

// TestRollbackOfFirstVersionRemovesPortGroup: with no good version to go
// back to, the port group is removed.
func TestRollbackOfFirstVersionRemovesPortGroup(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 2}, nil)
	if err := e.DC.SetManagementVLAN(4000); err != nil {
		t.Fatal(err)
	}
	e.declare("oops", events.NetworkSpec{VLAN: 4000, CIDR: "10.50.0.0/24"})
	rb := testenv.Wait(e.Env, func(p *events.NetworkRolledBack) bool { return p.Name == "oops" })
	if rb.FromVersion != 1 || rb.ToVersion != 0 {
		t.Fatalf("rolledback = %+v, want 1 → 0", rb)
	}
	if pg := e.portGroup("pv-oops"); pg.Exists {
		t.Fatal("vSphere: pv-oops still exists after rolling back its only version")
	}
	rec := e.record("oops")
	if rec.Status != events.NetworkStatusRolledBack || rec.Version != 0 {
		t.Fatalf("record = %s v%d", rec.Status, rec.Version)
	}
}

// TestRestoreReappliesAnEarlierVersion stores the old spec as a new version.
func TestRestoreReappliesAnEarlierVersion(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 3}, nil)
	e.declare("db", events.NetworkSpec{VLAN: 300, CIDR: "10.60.0.0/24"})
	testenv.Wait(e.Env, func(p *events.NetworkRealized) bool { return p.Name == "db" && p.Version == 1 })
	e.declare("db", events.NetworkSpec{VLAN: 301, CIDR: "10.60.0.0/24", Properties: events.NetworkProperties{MTU: 9000, AllowPromiscuous: true}})
	testenv.Wait(e.Env, func(p *events.NetworkRealized) bool { return p.Name == "db" && p.Version == 2 })
	if pg := e.portGroup("pv-db"); pg.VLAN != 301 {
		t.Fatalf("vlan %d after version 2, want 301", pg.VLAN)
	}
	e.Publish(&events.NetworkRestoreRequested{Name: "db", Version: 1})
	testenv.Wait(e.Env, func(p *events.NetworkRealized) bool { return p.Name == "db" && p.Version == 3 })
	rec := e.record("db")
	if rec.Version != 3 || rec.Spec.VLAN != 300 || rec.History[2].Origin != "restored from version 1" {
		t.Fatalf("record after restore: v%d vlan %d history %+v", rec.Version, rec.Spec.VLAN, rec.History)
	}
	if pg := e.portGroup("pv-db"); pg.VLAN != 300 || len(pg.Hosts) != 3 {
		t.Fatalf("vSphere after restore: vlan %d on %v", pg.VLAN, pg.Hosts)
	}

	// A version that is not stored is reported, not guessed.
	e.Publish(&events.NetworkRestoreRequested{Name: "db", Version: 42})
	rec = e.waitRecord("db", func(r *events.NetworkRecord) bool { return r.Reason == netconfig.ReasonRestoreFailed })
	if !strings.Contains(rec.Message, "version 42") {
		t.Fatalf("restore of a missing version: %q", rec.Message)
	}

	// Export and import round-trip the current version as a file.
	data, err := netconfig.Export(rec, 0)
	if err != nil {
		t.Fatal(err)
	}
	decl, err := netconfig.Import(data)
	if err != nil {
		t.Fatalf("import of an export: %v\n%s", err, data)
	}
	if decl.Network.Metadata.Name != "db" || decl.Network.Spec.VLAN != 300 || decl.Network.Metadata.Annotations[netconfig.AnnotationExportedVersion] != "3" {
		t.Fatalf("imported %+v", decl.Network)
	}
}

// TestDeclarationsRefusedWithReasons: overlapping CIDRs and unknown
// clusters are refused with the field and the reason in the record.
func TestDeclarationsRefusedWithReasons(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 2}, nil)
	e.declareRealized("a", events.NetworkSpec{VLAN: 10, CIDR: "10.70.0.0/16"})

	e.declare("b", events.NetworkSpec{VLAN: 11, CIDR: "10.70.5.0/24"})
	rec := e.waitRecord("b", func(r *events.NetworkRecord) bool { return r.Status == events.NetworkStatusRejected })
	if !strings.Contains(rec.Message, "spec.cidr") || !strings.Contains(rec.Message, "overlaps 10.70.0.0/16 of network a") {
		t.Fatalf("overlap refusal message: %q", rec.Message)
	}

	e.declare("c", events.NetworkSpec{VLAN: 12, CIDR: "10.71.0.0/24", Scope: events.NetworkScope{Clusters: []string{"cluster-9"}}})
	rec = e.waitRecord("c", func(r *events.NetworkRecord) bool { return r.Status == events.NetworkStatusRejected })
	if !strings.Contains(rec.Message, `spec.scope.clusters[0]: cluster "cluster-9" not found`) {
		t.Fatalf("unknown cluster refusal message: %q", rec.Message)
	}
	// The same VLAN with another subnet on hosts a's scope (every host)
	// covers: refused naming the field and the network using it.
	hosts := e.HostNames("cluster-1")
	e.declare("d", events.NetworkSpec{VLAN: 10, CIDR: "10.72.0.0/24", Scope: events.NetworkScope{Hosts: hosts[:1]}})
	rec = e.waitRecord("d", func(r *events.NetworkRecord) bool { return r.Status == events.NetworkStatusRejected })
	if !strings.Contains(rec.Message, "spec.vlan: VLAN 10 is already used by network a (10.70.0.0/16)") {
		t.Fatalf("shared VLAN refusal message: %q", rec.Message)
	}
	if e.portGroup("pv-b").Exists || e.portGroup("pv-c").Exists || e.portGroup("pv-d").Exists {
		t.Fatal("a refused network got a port group")
	}
	// Scopes with no host in common may reuse a VLAN.
	e.declareRealized("e", events.NetworkSpec{VLAN: 20, CIDR: "10.73.0.0/24", Scope: events.NetworkScope{Hosts: hosts[:1]}})
	e.declareRealized("f", events.NetworkSpec{VLAN: 20, CIDR: "10.74.0.0/24", Scope: events.NetworkScope{Hosts: hosts[1:]}})
	if r := e.record("f"); r.Version != 1 || r.Reason != "" {
		t.Fatalf("same VLAN on disjoint scopes: version %d, %s %s; want version 1 applied", r.Version, r.Reason, r.Message)
	}
}

// TestHostThatComesBackGetsItsNetworks: a host down during the push fails
// with HostDisconnected and is realized when host.recovered arrives.
func TestHostThatComesBackGetsItsNetworks(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 3}, nil)
	hosts := e.HostNames("")
	down := hosts[2]
	ctx := context.Background()
	if err := e.DC.FailHost(ctx, down); err != nil {
		t.Fatal(err)
	}
	e.declare("late", events.NetworkSpec{VLAN: 77, CIDR: "10.77.0.0/24"})
	f := testenv.Wait(e.Env, func(p *events.NetworkHostFailed) bool { return p.Name == "late" })
	if f.Host != down || f.Reason != netconfig.ReasonHostDisconnected {
		t.Fatalf("host.failed = %+v, want %s HostDisconnected", f, down)
	}
	if rec := e.record("late"); rec.Status != events.NetworkStatusDegraded {
		t.Fatalf("status %s with a host down, want Degraded", rec.Status)
	}
	if err := e.DC.RecoverHost(ctx, down); err != nil {
		t.Fatal(err)
	}
	e.Publish(&events.HostRecovered{Name: down, Cluster: "cluster-1"})
	testenv.Wait(e.Env, func(p *events.NetworkHostReady) bool { return p.Name == "late" && p.Host == down })
	rec := e.waitRecord("late", func(r *events.NetworkRecord) bool { return r.Status == events.NetworkStatusReady })
	if rec.HostsReady != 3 {
		t.Fatalf("ready hosts %d, want 3", rec.HostsReady)
	}
}

// TestAvailabilityQuery answers "is network X available on host H" over
// NATS request/reply.
func TestAvailabilityQuery(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 2, HostsPerCluster: 1}, nil)
	in, out := e.HostNames("cluster-1")[0], e.HostNames("cluster-2")[0]
	e.declareRealized("q", events.NetworkSpec{VLAN: 5, CIDR: "10.5.0.0/24", Scope: events.NetworkScope{Hosts: []string{in}}})
	tests := []struct {
		network, host string
		available, in bool
		reason        string
	}{
		{"q", in, true, true, ""},
		{"q", out, false, false, netconfig.ReasonNotInScope},
		{"nope", in, false, false, netconfig.ReasonNetworkNotFound},
		{"", in, false, false, "InvalidQuery"},
	}
	for _, tt := range tests {
		a := e.ask(tt.network, tt.host)
		if a.Available != tt.available || a.InScope != tt.in || a.Reason != tt.reason {
			t.Errorf("ask(%q, %q) = %+v, want available=%v inScope=%v reason=%q", tt.network, tt.host, a, tt.available, tt.in, tt.reason)
		}
	}
}

// TestMigrationMovesTheBinding: migration.completed rebinds the address to
// the target host without changing it.
func TestMigrationMovesTheBinding(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 2}, nil)
	hosts := e.HostNames("")
	e.declareRealized("m", events.NetworkSpec{VLAN: 8, CIDR: "10.8.0.0/24"})
	e.schedule("mover", "uid-mover", hosts[0], "m")
	att := testenv.Wait(e.Env, func(p *events.PodNetworkAttached) bool { return p.Name == "mover" })
	e.Publish(&events.MigrationCompleted{
		MigrationRef: events.MigrationRef{ID: "mig-1", Namespace: "default", Pod: "mover"}, MigrationMove: events.MigrationMove{UID: "uid-mover", SourceHost: hosts[0], TargetHost: hosts[1], TargetCluster: "cluster-1"},
	})
	kv, err := e.Bus.KV(context.Background(), events.BucketIPAM)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		entry, err := kv.Get(context.Background(), events.IPAllocationKey("m", att.Attachments[0].IP))
		if err == nil {
			var a events.IPAllocation
			_ = json.Unmarshal(entry.Value(), &a)
			if a.Host == hosts[1] && a.UID == "uid-mover" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("address %s never moved to %s", att.Attachments[0].IP, hosts[1])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestScopeChangeMovesThePortGroup: narrowing a network from every host to
// one cluster moves its port group to the scope's switch, so the other
// cluster's hosts no longer carry it; widening it back returns it.
func TestScopeChangeMovesThePortGroup(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 2, HostsPerCluster: 2}, nil)
	e.declare("wide", events.NetworkSpec{VLAN: 9, CIDR: "10.9.0.0/24"})
	testenv.Wait(e.Env, func(p *events.NetworkRealized) bool { return p.Name == "wide" && p.Version == 1 })
	if pg := e.portGroup("pv-wide"); !slices.Equal(pg.Hosts, e.HostNames("")) {
		t.Fatalf("v1 on %v, want every host", pg.Hosts)
	}
	e.declare("wide", events.NetworkSpec{VLAN: 9, CIDR: "10.9.0.0/24", Scope: events.NetworkScope{Clusters: []string{"cluster-2"}}})
	testenv.Wait(e.Env, func(p *events.NetworkRealized) bool { return p.Name == "wide" && p.Version == 2 })
	if pg := e.portGroup("pv-wide"); !slices.Equal(pg.Hosts, e.HostNames("cluster-2")) {
		t.Fatalf("v2 on %v, want %v", pg.Hosts, e.HostNames("cluster-2"))
	}
	if a := e.availability("wide"); !slices.Equal(a.Hosts, e.HostNames("cluster-2")) {
		t.Fatalf("net-hosts after narrowing = %v", a.Hosts)
	}
	e.declare("wide", events.NetworkSpec{VLAN: 9, CIDR: "10.9.0.0/24"})
	testenv.Wait(e.Env, func(p *events.NetworkRealized) bool { return p.Name == "wide" && p.Version == 3 })
	if pg := e.portGroup("pv-wide"); !slices.Equal(pg.Hosts, e.HostNames("")) {
		t.Fatalf("v3 on %v, want every host", pg.Hosts)
	}
}

// TestResyncRepairsDrift: a port group deleted by hand in vCenter comes
// back on the next resync, on every host in scope.
func TestResyncRepairsDrift(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 3}, nil)
	e.declareRealized("drift", events.NetworkSpec{VLAN: 44, CIDR: "10.44.0.0/24"})

	ctx := context.Background()
	dc, err := find.NewFinder(e.vc.Client).Datacenter(ctx, "DC0")
	if err != nil {
		t.Fatal(err)
	}
	if removed, err := fabric.New(e.vc.Client, dc).RemovePortGroup(ctx, "pv-drift"); err != nil || !removed {
		t.Fatalf("removing the port group by hand: %v %v", removed, err)
	}
	if e.portGroup("pv-drift").Exists {
		t.Fatal("port group still there after removing it")
	}
	if err := e.svc.Resync(ctx); err != nil {
		t.Fatal(err)
	}
	if pg := e.portGroup("pv-drift"); !pg.Exists || pg.VLAN != 44 || !slices.Equal(pg.Hosts, e.HostNames("")) {
		t.Fatalf("after resync: %+v, want vlan 44 on every host", pg)
	}
}

// TestAttachReadsThePodRecordWhenAcceptedWasMissed: after a restart the
// service has not seen pod.accepted; it reads the pod's networks from the
// provisioner's pod record instead.
func TestAttachReadsThePodRecordWhenAcceptedWasMissed(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 1}, nil)
	host := e.HostNames("")[0]
	e.declareRealized("rec", events.NetworkSpec{VLAN: 3, CIDR: "10.3.0.0/24"})

	acc := podAccepted("late", "uid-late", []string{"rec"})
	e.PutPodRecord(&events.PodRecord{UID: acc.UID, Namespace: acc.Namespace, Name: acc.Name, Pod: acc.Pod, Networks: acc.Networks})
	e.Publish(&events.PodScheduled{
		PodRef: events.PodRef{Namespace: "default", Name: "late", UID: "uid-late"}, Host: host, Cluster: "cluster-1",
	})
	att := testenv.Wait(e.Env, func(p *events.PodNetworkAttached) bool { return p.Name == "late" })
	if len(att.Attachments) != 1 || att.Attachments[0].Network != "rec" {
		t.Fatalf("attached %+v, want network rec", att.Attachments)
	}
}

// TestAttachFailingUntilDeliveriesRunOut: an attach that keeps failing for a
// reason a retry could fix (vCenter not answering while the network is
// realized on demand) ends, when the deliveries run out, with
// pod.network.failed naming the reason, and the event is dead-lettered;
// the pod is not left waiting for an answer that never comes.
func TestAttachFailingUntilDeliveriesRunOut(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 2, HostsPerCluster: 1}, func(c *netconfig.Config) {
		c.MaxDeliver = 3
		c.BackOff = []time.Duration{20 * time.Millisecond}
	})
	hosts := e.HostNames("")
	e.declare("blue", events.NetworkSpec{VLAN: 40, CIDR: "10.40.0.0/24", Gateway: "10.40.0.1",
		Scope: events.NetworkScope{Clusters: []string{e.ClusterOf(hosts[0])}}})
	testenv.Wait(e.Env, func(p *events.NetworkRealized) bool { return p.Name == "blue" })
	// The other cluster's host does not carry blue: the attach must ask
	// vCenter about the host, and vCenter fails every such call.
	simtest.Fault(t, e.DC, simulator.FaultInjectionRule{MethodName: "CreateContainerView", ObjectType: "ViewManager",
		Probability: 1, FaultType: simulator.FaultTypeTimeout})
	e.schedule("stuck", "uid-stuck", hosts[1], "blue")
	f := testenv.Wait(e.Env, func(p *events.PodNetworkFailed) bool { return p.Name == "stuck" })
	if f.Reason != netconfig.ReasonNotRealizedOnHost || f.Network != "blue" || f.Host != hosts[1] ||
		!strings.Contains(f.Message, "gave up after 3 attempts") {
		t.Fatalf("pod.network.failed = %+v; want NotRealizedOnHost for blue on %s, after 3 attempts", f, hosts[1])
	}
	e.WaitDeadLetter(netconfig.Name, "max deliveries exceeded")
	if n := e.Events.Count(events.TypePodNetworkAttached); n != 0 {
		t.Errorf("%d pod.network.attached; want none", n)
	}
}

// TestAttachReadsAgainARecordNotFound: a pod.scheduled whose pod record a
// read does not find (a KV replica that lags after a NATS node restart
// answers before it has caught up with the record's creation) is read
// again on the next deliveries. Before, the first read freed the pod's
// addresses and attached nothing, and the live pod waited for its network
// forever.
func TestAttachReadsAgainARecordNotFound(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 1}, func(c *netconfig.Config) {
		c.BackOff = []time.Duration{200 * time.Millisecond, 3 * time.Second}
	})
	host := e.HostNames("")[0]
	e.declareRealized("lag", events.NetworkSpec{VLAN: 7, CIDR: "10.7.0.0/24"})

	acc := podAccepted("lagging", "uid-lagging", []string{"lag"})
	e.Publish(acc) // announced; its record is not readable yet
	e.Publish(&events.PodScheduled{PodRef: events.PodRef{Namespace: "default", Name: "lagging", UID: acc.UID}, Host: host, Cluster: e.ClusterOf(host)})
	// The record shows up only once a delivery has found none and the
	// event is being delivered again.
	ctx := context.Background()
	e.Eventually("pod.scheduled delivered again after a record not found", func() bool {
		c, err := e.Bus.JetStream().Consumer(ctx, "PODS", netconfig.Name+"-PODS")
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumRedelivered > 0
	})
	e.PutPodRecord(testenv.PendingRecord(acc))
	att := testenv.Wait(e.Env, func(p *events.PodNetworkAttached) bool { return p.UID == acc.UID })
	if len(att.Attachments) != 1 || att.Attachments[0].Network != "lag" || att.Attachments[0].IP == "" {
		t.Fatalf("attached %+v, want an address on network lag", att.Attachments)
	}
}

// TestLateScheduleOfADeletedPodHoldsNoAddress: a pod is attached, then
// deleted (its record removed, pod.deleted frees its address); then another
// replica, which still knows the pod's networks from pod.accepted, handles
// a late pod.scheduled for it. Before, that allocated an address nobody
// would ever free; now the attach sees the pod gone and frees it.
func TestLateScheduleOfADeletedPodHoldsNoAddress(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 1}, func(c *netconfig.Config) {
		c.BackOff = []time.Duration{20 * time.Millisecond} // a record not found is read again first
	})
	host := e.HostNames("")[0]
	e.declareRealized("brief", events.NetworkSpec{VLAN: 6, CIDR: "10.6.0.0/24"})
	e.schedule("short", "uid-short", host, "brief")
	att := testenv.Wait(e.Env, func(p *events.PodNetworkAttached) bool { return p.UID == "uid-short" })

	ctx := context.Background()
	if err := e.KV(events.BucketPods).Delete(ctx, events.PodRecordKey("default", "short")); err != nil {
		t.Fatal(err)
	}
	seq := e.Publish(&events.PodDeleted{
		PodRef: events.PodRef{Namespace: "default", Name: "short", UID: "uid-short"}, Host: host,
		IPs: []events.NetworkIP{{Network: "brief", IP: att.Attachments[0].IP}},
	})
	e.WaitHandled("PODS", netconfig.Name+"-PODS", seq)
	e.Publish(podAccepted("short", "uid-short", []string{"brief"}))
	seq = e.Publish(&events.PodScheduled{
		PodRef: events.PodRef{Namespace: "default", Name: "short", UID: "uid-short"}, Host: host, Cluster: e.ClusterOf(host),
	})
	e.WaitHandled("PODS", netconfig.Name+"-PODS", seq)

	keys, err := e.KV(events.BucketIPAM).ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for k := range keys.Keys() {
		if strings.HasPrefix(k, "brief.") && !strings.Contains(k, ".fence.") {
			t.Errorf("ipam key %s left for a deleted pod", k)
		}
	}
	if n := e.Events.Count(events.TypePodNetworkAttached); n != 1 {
		t.Errorf("%d pod.network.attached, want 1 (none for the deleted pod)", n)
	}
}
