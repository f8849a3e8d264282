// Package networkavailable keeps pods on hosts that carry every logical
// network the pod attaches to, from network-config's read model (KV
// `net-hosts`: per network, the hosts where its port group is realized and
// the hosts in its scope).
//
// The rule is strict: a network must be realized on the host, or the host
// must be in the network's scope (network-config realizes a network on
// demand on a host in scope when a pod is scheduled there). A network that is
// not declared at all, or whose scope excludes the host, fails the host; no
// network is assumed to exist everywhere, not even "default".
//
// Among feasible hosts the plugin's score prefers those where the networks
// are already realized: placing there needs no port group change.
package networkavailable

import (
	"context"

	"github.com/podvisor/podvisor/services/scheduler/framework"
)

// Name of the plugin in profiles.
const Name = "NetworkAvailable"

// Plugin is the NetworkAvailable filter and score.
type Plugin struct{}

var (
	_ framework.FilterPlugin = (*Plugin)(nil)
	_ framework.ScorePlugin  = (*Plugin)(nil)
)

// New is the plugin's factory.
func New(framework.Handle) (framework.Plugin, error) { return &Plugin{}, nil }

// Name implements framework.Plugin.
func (*Plugin) Name() string { return Name }

// Unschedulable, not unresolvable: a network's scope can be widened.
var statusNotOnHost = framework.NewStatus(framework.Unschedulable, "NetworkNotOnHost", "network backend not on host")

// Filter implements framework.FilterPlugin.
func (*Plugin) Filter(_ context.Context, _ *framework.CycleState, p *framework.PodInfo, h *framework.Host) *framework.Status {
	if ids := p.NetworkIDs(h.Owner()); ids != nil {
		for _, id := range ids {
			if h.NetworkStateByID(id) == framework.NetworkAbsent {
				return statusNotOnHost
			}
		}
		return nil
	}
	for _, n := range p.Networks {
		if h.Networks[n] == framework.NetworkAbsent {
			return statusNotOnHost
		}
	}
	return nil
}

// Score implements framework.ScorePlugin: the share of the pod's networks
// already realized on the host.
func (*Plugin) Score(_ context.Context, _ *framework.CycleState, p *framework.PodInfo, h *framework.Host) (int64, *framework.Status) {
	if len(p.Networks) == 0 {
		return framework.MaxHostScore, nil
	}
	realized := 0
	if ids := p.NetworkIDs(h.Owner()); ids != nil {
		for _, id := range ids {
			if h.NetworkStateByID(id) == framework.NetworkRealized {
				realized++
			}
		}
		return framework.MaxHostScore * int64(realized) / int64(len(p.Networks)), nil
	}
	for _, n := range p.Networks {
		if h.Networks[n] == framework.NetworkRealized {
			realized++
		}
	}
	return framework.MaxHostScore * int64(realized) / int64(len(p.Networks)), nil
}
