package netconfig_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/testenv"
)

// Every host gets one final state with every port group it must carry: the
// hosts in a scoped network's scope list it, the others get a state
// without it (so they drop it if they had it).
func TestEveryHostGetsItsFinalState(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 2, HostsPerCluster: 2}, nil)
	in := e.clusterHosts("cluster-1")
	e.declare("q", events.NetworkSpec{VLAN: 5, CIDR: "10.5.0.0/24", Scope: events.NetworkScope{Clusters: []string{"cluster-1"}}})
	testenv.Wait(e.Env, func(p *events.NetworkRealized) bool { return p.Name == "q" })
	for _, h := range e.allHosts() {
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
			per := float64(time.Since(start).Microseconds()) / float64(b.N) / 1000
			b.ReportMetric(per, "ms/fan-out")
			if par == 1 {
				base = per
			} else if base > 0 {
				b.ReportMetric(base/per, "speedup")
			}
		})
	}
}
