package netconfig_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
)

// seenEvent is an event on the bus, decoded once on receipt.
type seenEvent struct {
	ev      event.Event
	payload any
	err     error
}

// env is one service under test: a real JetStream server, a simulated
// datacenter, the service running against both, and a recorder of every
// event on the bus.
type env struct {
	t   testing.TB
	bus *bus.Bus
	dc  *sim.Datacenter
	vc  *govmomi.Client // an independent vSphere client for assertions
	svc *netconfig.Service

	mu     sync.Mutex
	seen   []seenEvent
	notify chan struct{}
}

func newEnv(t testing.TB, simCfg sim.Config, tweak func(*netconfig.Config)) *env {
	t.Helper()
	ctx := context.Background()
	b := bustest.Start(t)
	d := simtest.Start(t, simCfg)
	c := simtest.Client(t, d)
	dc, err := find.NewFinder(c.Client).Datacenter(ctx, "DC0")
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
	svc, err := netconfig.NewForTest(cfg, b, c.Client, dc, nil)
	if err != nil {
		t.Fatal(err)
	}
	vc := simtest.Client(t, d)
	e := &env{t: t, bus: b, dc: d, vc: vc, svc: svc, notify: make(chan struct{}, 1)}
	sub, err := b.Conn().Subscribe("pv.>", func(m *nats.Msg) {
		ev, err := bus.DecodeMessage(m)
		if err != nil {
			return
		}
		var p any
		var derr error
		if _, known := events.Lookup(ev.Type()); known {
			p, derr = events.Decode(ev.Type(), ev.Data())
		}
		e.mu.Lock()
		e.seen = append(e.seen, seenEvent{ev: ev, payload: p, err: derr})
		e.mu.Unlock()
		select {
		case e.notify <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- svc.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after cancel, want nil", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Run did not return within 15s of cancel")
		}
	})
	return e
}

// publish sends an event as a client would.
func (e *env) publish(ceType, subject string, data any) event.Event {
	e.t.Helper()
	ev, err := bus.NewEvent(events.OwnerSource(ceType), ceType, subject, data)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.bus.Publish(context.Background(), ev); err != nil {
		e.t.Fatal(err)
	}
	return ev
}

func (e *env) declare(name string, spec events.NetworkSpec) {
	e.t.Helper()
	e.publish(events.TypeNetworkDeclared, name, &events.NetworkDeclared{Network: events.Network{
		APIVersion: events.APIVersion, Kind: events.KindNetwork, Metadata: events.Meta{Name: name}, Spec: spec,
	}})
}

// wait returns the decoded payload of the first event of ceType (after
// skip earlier ones) that match accepts, failing the test after timeout.
func wait[T any](e *env, ceType string, match func(*T) bool) *T {
	e.t.Helper()
	return waitN(e, ceType, 1, match)[0]
}

// waitN waits for n distinct events of ceType that match.
func waitN[T any](e *env, ceType string, n int, match func(*T) bool) []*T {
	e.t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		var out []*T
		e.mu.Lock()
		for _, se := range e.seen {
			if se.ev.Type() != ceType {
				continue
			}
			if se.err != nil {
				e.mu.Unlock()
				e.t.Fatalf("service published an invalid %s: %v", ceType, se.err)
			}
			if p := se.payload.(*T); match == nil || match(p) {
				out = append(out, p)
			}
		}
		e.mu.Unlock()
		if len(out) >= n {
			return out
		}
		select {
		case <-e.notify:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			e.t.Fatalf("timed out waiting for %d %s events (have %d)", n, ceType, len(out))
		}
	}
}

// count counts events of a type seen so far.
func (e *env) count(ceType string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, se := range e.seen {
		if se.ev.Type() == ceType {
			n++
		}
	}
	return n
}

// record reads a network record from KV.
func (e *env) record(name string) *events.NetworkRecord {
	e.t.Helper()
	kv, err := e.bus.KV(context.Background(), events.BucketNetworks)
	if err != nil {
		e.t.Fatal(err)
	}
	entry, err := kv.Get(context.Background(), name)
	if err != nil {
		e.t.Fatalf("network record %s: %v", name, err)
	}
	var r events.NetworkRecord
	if err := json.Unmarshal(entry.Value(), &r); err != nil {
		e.t.Fatal(err)
	}
	return &r
}

// waitRecord polls the network record until ok accepts it.
func (e *env) waitRecord(name string, ok func(*events.NetworkRecord) bool) *events.NetworkRecord {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		kv, _ := e.bus.KV(context.Background(), events.BucketNetworks)
		if entry, err := kv.Get(context.Background(), name); err == nil {
			var r events.NetworkRecord
			if json.Unmarshal(entry.Value(), &r) == nil && ok(&r) {
				return &r
			}
		}
		if time.Now().After(deadline) {
			r := e.record(name)
			e.t.Fatalf("network %s: record never reached the expected state; last: status %s v%d ips %d reason %s %q", name, r.Status, r.Version, r.IPsUsed, r.Reason, r.Message)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// availability reads the net-hosts entry of a network.
func (e *env) availability(name string) events.NetworkAvailability {
	e.t.Helper()
	kv, err := e.bus.KV(context.Background(), events.BucketNetHosts)
	if err != nil {
		e.t.Fatal(err)
	}
	entry, err := kv.Get(context.Background(), name)
	if err != nil {
		e.t.Fatalf("net-hosts %s: %v", name, err)
	}
	var a events.NetworkAvailability
	if err := json.Unmarshal(entry.Value(), &a); err != nil {
		e.t.Fatal(err)
	}
	return a
}

// portGroupView is what the vSphere API says about a port group.
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
	var out []string
	for _, h := range e.dc.Hosts() {
		if h.Cluster == cluster {
			out = append(out, h.Name)
		}
	}
	slices.Sort(out)
	return out
}

func (e *env) allHosts() []string {
	var out []string
	for _, h := range e.dc.Hosts() {
		out = append(out, h.Name)
	}
	slices.Sort(out)
	return out
}

// schedule publishes pod.accepted and pod.scheduled for a pod on a host,
// as the provisioner and the scheduler would.
func (e *env) schedule(name, uid, host string, networks ...string) {
	e.t.Helper()
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
