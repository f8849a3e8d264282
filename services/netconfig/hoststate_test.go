package netconfig_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmware/govmomi/find"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/testenv"
)

// Every host gets one final state with every port group it must carry: the
// hosts in a scoped network's scope list it, the others get a state
// without it (so they drop it if they had it).
func TestEveryHostGetsItsFinalState(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 2, HostsPerCluster: 2}, nil)
	in := e.HostNames("cluster-1")
	e.declareRealized("q", events.NetworkSpec{VLAN: 5, CIDR: "10.5.0.0/24", Scope: events.NetworkScope{Clusters: []string{"cluster-1"}}})
	for _, h := range e.HostNames("") {
		d := testenv.Wait(e.Env, func(p *events.NetworkHostDesired) bool {
			return p.Host == h && slices.ContainsFunc(p.PortGroups, func(pg events.HostPortGroup) bool { return pg.PortGroup == "pv-q" }) == slices.Contains(in, h)
		})
		for _, pg := range d.PortGroups {
			if pg.PortGroup == "pv-q" && (pg.Key == "" || pg.VLAN != 5 || pg.Version != 1) {
				t.Errorf("host %s: %+v, want pv-q's key, vlan 5, version 1", h, pg)
			}
		}
	}
	// A change to the network sends each host in scope its new state.
	e.declare("q", events.NetworkSpec{VLAN: 6, CIDR: "10.5.0.0/24", Scope: events.NetworkScope{Clusters: []string{"cluster-1"}}})
	for _, h := range in {
		testenv.Wait(e.Env, func(p *events.NetworkHostDesired) bool {
			return p.Host == h && len(p.PortGroups) > 0 && p.PortGroups[0].VLAN == 6
		})
	}
}

// BenchmarkHostStateFanOut measures pushing 64 hosts their final states
// (one message each, published on the embedded JetStream and acknowledged)
// one after the other (the baseline, measured in the same run) and 16 at a
// time, and reports the ratio.
//
//	go test -run '^$' -bench HostStateFanOut -benchtime 20x ./services/netconfig
func BenchmarkHostStateFanOut(b *testing.B) {
	var base float64
	for _, par := range []int{1, 16} {
		b.Run(fmt.Sprintf("hosts=64/parallelism=%d", par), func(b *testing.B) {
			e := newEnv(b, sim.Config{Clusters: 1, HostsPerCluster: 1}, nil)
			msgs := make([]*events.NetworkHostDesired, 64)
			for i := range msgs {
				pgs := []events.HostPortGroup{{Network: "default", PortGroup: "pv-default", Key: "dvportgroup-1", VLAN: 1, Version: 1}}
				msgs[i] = &events.NetworkHostDesired{Host: fmt.Sprintf("esx-%02d", i), Digest: events.HostStateDigest(pgs), PortGroups: pgs}
			}
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				if err := e.svc.PublishHostStates(context.Background(), msgs, par); err != nil {
					b.Fatal(err)
				}
			}
			reportPerOp(b, start, "ms/fan-out", par, &base)
		})
	}
}

// Each host's state travels on the host's own subject, and only hosts whose
// state changed get one: a network scoped to one cluster sends nothing to
// the other cluster's hosts, a resync with nothing changed sends nothing,
// and neither does a restarted service (it reads the last state sent to
// each host from the stream).
func TestOnlyChangedHostsGetTheirStateOnTheirOwnSubject(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 2, HostsPerCluster: 2}, nil)
	ctx := context.Background()
	var mu sync.Mutex
	perSubject := map[string]int{}
	sub, err := e.Bus.Conn().Subscribe(events.SubjectNetworkHostDesired+".>", func(m *nats.Msg) {
		ev, err := bus.DecodeMessage(m)
		if err != nil {
			t.Errorf("undecodable state: %v", err)
			return
		}
		if want := events.SubjectNetworkHostDesiredFor(ev.Subject()); m.Subject != want {
			t.Errorf("state of %s on subject %s, want %s", ev.Subject(), m.Subject, want)
		}
		mu.Lock()
		perSubject[m.Subject]++
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	counts := func() map[string]int {
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(perSubject)
	}
	c1, c2 := e.HostNames("cluster-1"), e.HostNames("cluster-2")
	has := func(p *events.NetworkHostDesired, pg string) bool {
		return slices.ContainsFunc(p.PortGroups, func(x events.HostPortGroup) bool { return x.PortGroup == pg })
	}

	e.declare("q", events.NetworkSpec{VLAN: 5, CIDR: "10.5.0.0/24", Scope: events.NetworkScope{Clusters: []string{"cluster-1"}}})
	for _, h := range c1 {
		testenv.Wait(e.Env, func(p *events.NetworkHostDesired) bool { return p.Host == h && has(p, "pv-q") })
	}
	for _, h := range c2 {
		testenv.Wait(e.Env, func(p *events.NetworkHostDesired) bool { return p.Host == h })
	}
	waitFor(t, "every host's state on its own subject", func() bool { return len(counts()) == 4 })
	before := counts()

	// Nothing changed: a resync sends nothing.
	if err := e.svc.Resync(ctx); err != nil {
		t.Fatal(err)
	}
	// A network on cluster-2 changes cluster-2's states only.
	e.declare("r", events.NetworkSpec{VLAN: 6, CIDR: "10.6.0.0/24", Scope: events.NetworkScope{Clusters: []string{"cluster-2"}}})
	for _, h := range c2 {
		testenv.Wait(e.Env, func(p *events.NetworkHostDesired) bool { return p.Host == h && has(p, "pv-r") })
	}
	waitFor(t, "cluster-2's new states", func() bool {
		n := counts()
		return n[events.SubjectNetworkHostDesiredFor(c2[0])] > before[events.SubjectNetworkHostDesiredFor(c2[0])] &&
			n[events.SubjectNetworkHostDesiredFor(c2[1])] > before[events.SubjectNetworkHostDesiredFor(c2[1])]
	})
	after := counts()
	for _, h := range c1 {
		if s := events.SubjectNetworkHostDesiredFor(h); after[s] != before[s] {
			t.Errorf("%s got %d states after the resync and a change elsewhere, want none", h, after[s]-before[s])
		}
	}
	for _, h := range c2 {
		if s := events.SubjectNetworkHostDesiredFor(h); after[s] != before[s]+1 {
			t.Errorf("%s got %d states for one change, want 1", h, after[s]-before[s])
		}
	}

	// A second instance (a restart) finds the last states on the stream.
	cfg := netconfig.DefaultConfig()
	cfg.ResyncInterval = 0
	dc, err := find.NewFinder(e.vc.Client).Datacenter(ctx, "DC0")
	if err != nil {
		t.Fatal(err)
	}
	again, err := netconfig.NewForTest(cfg, e.Bus, e.vc.Client, dc, nil)
	if err != nil {
		t.Fatal(err)
	}
	seq := e.Events.Count(events.TypeNetworkHostDesired)
	if err := again.PushHostStates(ctx, false); err != nil {
		t.Fatal(err)
	}
	if n := e.Events.Count(events.TypeNetworkHostDesired); n != seq {
		t.Errorf("a restarted service sent %d states with nothing changed, want 0", n-seq)
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
