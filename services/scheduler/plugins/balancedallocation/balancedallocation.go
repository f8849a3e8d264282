// Package balancedallocation prefers hosts whose CPU and memory would be
// used in the same proportion after placing the pod, so that a host does not
// run out of one resource while the other sits idle.
package balancedallocation

import (
	"context"
	"math"

	"github.com/podvisor/podvisor/services/scheduler/framework"
)

// Name of the plugin in profiles.
const Name = "BalancedAllocation"

// Plugin is the BalancedAllocation score.
type Plugin struct{}

var _ framework.ScorePlugin = (*Plugin)(nil)

// New is the plugin's factory.
func New(framework.Handle) (framework.Plugin, error) { return &Plugin{}, nil }

// Name implements framework.Plugin.
func (*Plugin) Name() string { return Name }

// Score implements framework.ScorePlugin: MaxHostScore minus the distance
// between the CPU and memory fractions (kube-scheduler's two-resource form).
func (*Plugin) Score(_ context.Context, _ *framework.CycleState, p *framework.PodInfo, h *framework.Host) (int64, *framework.Status) {
	if h.CPUCapacityMilli <= 0 || h.MemoryCapacityBytes <= 0 {
		return 0, nil
	}
	cpu := float64(h.RequestedCPUMilli+p.CPUMilli) / float64(h.CPUCapacityMilli)
	mem := float64(h.RequestedMemoryBytes+p.MemoryBytes) / float64(h.MemoryCapacityBytes)
	if cpu > 1 {
		cpu = 1
	}
	if mem > 1 {
		mem = 1
	}
	d := cpu - mem
	if d < 0 {
		d = -d
	}
	return int64(math.Round((1 - d) * float64(framework.MaxHostScore))), nil
}
