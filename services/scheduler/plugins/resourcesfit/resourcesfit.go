// Package resourcesfit filters out hosts without room for the pod VM: CPU,
// memory and pod count against what the ledger (and the pods assumed in the
// current batch) already hold.
//
// The pod's size is events.SizePodVM, which already contains the pod VM
// overhead; it is compared as is, never padded again. A pod larger than a
// host's whole capacity gets an unresolvable status naming the resource
// ("pod memory exceeds host capacity"), so an impossible pod says which
// resource makes it impossible.
package resourcesfit

import (
	"context"

	"github.com/podvisor/podvisor/services/scheduler/framework"
)

// Name of the plugin in profiles.
const Name = "ResourcesFit"

// Plugin is the ResourcesFit filter.
type Plugin struct{}

var _ framework.FilterPlugin = (*Plugin)(nil)

// New is the plugin's factory.
func New(framework.Handle) (framework.Plugin, error) { return &Plugin{}, nil }

// Name implements framework.Plugin.
func (*Plugin) Name() string { return Name }

var (
	statusCPUTooLarge    = framework.NewStatus(framework.UnschedulableAndUnresolvable, "CPUExceedsCapacity", "pod CPU exceeds host capacity")
	statusMemoryTooLarge = framework.NewStatus(framework.UnschedulableAndUnresolvable, "MemoryExceedsCapacity", "pod memory exceeds host capacity")
	statusBothTooLarge   = framework.NewStatus(framework.UnschedulableAndUnresolvable, "CPUAndMemoryExceedCapacity", "pod CPU and memory exceed host capacity")
	statusNoCPU          = framework.NewStatus(framework.Unschedulable, "InsufficientCPU", "insufficient cpu")
	statusNoMemory       = framework.NewStatus(framework.Unschedulable, "InsufficientMemory", "insufficient memory")
	statusTooManyPods    = framework.NewStatus(framework.Unschedulable, "TooManyPods", "too many pods")
)

// Filter implements framework.FilterPlugin. Memory is checked first: it is
// the resource that is never overcommitted and usually the one that runs
// out, so it is the most useful reason to report. A pod larger than the
// host in both is told so: making it smaller in one would not do.
func (*Plugin) Filter(_ context.Context, _ *framework.CycleState, p *framework.PodInfo, h *framework.Host) *framework.Status {
	switch {
	case p.MemoryBytes > h.MemoryCapacityBytes && p.CPUMilli > h.CPUCapacityMilli:
		return statusBothTooLarge
	case p.MemoryBytes > h.MemoryCapacityBytes:
		return statusMemoryTooLarge
	case p.CPUMilli > h.CPUCapacityMilli:
		return statusCPUTooLarge
	case h.RequestedMemoryBytes+p.MemoryBytes > h.MemoryCapacityBytes:
		return statusNoMemory
	case h.RequestedCPUMilli+p.CPUMilli > h.CPUCapacityMilli:
		return statusNoCPU
	case h.MaxPods > 0 && !p.VM && h.PodCount() >= h.MaxPods:
		return statusTooManyPods
	}
	return nil
}
