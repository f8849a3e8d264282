package netconfig_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// env is network-config running in the test environment (bus, simulated
// vCenter, recorder); the test plays the other services.
type env struct {
	*testenv.Env
	t   testing.TB
	bus *bus.Bus
	dc  *sim.Datacenter
	vc  *govmomi.Client // an independent vSphere client for assertions
	svc *netconfig.Service
}

func newEnv(t testing.TB, simCfg sim.Config, tweak func(*netconfig.Config)) *env {
	t.Helper()
	te := testenv.Start(t, testenv.Datacenter(simCfg))
	c := simtest.Client(t, te.DC)
	dc, err := find.NewFinder(c.Client).Datacenter(context.Background(), "DC0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := netconfig.DefaultConfig()
	cfg.ProbeWindow = 250 * time.Millisecond
	cfg.ProbeInterval = 25 * time.Millisecond
	cfg.ResyncInterval = 0
	if tweak != nil {
		tweak(&cfg)
	}
	svc, err := netconfig.NewForTest(cfg, te.Bus, c.Client, dc, nil)
	if err != nil {
		t.Fatal(err)
	}
	te.Run(netconfig.Name, svc.Run)
	return &env{Env: te, t: t, bus: te.Bus, dc: te.DC, vc: simtest.Client(t, te.DC), svc: svc}
}

// publish sends an event as its owner would; declare, a network.declared.
func (e *env) publish(ceType, subject string, data any) uint64 {
	return e.PublishAs(events.OwnerSource(ceType), ceType, subject, data)
}

func (e *env) declare(name string, spec events.NetworkSpec) uint64 {
	return e.publish(events.TypeNetworkDeclared, name, &events.NetworkDeclared{Network: events.Network{
		APIVersion: events.APIVersion, Kind: events.KindNetwork, Metadata: events.Meta{Name: name}, Spec: spec,
	}})
}

// record and availability read network-config's records (the network must
// have one); waitRecord waits for its record to satisfy ok.
func (e *env) record(name string) *events.NetworkRecord {
	return must(e, testenv.Get[events.NetworkRecord](e.Env, events.BucketNetworks, name), name)
}

func (e *env) availability(name string) events.NetworkAvailability {
	return *must(e, testenv.Get[events.NetworkAvailability](e.Env, events.BucketNetHosts, name), name)
}

func (e *env) waitRecord(name string, ok func(*events.NetworkRecord) bool) *events.NetworkRecord {
	return testenv.WaitRecord(e.Env, events.BucketNetworks, name, ok)
}

func must[T any](e *env, v *T, key string) *T {
	if v == nil {
		e.t.Fatalf("no %T record %s", v, key)
	}
	return v
}

type portGroupView struct {
	exists bool
	vlan   int32
	// hosts carrying it: the host lists it among its networks and is a
	// member of the port group's switch.
	hosts []string
}

// portGroup reads a port group and the hosts carrying it with the
// independent vSphere client.
func (e *env) portGroup(name string) portGroupView {
	e.t.Helper()
	ctx := context.Background()
	m := view.NewManager(e.vc.Client)
	v, err := m.CreateContainerView(ctx, e.vc.ServiceContent.RootFolder, []string{"DistributedVirtualPortgroup", "DistributedVirtualSwitch", "HostSystem"}, true)
	if err != nil {
		e.t.Fatal(err)
	}
	defer v.Destroy(ctx)
	var pgs []mo.DistributedVirtualPortgroup
	if err := v.Retrieve(ctx, []string{"DistributedVirtualPortgroup"}, []string{"name", "config"}, &pgs); err != nil {
		e.t.Fatal(err)
	}
	i := slices.IndexFunc(pgs, func(p mo.DistributedVirtualPortgroup) bool { return p.Name == name })
	if i < 0 {
		return portGroupView{}
	}
	pg := pgs[i]
	out := portGroupView{exists: true}
	if s, ok := pg.Config.DefaultPortConfig.(*types.VMwareDVSPortSetting); ok {
		if vl, ok := s.Vlan.(*types.VmwareDistributedVirtualSwitchVlanIdSpec); ok {
			out.vlan = vl.VlanId
		}
	}
	var sws []mo.DistributedVirtualSwitch
	if err := v.Retrieve(ctx, []string{"DistributedVirtualSwitch"}, []string{"summary.hostMember"}, &sws); err != nil {
		e.t.Fatal(err)
	}
	var members []types.ManagedObjectReference
	for _, sw := range sws {
		if sw.Self == *pg.Config.DistributedVirtualSwitch {
			members = sw.Summary.HostMember
		}
	}
	var hosts []mo.HostSystem
	if err := v.Retrieve(ctx, []string{"HostSystem"}, []string{"name", "network"}, &hosts); err != nil {
		e.t.Fatal(err)
	}
	for _, h := range hosts {
		if slices.Contains(h.Network, pg.Self) && slices.Contains(members, h.Self) {
			out.hosts = append(out.hosts, h.Name)
		}
	}
	slices.Sort(out.hosts)
	return out
}

// clusterHosts lists the host names of a cluster of the simulator.
func (e *env) clusterHosts(cluster string) []string {
	return e.hosts(func(h sim.HostSpec) bool { return h.Cluster == cluster })
}

func (e *env) allHosts() []string { return e.hosts(func(sim.HostSpec) bool { return true }) }

func (e *env) hosts(keep func(sim.HostSpec) bool) []string {
	var out []string
	for _, h := range e.dc.Hosts() {
		if keep(h) {
			out = append(out, h.Name)
		}
	}
	slices.Sort(out)
	return out
}

// schedule writes the pod's record (as the provisioner does before it
// announces pod.accepted) and publishes pod.accepted and pod.scheduled.
func (e *env) schedule(name, uid, host string, networks ...string) {
	e.t.Helper()
	acc := podAccepted(name, uid, networks)
	e.putPodRecord(&events.PodRecord{UID: uid, Namespace: "default", Name: name, Pod: acc.Pod, Networks: networks})
	e.publish(events.TypePodAccepted, events.PodKey("default", name), podAccepted(name, uid, networks))
	e.publish(events.TypePodScheduled, events.PodKey("default", name), &events.PodScheduled{
		Namespace: "default", Name: name, UID: uid, Host: host, Cluster: e.clusterOf(host),
	})
}

func (e *env) clusterOf(host string) string {
	h, err := e.dc.Host(host)
	if err != nil {
		e.t.Fatal(err)
	}
	return h.Cluster
}

func podAccepted(name, uid string, networks []string) *events.PodAccepted {
	var p events.PodAccepted
	raw := fmt.Sprintf(`{"namespace":"default","name":%q,"uid":%q,
		"pod":{"apiVersion":"v1","kind":"Pod","metadata":{"name":%q,"namespace":"default"},
		       "spec":{"containers":[{"name":"app","image":"registry.local/app:1"}]}},
		"size":{"cpuMilli":350,"memoryBytes":268435456,"vcpus":1,"memoryMiB":256},
		"networks":[], "images":["registry.local/app:1"]}`, name, uid, name)
	if err := json.Unmarshal([]byte(raw), &p); err != nil {
		panic(err)
	}
	p.Networks = networks
	p.Size = events.SizePodVM(&p.Pod)
	return &p
}

func (e *env) putPodRecord(rec *events.PodRecord) {
	e.t.Helper()
	data, err := json.Marshal(rec)
	if err != nil {
		e.t.Fatal(err)
	}
	pods, err := e.bus.KV(context.Background(), events.BucketPods)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := pods.Put(context.Background(), events.PodRecordKey(rec.Namespace, rec.Name), data); err != nil {
		e.t.Fatal(err)
	}
}
