package netconfig_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/testenv"
)

// BenchmarkPush measures declare → network.realized for a new version on 64
// hosts (a VLAN change: port group reconfigured, every host read back),
// pushed sequentially (the baseline, measured in the same run) and 16 hosts
// at a time, and reports the ratio. The probe window is 0 so only the push
// is measured. With callDelay the simulator answers every vSphere call after
// that many milliseconds, like a vCenter across a network: that is where
// pushing in parallel pays; in-process vcsim on two cores is CPU-bound.
//
//	go test -run '^$' -bench Push -benchtime 10x ./services/netconfig
func BenchmarkPush(b *testing.B) {
	for _, delayMS := range []int{0, 5} {
		var base float64
		for _, par := range []int{1, 16} {
			b.Run(fmt.Sprintf("callDelay=%dms/parallelism=%d", delayMS, par), func(b *testing.B) {
				e := newEnv(b, sim.Config{Clusters: 4, HostsPerCluster: 16}, func(c *netconfig.Config) {
					c.PushParallelism = par
					c.ProbeWindow = 0
				})
				// Set before the first declaration, while the service is idle.
				e.DC.Model().DelayConfig.Delay = delayMS
				e.declare("bench", events.NetworkSpec{VLAN: 1, CIDR: "10.1.0.0/16"})
				testenv.Wait(e.Env, func(p *events.NetworkRealized) bool { return p.Name == "bench" })
				b.ResetTimer()
				start := time.Now()
				for i := range b.N {
					v := int64(i + 2)
					e.declare("bench", events.NetworkSpec{VLAN: int(v % 4000), CIDR: "10.1.0.0/16"})
					testenv.Wait(e.Env, func(p *events.NetworkRealized) bool { return p.Name == "bench" && p.Version == v })
				}
				reportPerOp(b, start, "ms/version", par, &base)
			})
		}
	}
}

// reportPerOp reports the milliseconds each of b.N operations took since
// start (as unit) and, at a parallelism above 1, the speedup over base: the
// sequential figure, which the parallelism-1 run measured earlier in the
// same run and stored there.
func reportPerOp(b *testing.B, start time.Time, unit string, par int, base *float64) {
	per := float64(time.Since(start).Microseconds()) / float64(b.N) / 1000
	b.ReportMetric(per, unit)
	if par == 1 {
		*base = per
	} else if *base > 0 {
		b.ReportMetric(*base/per, "speedup")
	}
}
