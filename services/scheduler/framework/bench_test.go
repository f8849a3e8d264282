package framework_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/services/scheduler/framework/fwtest"
	"github.com/podvisor/podvisor/services/scheduler/plugins"
	"github.com/podvisor/podvisor/services/scheduler/plugins/imagelocality"
)

// benchHosts builds a datacenter of n hosts with the unequal hardware of a
// real fleet: 32/48/64 cores, 256-768 GiB, 16 hosts per cluster, the shared
// datastore plus one per cluster, "default" realized everywhere and
// "frontend" in scope on every other cluster.
func benchHosts(n int) *framework.Snapshot {
	rng := rand.New(rand.NewPCG(1, 2))
	cores := []int64{32, 48, 64}
	mem := []int64{256, 384, 512, 768}
	hs := make([]*framework.Host, n)
	for i := range hs {
		cl := fmt.Sprintf("cluster-%d", i/16+1)
		b := fwtest.MakeHost(fmt.Sprintf("esx-%05d", i)).Cluster(cl).
			Capacity(cores[rng.IntN(3)]*1000, mem[rng.IntN(4)]*fwtest.GiB).
			Datastores("shared-ds", cl+"-ds")
		if (i/16)%2 == 0 {
			b.Network("frontend", framework.NetworkInScope)
		}
		hs[i] = b.Obj()
	}
	return framework.NewSnapshot(hs...)
}

// benchPods is a mix of sizes and constraints: 0.5-4 CPU, 0.5-16 GiB, a
// fifth on the frontend network, a tenth pinned to a cluster, anti-affinity
// on a twentieth.
func benchPods(n int) []*framework.PodInfo {
	rng := rand.New(rand.NewPCG(3, 4))
	images := []string{"podvisor/web:1.0", "podvisor/worker:1.0", "podvisor/base:1.0"}
	out := make([]*framework.PodInfo, n)
	for i := range out {
		b := fwtest.MakePod(fmt.Sprintf("pod-%d", i)).
			Size(int64(500*(1+rng.IntN(8))), int64(512<<20)*int64(1+rng.IntN(32))).
			Images(images[rng.IntN(3)]).Label("app", fmt.Sprintf("app-%d", i%50))
		if i%5 == 0 {
			b.Networks("default", "frontend")
		}
		if i%10 == 0 {
			b.NodeSelector(framework.LabelCluster, fmt.Sprintf("cluster-%d", 1+rng.IntN(n/16+1)))
		}
		if i%20 == 0 {
			b.AntiAffinity("app", fmt.Sprintf("app-%d", i%50), framework.TopologyHost)
		}
		out[i] = b.Info()
	}
	return out
}

// staticLocality is the image read model with three hot datastores.
type staticLocality map[string]float64

func (s staticLocality) Locality(context.Context, []string) (map[string]float64, error) {
	return s, nil
}

// schedulePods schedules pods one after the other, assuming each on its
// host as the service does, and returns the number placed.
func schedulePods(tb testing.TB, f *framework.Framework, snap *framework.Snapshot, pods []*framework.PodInfo) int {
	placed := 0
	for _, p := range pods {
		res, err := f.Schedule(context.Background(), p)
		var fe *framework.FitError
		if errors.As(err, &fe) {
			continue
		}
		if err != nil {
			tb.Fatal(err)
		}
		snap.AddPod(res.Host.Name, framework.PodRefOf(p))
		placed++
	}
	return placed
}

func benchFramework(tb testing.TB, hosts, pct int) (*framework.Framework, *framework.Snapshot) {
	snap := benchHosts(hosts)
	p := plugins.DefaultProfile(framework.StrategyBinpack)
	p.PercentageOfHostsToScore = pct
	f, err := framework.New(p, plugins.NewRegistry(), snap, map[string]any{
		imagelocality.ServiceName: staticLocality{"cluster-1-ds": 1, "cluster-7-ds": 0.5, "shared-ds": 0.2},
	})
	if err != nil {
		tb.Fatal(err)
	}
	return f, snap
}

// BenchmarkFramework5000Hosts measures placement throughput with the
// default (adaptive, kube-scheduler style) search and, in the same run, the
// naive baseline that filters and scores every host for every pod. It
// reports pods/s for both and their ratio.
//
//	go test -run '^$' -bench Framework5000 -benchtime 4000x ./framework/
func BenchmarkFramework5000Hosts(b *testing.B) {
	const hosts = 5000
	pods := benchPods(b.N)
	f, snap := benchFramework(b, hosts, 0)
	b.ResetTimer()
	start := time.Now()
	placed := schedulePods(b, f, snap, pods)
	elapsed := time.Since(start)
	b.StopTimer()
	if placed < b.N*9/10 {
		b.Fatalf("only %d of %d pods placed", placed, b.N)
	}
	rate := float64(b.N) / elapsed.Seconds()

	bf, bsnap := benchFramework(b, hosts, 100)
	bstart := time.Now()
	schedulePods(b, bf, bsnap, pods)
	baseline := float64(b.N) / time.Since(bstart).Seconds()

	b.ReportMetric(rate, "pods/s")
	b.ReportMetric(baseline, "baseline-pods/s")
	b.ReportMetric(rate/baseline, "x-baseline")
}

// Placements must never exceed a host's capacity, with either search.
func TestFrameworkNeverOvercommits(t *testing.T) {
	for _, pct := range []int{0, 100} {
		f, snap := benchFramework(t, 200, pct)
		placed := schedulePods(t, f, snap, benchPods(6000))
		if placed == 0 || placed == 6000 {
			t.Fatalf("pct %d: placed %d of 6000; the test wants some pods not to fit", pct, placed)
		}
		for _, h := range snap.Hosts() {
			if h.RequestedMemoryBytes > h.MemoryCapacityBytes || h.RequestedCPUMilli > h.CPUCapacityMilli {
				t.Errorf("pct %d: host %s overcommitted: cpu %d/%d mem %d/%d", pct, h.Name,
					h.RequestedCPUMilli, h.CPUCapacityMilli, h.RequestedMemoryBytes, h.MemoryCapacityBytes)
			}
		}
	}
}
