// Package mostallocated scores hosts by the share of CPU and memory in use
// after placing the pod: the "binpack" strategy, which fills hosts before
// opening new ones and so keeps whole hosts free for large pods and
// maintenance.
package mostallocated

import (
	"context"

	"github.com/podvisor/podvisor/services/scheduler/framework"
)

// Name of the plugin in profiles.
const Name = "MostAllocated"

// Plugin is the MostAllocated score.
type Plugin struct{}

var _ framework.ScorePlugin = (*Plugin)(nil)

// New is the plugin's factory.
func New(framework.Handle) (framework.Plugin, error) { return &Plugin{}, nil }

// Name implements framework.Plugin.
func (*Plugin) Name() string { return Name }

// Score implements framework.ScorePlugin: the mean of the used CPU and used
// memory fractions after the pod, times MaxHostScore.
func (*Plugin) Score(_ context.Context, _ *framework.CycleState, p *framework.PodInfo, h *framework.Host) (int64, *framework.Status) {
	return (used(h.RequestedCPUMilli+p.CPUMilli, h.CPUCapacityMilli) +
		used(h.RequestedMemoryBytes+p.MemoryBytes, h.MemoryCapacityBytes)) / 2, nil
}

func used(requested, capacity int64) int64 {
	if capacity <= 0 {
		return 0
	}
	if requested >= capacity {
		return framework.MaxHostScore
	}
	return requested * framework.MaxHostScore / capacity
}
