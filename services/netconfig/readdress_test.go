package netconfig_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/testenv"
)

// TestAddressingChangeRefusedWhileAddressesAreHeld: a network's CIDR or
// gateway may change freely while nobody holds an address on it; once
// pods and a VM do, a change that leaves one of their addresses invalid (outside
// the new CIDR, or on the new gateway) is refused as a delete in use is:
// reason InUse, the field and the number of attachments in the record's
// message, and the network keeps its applied version. A restore of such
// a version is refused the same way. A change that keeps every address
// (widening, or narrowing around them) is stored and pushed.
func TestAddressingChangeRefusedWhileAddressesAreHeld(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 2}, nil)
	hosts := e.HostNames("")
	e.declareRealized("frontend", events.NetworkSpec{VLAN: 120, CIDR: "10.21.0.0/24", Gateway: "10.21.0.1"})

	// Nobody holds an address: the network moves to another CIDR.
	e.declare("frontend", events.NetworkSpec{VLAN: 120, CIDR: "10.20.0.0/24", Gateway: "10.20.0.1"})
	testenv.Wait(e.Env, func(p *events.NetworkRealized) bool { return p.Name == "frontend" && p.Version == 2 })

	const pods = 3
	for i := range pods {
		e.schedule(fmt.Sprintf("web-%d", i), fmt.Sprintf("uid-web-%d", i), hosts[i%len(hosts)], "frontend")
	}
	held := map[string]string{} // address → pod
	for _, p := range testenv.WaitN[events.PodNetworkAttached](e.Env, pods, nil) {
		held[p.Attachments[0].IP] = p.Name
	}
	// And a native VM, as the provisioner's native VM controller has it
	// placed.
	vm := events.VMRef{Namespace: "team-a", Name: "db", UID: "uid-vm-db"}
	testenv.Put(e.Env, events.BucketVMs, events.VMRecordKey(vm.Namespace, vm.Name), &events.VMRecord{
		Namespace: vm.Namespace, Name: vm.Name, UID: vm.UID, Spec: events.VirtualMachineSpec{Networks: []string{"frontend"}}})
	e.Publish(&events.VMScheduled{VMRef: vm, Generation: 1, Host: hosts[0], Cluster: e.ClusterOf(hosts[0])})
	vmAtt := testenv.Wait(e.Env, func(p *events.VMNetworkAttached) bool { return p.UID == vm.UID }).Attachments[0]
	e.waitRecord("frontend", func(r *events.NetworkRecord) bool { return r.IPsUsed == pods+1 })

	// refused waits for the refusal whose message has every part of want
	// and checks that version 2 stays applied.
	refused := func(what string, want ...string) {
		t.Helper()
		rec := e.waitRecord("frontend", func(r *events.NetworkRecord) bool {
			if r.Reason != netconfig.ReasonInUse {
				return false
			}
			for _, w := range want {
				if !strings.Contains(r.Message, w) {
					return false
				}
			}
			return true
		})
		t.Logf("%s: %s: %s", what, rec.Reason, rec.Message)
		if rec.RefusedEvent == "" {
			t.Errorf("%s: the refusal names no request (refusedEvent empty)", what)
		}
		if rec.Version != 2 || rec.Spec.CIDR != "10.20.0.0/24" || rec.Spec.Gateway != "10.20.0.1" || rec.LatestVersion() != 2 {
			t.Fatalf("%s: record at version %d (latest %d) with %s gw %s, want version 2 kept with 10.20.0.0/24 gw 10.20.0.1",
				what, rec.Version, rec.LatestVersion(), rec.Spec.CIDR, rec.Spec.Gateway)
		}
		if rec.Status == events.NetworkStatusRejected {
			t.Fatalf("%s: the network is Rejected; an applied network keeps its status", what)
		}
	}

	// Another CIDR: every address falls outside.
	e.declare("frontend", events.NetworkSpec{VLAN: 120, CIDR: "10.20.1.0/24", Gateway: "10.20.1.1"})
	refused("move to 10.20.1.0/24", "new version not stored", "spec.cidr: 10.20.1.0/24", "4 attachments hold addresses",
		"4 of them", "default/web-0 ", "team-a/db "+vmAtt.IP)

	// A narrower prefix that cuts addresses off (.3 is the broadcast
	// address of 10.20.0.0/30, .4 and .5 are outside).
	e.declare("frontend", events.NetworkSpec{VLAN: 120, CIDR: "10.20.0.0/30", Gateway: "10.20.0.1"})
	refused("narrow to /30", "spec.cidr: 10.20.0.0/30", "4 attachments hold addresses", "3 of them")

	// A gateway a pod holds.
	gwPod := held["10.20.0.3"]
	e.declare("frontend", events.NetworkSpec{VLAN: 120, CIDR: "10.20.0.0/24", Gateway: "10.20.0.3"})
	refused("gateway onto a held address", "spec.gateway: 10.20.0.3 is held by default/"+gwPod+" 10.20.0.3")

	// A restore of version 1 (10.21.0.0/24) would strand them too.
	e.Publish(&events.NetworkRestoreRequested{Name: "frontend", Version: 1})
	refused("restore of version 1", "spec.cidr: 10.21.0.0/24")

	if a := e.availability("frontend"); a.Version != 2 || len(a.Hosts) != len(hosts) {
		t.Fatalf("net-hosts after the refusals: version %d on %v, want version 2 on every host", a.Version, a.Hosts)
	}
	if n := len(testenv.Distinct[events.NetworkRealized](e.Env, func(p *events.NetworkRealized) bool { return p.Version > 2 })); n != 0 {
		t.Fatalf("%d network.realized of a refused version", n)
	}

	// Widening keeps every address: stored and pushed.
	e.declare("frontend", events.NetworkSpec{VLAN: 120, CIDR: "10.20.0.0/23", Gateway: "10.20.0.1"})
	testenv.Wait(e.Env, func(p *events.NetworkRealized) bool { return p.Name == "frontend" && p.Version == 3 })
	// So does narrowing around them.
	e.declare("frontend", events.NetworkSpec{VLAN: 120, CIDR: "10.20.0.0/28", Gateway: "10.20.0.1"})
	testenv.Wait(e.Env, func(p *events.NetworkRealized) bool { return p.Name == "frontend" && p.Version == 4 })
	rec := e.waitRecord("frontend", func(r *events.NetworkRecord) bool { return r.Version == 4 })
	if rec.Reason == netconfig.ReasonInUse {
		t.Fatalf("record after an accepted change still says %s: %s", rec.Reason, rec.Message)
	}

	// A pod attached now gets an address and prefix of the new version.
	e.schedule("web-late", "uid-web-late", hosts[0], "frontend")
	late := testenv.Wait(e.Env, func(p *events.PodNetworkAttached) bool { return p.Name == "web-late" })
	if att := late.Attachments[0]; !netip.MustParsePrefix("10.20.0.0/28").Contains(netip.MustParseAddr(att.IP)) || att.PrefixLength != 28 {
		t.Fatalf("late pod attached with %s/%d, want an address of 10.20.0.0/28", att.IP, att.PrefixLength)
	}
}
