// Package antiaffinity enforces required pod anti-affinity per host: a pod
// whose anti-affinity term selects pods already on a host (in the term's
// namespaces, by default the pod's own) is kept off that host. The pods on a
// host and their labels come from the ledger, so two schedulers agree.
//
// Only the incoming pod's terms are evaluated (not the terms of pods already
// placed), and only the per-host topology (kubernetes.io/hostname or
// podvisor.io/host); other topology keys are refused when the pod is
// compiled, with the field named.
//
// events.ValidatePod admits exactly this subset (required terms, per-host
// topology), so every rule that reaches the scheduler is enforced.
package antiaffinity

import (
	"context"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/podvisor/podvisor/services/scheduler/framework"
)

// Name of the plugin in profiles.
const Name = "PodAntiAffinity"

// Plugin is the PodAntiAffinity filter.
type Plugin struct{}

var _ framework.FilterPlugin = (*Plugin)(nil)

// New is the plugin's factory.
func New(framework.Handle) (framework.Plugin, error) { return &Plugin{}, nil }

// Name implements framework.Plugin.
func (*Plugin) Name() string { return Name }

var statusConflict = framework.NewStatus(framework.Unschedulable, "PodAntiAffinity", "pod anti-affinity rules")

// Filter implements framework.FilterPlugin.
func (*Plugin) Filter(_ context.Context, _ *framework.CycleState, p *framework.PodInfo, h *framework.Host) *framework.Status {
	if len(p.AntiAffinity) == 0 || len(h.Pods) == 0 {
		return nil
	}
	for _, other := range h.Pods {
		if other.UID == p.UID {
			continue // the pod itself (a migration's source allocation)
		}
		set := labels.Set(other.Labels)
		for _, t := range p.AntiAffinity {
			if t.Namespaces[other.Namespace] && t.Selector.Matches(set) {
				return statusConflict
			}
		}
	}
	return nil
}
