// Package hostselector matches a pod's nodeSelector and required node
// affinity against host labels. Host labels come from the inventory: vSphere
// custom attributes and tags on the host, plus podvisor.io/host (and
// Kubernetes' kubernetes.io/hostname, both the host's name) and
// podvisor.io/cluster, so `nodeSelector: {podvisor.io/cluster: cluster-1}`
// pins a pod to a cluster. Required node affinity (matchExpressions over
// host labels, the part events.ValidatePod admits) is matched too.
package hostselector

import (
	"context"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/podvisor/podvisor/services/scheduler/framework"
)

// Name of the plugin in profiles.
const Name = "HostSelector"

// Plugin is the HostSelector filter.
type Plugin struct{}

var _ framework.FilterPlugin = (*Plugin)(nil)

// New is the plugin's factory.
func New(framework.Handle) (framework.Plugin, error) { return &Plugin{}, nil }

// Name implements framework.Plugin.
func (*Plugin) Name() string { return Name }

// Host labels can be changed by an operator: Unschedulable.
var (
	statusSelector = framework.NewStatus(framework.Unschedulable, "HostSelectorMismatch", "host labels do not match the pod's nodeSelector")
	statusAffinity = framework.NewStatus(framework.Unschedulable, "HostAffinityMismatch", "host labels do not match the pod's node affinity")
)

// Filter implements framework.FilterPlugin.
func (*Plugin) Filter(_ context.Context, _ *framework.CycleState, p *framework.PodInfo, h *framework.Host) *framework.Status {
	for k, v := range p.NodeSelector {
		if hv, ok := h.Labels[k]; !ok || hv != v {
			return statusSelector
		}
	}
	if len(p.HostAffinity) > 0 {
		set := labels.Set(h.Labels)
		for _, sel := range p.HostAffinity {
			if sel.Matches(set) {
				return nil
			}
		}
		return statusAffinity
	}
	return nil
}
