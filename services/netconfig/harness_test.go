package netconfig_test

import (
	"testing"
	"time"

	"github.com/vmware/govmomi"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// env is network-config running in the test environment (bus, simulated
// vCenter, recorder); the test plays the other services.
type env struct {
	*testenv.Env
	vc  *govmomi.Client // an independent vSphere client for assertions
	svc *netconfig.Service
	// stop stops svc; replica starts another network-config on the same
	// bus and vCenter with the same configuration (a replica taking over).
	stop    func()
	replica func() (stop func())
}

func newEnv(t testing.TB, simCfg sim.Config, tweak func(*netconfig.Config)) *env {
	t.Helper()
	te := testenv.Start(t, testenv.Datacenter(simCfg))
	sess := simtest.Session(t, te.DC)
	cfg := netconfig.DefaultConfig()
	cfg.ProbeWindow = 250 * time.Millisecond
	cfg.ProbeInterval = 25 * time.Millisecond
	cfg.ResyncInterval = 0
	if tweak != nil {
		tweak(&cfg)
	}
	build := func() *netconfig.Service {
		svc, err := netconfig.NewForTest(cfg, te.Bus, sess.Vim(), sess.Datacenter, nil)
		if err != nil {
			t.Fatal(err)
		}
		return svc
	}
	svc := build()
	stop := te.Run(netconfig.Name, svc.Run)
	replica := func() func() { return te.Run(netconfig.Name+"-replica", build().Run) }
	return &env{Env: te, vc: simtest.Client(t, te.DC), svc: svc, stop: stop, replica: replica}
}

// declare publishes network.declared as a client would.
func (e *env) declare(name string, spec events.NetworkSpec) uint64 {
	return e.Publish(&events.NetworkDeclared{Network: events.Network{
		APIVersion: events.APIVersion, Kind: events.KindNetwork, Metadata: events.Meta{Name: name}, Spec: spec,
	}})
}

// declareRealized declares the network and waits for network-config to
// announce it realized.
func (e *env) declareRealized(name string, spec events.NetworkSpec) {
	e.declare(name, spec)
	testenv.Wait(e.Env, func(p *events.NetworkRealized) bool { return p.Name == name })
}

// record and availability read network-config's records (the network must
// have one); waitRecord waits for its record to satisfy ok.
func (e *env) record(name string) *events.NetworkRecord {
	return testenv.MustGet[events.NetworkRecord](e.Env, events.BucketNetworks, name)
}

func (e *env) availability(name string) events.NetworkAvailability {
	return *testenv.MustGet[events.NetworkAvailability](e.Env, events.BucketNetHosts, name)
}

func (e *env) waitRecord(name string, ok func(*events.NetworkRecord) bool) *events.NetworkRecord {
	return testenv.WaitRecord(e.Env, events.BucketNetworks, name, ok)
}

// hostState reads what host carries of a network (`net-realized`); nil
// when it has no state. waitHostState waits for the host to reach state.
func (e *env) hostState(network, host string) *events.NetworkHostRecord {
	return testenv.Get[events.NetworkHostRecord](e.Env, events.BucketNetRealized, events.NetworkHostKey(network, host))
}

func (e *env) waitHostState(network, host, state string) *events.NetworkHostRecord {
	return testenv.WaitRecord(e.Env, events.BucketNetRealized, events.NetworkHostKey(network, host),
		func(h *events.NetworkHostRecord) bool { return h.State == state })
}

// portGroup reads a port group and the hosts carrying it with the
// independent vSphere client.
func (e *env) portGroup(name string) simtest.PortGroupView { return simtest.PortGroup(e.T, e.vc, name) }

// schedule plays the provisioner and the scheduler: the pod's record and
// pod.accepted, then pod.scheduled on host.
func (e *env) schedule(name, uid, host string, networks ...string) {
	e.T.Helper()
	e.Accept(podAccepted(name, uid, networks))
	e.Publish(&events.PodScheduled{PodRef: events.PodRef{Namespace: "default", Name: name, UID: uid}, Host: host, Cluster: e.ClusterOf(host)})
}

func podAccepted(name, uid string, networks []string) *events.PodAccepted {
	acc := testenv.Accepted(testenv.Pod(name, "registry.local/app:1"))
	acc.UID, acc.Networks = uid, networks
	return acc
}
