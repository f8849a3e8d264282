package netconfig_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// The availability query asks the host: a host that reads back without
// the port group the records say it carries is Failed in the answer at
// once, and the push that follows records it (network.host.failed, and the
// read model lists the host as failed), so the scheduler and the migration
// precheck learn it too.
func TestAvailabilityQueryReadsTheHostBack(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 2}, nil)
	hosts := e.HostNames("")
	x, y := hosts[0], hosts[1]
	e.declare("q", events.NetworkSpec{VLAN: 5, CIDR: "10.5.0.0/24"})
	testenv.Wait(e.Env, func(p *events.NetworkRealized) bool { return p.Name == "q" && len(p.Ready) == 2 })
	if a := e.ask("q", x); !a.Usable() || a.State != events.NetworkOnHostRealized || !a.Available {
		t.Fatalf("before the drift: %+v, want realized", a)
	}

	simtest.DropHostPortGroup(t, e.DC, x, events.PortGroupName("q"))
	a := e.ask("q", x)
	if a.Usable() || a.State != events.NetworkOnHostFailed || a.Reason != netconfig.ReasonNotRealized || !strings.Contains(a.Message, "without port group pv-q") {
		t.Errorf("after %s lost the port group: %+v, want Failed, NotRealized, naming the port group", x, a)
	}
	if a := e.ask("q", y); a.State != events.NetworkOnHostRealized {
		t.Errorf("%s, untouched: %+v, want realized", y, a)
	}
	testenv.Wait(e.Env, func(p *events.NetworkHostFailed) bool {
		return p.Name == "q" && p.Host == x && p.Reason == netconfig.ReasonNotRealized
	})
	e.waitHostState("q", x, events.NetworkHostStateFailed)
	av := e.availability("q")
	if av.On(x) != events.NetworkOnHostFailed || av.On(y) != events.NetworkOnHostRealized {
		t.Errorf("read model %+v: %s is %s, %s is %s; want Failed and Realized", av, x, av.On(x), y, av.On(y))
	}
}

// ask puts the availability query "is network available on host" over
// NATS request/reply, as the scheduler and the migration precheck do.
func (e *env) ask(network, host string) events.NetworkAvailabilityAnswer {
	e.T.Helper()
	data, _ := json.Marshal(events.NetworkAvailabilityQuery{Network: network, Host: host})
	m, err := e.Bus.Conn().Request(events.SubjectQueryNetworkAvailable, data, 5*time.Second)
	if err != nil {
		e.T.Fatal(err)
	}
	var a events.NetworkAvailabilityAnswer
	if err := json.Unmarshal(m.Data, &a); err != nil {
		e.T.Fatal(err)
	}
	return a
}
