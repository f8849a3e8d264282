package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/services/scheduler/framework/fwtest"
	"github.com/podvisor/podvisor/services/scheduler/plugins"
	"github.com/podvisor/podvisor/services/scheduler/plugins/imagelocality"
	"github.com/podvisor/podvisor/shared/sim"
)

// noLocality is an image read model that knows of no image anywhere: the
// placement cost without Redis round trips.
type noLocality struct{}

func (noLocality) Locality(context.Context, []string) (map[string]float64, error) {
	return map[string]float64{}, nil
}

// runScheduling places n bench pods, one after the other as the service's
// loop does, with the scheduler's default profile on a snapshot of the
// simulated hosts (their real cores, memory and datastores, the default
// network realized everywhere). No bus, no ledger, no vSphere: the
// placement ceiling the pipeline could ever reach. Small runs are repeated
// on fresh snapshots until a thousand placements were timed, so the rate is
// not a clock-resolution artefact.
func runScheduling(hosts []sim.HostSpec, n int) Scheduling {
	out := Scheduling{Hosts: len(hosts)}
	size := benchPodSize()
	pods := make([]*framework.PodInfo, n)
	for i := range pods {
		pods[i] = fwtest.MakePod(fmt.Sprintf("s-%05d", i)).Namespace(Namespace).
			Size(size.CPUMilli, size.MemoryBytes).Images("registry.local/podvisor/web:1.0").Info()
	}
	var took time.Duration
	for out.Pods < 1000 {
		hs := make([]*framework.Host, len(hosts))
		for i, h := range hosts {
			hs[i] = fwtest.MakeHost(h.Name).Cluster(h.Cluster).
				Capacity(int64(h.Cores)*1000, h.MemoryBytes).Datastores(h.Datastores...).Obj()
		}
		snap := framework.NewSnapshot(hs...)
		f, err := framework.New(plugins.DefaultProfile(framework.StrategySpread), plugins.NewRegistry(), snap,
			map[string]any{imagelocality.ServiceName: noLocality{}})
		if err != nil {
			return out
		}
		start := time.Now()
		for _, p := range pods {
			r, err := f.Schedule(context.Background(), p)
			var fe *framework.FitError
			if errors.As(err, &fe) || err != nil {
				continue
			}
			snap.AddPod(r.Host.Name, framework.PodRefOf(p))
			out.Placed++
		}
		took += time.Since(start)
		out.Pods += n
	}
	out.PodsPerS = float64(out.Pods) / took.Seconds()
	return out
}
