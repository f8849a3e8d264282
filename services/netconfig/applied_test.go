package netconfig_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/testenv"
)

// A host agent reports that its host could not carry a network's port
// group: network-config marks the network Failed on that host (record,
// net-hosts, network.host.failed with the agent's reason), so the
// availability query refuses the host and a pod scheduled there is
// refused with a host-specific reason; once the agent reports the port
// group carried, the host is Ready again.
func TestHostThatFailedToApplyANetworkIsMarkedUntilItReportsSuccess(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 2}, nil)
	ctx := context.Background()
	e.declareRealized("web", events.NetworkSpec{VLAN: 100, CIDR: "10.70.0.0/24"})
	hosts := e.HostNames("")
	x, other := hosts[0], hosts[1]
	state := testenv.Wait(e.Env, func(p *events.NetworkHostDesired) bool {
		return p.Host == x && slices.ContainsFunc(p.PortGroups, func(pg events.HostPortGroup) bool { return pg.PortGroup == "pv-web" })
	})

	e.Publish(&events.NetworkHostApplied{Host: x, Digest: state.Digest,
		Failed: []events.PortGroupFailure{{PortGroup: "pv-web", Reason: "CarryFailed", Message: "bridge pv-web: no such device"}}})
	f := testenv.Wait(e.Env, func(p *events.NetworkHostFailed) bool { return p.Name == "web" && p.Host == x })
	if f.Reason != "CarryFailed" || !strings.Contains(f.Message, "no such device") {
		t.Fatalf("host failed = %+v, want the agent's reason and message", f)
	}
	e.waitHostState("web", x, events.NetworkHostStateFailed)
	rec := e.waitRecord("web", func(r *events.NetworkRecord) bool { return r.Status == events.NetworkStatusDegraded })
	if st := e.hostState("web", other); !st.ReadyAt(rec.Version) || rec.HostsReady != rec.HostsInScope-1 {
		t.Errorf("record: status %s, %d of %d ready, %s %+v; want Degraded with %s still Ready", rec.Status, rec.HostsReady, rec.HostsInScope, other, st, other)
	}
	waitFor(t, "net-hosts to list "+x+" failed", func() bool { return slices.Contains(e.availability("web").Failed, x) })
	a := e.availability("web")
	if !slices.Contains(a.Failed, x) || slices.Contains(a.Hosts, x) || events.NetworkUsable(a.On(x)) || !events.NetworkUsable(a.On(other)) {
		t.Errorf("net-hosts = %+v: want %s failed and not usable, %s usable", a, x, other)
	}
	if ans := e.svc.Available(ctx, []byte(`{"network":"web","host":"`+x+`"}`)); ans.Available || ans.Reason != "CarryFailed" {
		t.Errorf("availability query for %s = %+v, want not available with reason CarryFailed", x, ans)
	}
	// A re-push (a resync, a host event) does not forget the agent's word.
	if err := e.svc.Resync(ctx); err != nil {
		t.Fatal(err)
	}
	if st := e.hostState("web", x); st.State != events.NetworkHostStateFailed {
		t.Errorf("after a resync %s is %+v, want still Failed", x, st)
	}
	// A pod scheduled there anyway is refused for the host, not failed.
	e.schedule("p1", "uid-applied-1", x, "web")
	pf := testenv.Wait(e.Env, func(p *events.PodNetworkFailed) bool { return p.Name == "p1" })
	if !events.HostSpecificNetworkReason(pf.Reason) {
		t.Errorf("pod on %s: pod.network.failed reason %s, want a host-specific one", x, pf.Reason)
	}

	// The agent's retry works: the host is Ready again.
	e.Publish(&events.NetworkHostApplied{Host: x, Digest: state.Digest, Added: []string{"pv-web"}})
	testenv.Wait(e.Env, func(p *events.NetworkHostReady) bool { return p.Name == "web" && p.Host == x })
	e.waitHostState("web", x, events.NetworkHostStateReady)
	rec = e.waitRecord("web", func(r *events.NetworkRecord) bool { return r.Status == events.NetworkStatusReady })
	if len(rec.ApplyFailed) != 0 || rec.Status != events.NetworkStatusReady {
		t.Errorf("record after success: status %s, apply failures %v", rec.Status, rec.ApplyFailed)
	}
	waitFor(t, "net-hosts to list "+x+" realized again", func() bool {
		a := e.availability("web")
		return !slices.Contains(a.Failed, x) && slices.Contains(a.Hosts, x)
	})
}
