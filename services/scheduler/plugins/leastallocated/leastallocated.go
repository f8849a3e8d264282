// Package leastallocated scores hosts by the share of CPU and memory left
// free after placing the pod: the "spread" strategy, which keeps headroom on
// every host and limits what a lost host takes down.
package leastallocated

import (
	"context"

	"github.com/podvisor/podvisor/services/scheduler/framework"
)

// Name of the plugin in profiles.
const Name = "LeastAllocated"

// Plugin is the LeastAllocated score.
type Plugin struct{}

var _ framework.ScorePlugin = (*Plugin)(nil)

// New is the plugin's factory.
func New(framework.Handle) (framework.Plugin, error) { return &Plugin{}, nil }

// Name implements framework.Plugin.
func (*Plugin) Name() string { return Name }

// Score implements framework.ScorePlugin: the mean of the free CPU and free
// memory fractions after the pod, times MaxHostScore.
func (*Plugin) Score(_ context.Context, _ *framework.CycleState, p *framework.PodInfo, h *framework.Host) (int64, *framework.Status) {
	return (free(h.RequestedCPUMilli+p.CPUMilli, h.CPUCapacityMilli) +
		free(h.RequestedMemoryBytes+p.MemoryBytes, h.MemoryCapacityBytes)) / 2, nil
}

func free(requested, capacity int64) int64 {
	if capacity <= 0 || requested >= capacity {
		return 0
	}
	return (capacity - requested) * framework.MaxHostScore / capacity
}
