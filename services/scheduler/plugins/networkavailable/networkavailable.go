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
// A network absent from a host may be absent everywhere because nobody
// declared it. When the service registers a Networks dependency (under
// ServiceName) the plugin says so — `network "x" does not exist`, reason
// NetworkNotFound — instead of blaming the host. Either way the pod stays
// unschedulable, not unresolvable: the network may be applied later.
//
// Among feasible hosts the plugin's score prefers those where the networks
// are already realized: placing there needs no port group change.
package networkavailable

import (
	"context"
	"fmt"

	"github.com/podvisor/podvisor/services/scheduler/framework"
)

// Name of the plugin in profiles.
const Name = "NetworkAvailable"

// ServiceName is the framework dependency (a Networks) the plugin asks
// whether a network exists at all.
const ServiceName = "networkavailable.Networks"

// Networks tells whether a logical network has a record in network-config's
// read model (KV `net-hosts`), whatever hosts carry it. The framework calls
// it from Filter, on the scheduling path.
type Networks interface {
	NetworkExists(name string) bool
}

// NetworksFunc adapts a function to Networks.
type NetworksFunc func(name string) bool

// NetworkExists implements Networks.
func (f NetworksFunc) NetworkExists(name string) bool { return f(name) }

// Plugin is the NetworkAvailable filter and score.
type Plugin struct {
	// networks is nil when the service registers none: every missing
	// network is then reported as not on the host.
	networks Networks
}

var (
	_ framework.FilterPlugin = (*Plugin)(nil)
	_ framework.ScorePlugin  = (*Plugin)(nil)
)

// New is the plugin's factory.
func New(h framework.Handle) (framework.Plugin, error) {
	n, _ := h.Service(ServiceName).(Networks)
	return &Plugin{networks: n}, nil
}

// Name implements framework.Plugin.
func (*Plugin) Name() string { return Name }

// Unschedulable, not unresolvable: a network's scope can be widened.
var statusNotOnHost = framework.NewStatus(framework.Unschedulable, "NetworkNotOnHost", "network backend not on host")

// Filter implements framework.FilterPlugin.
func (pl *Plugin) Filter(_ context.Context, _ *framework.CycleState, p *framework.PodInfo, h *framework.Host) *framework.Status {
	if ids := p.NetworkIDs(h.Owner()); ids != nil {
		for i, id := range ids {
			if h.NetworkStateByID(id) == framework.NetworkAbsent {
				return pl.absent(p.Networks[i])
			}
		}
		return nil
	}
	for _, n := range p.Networks {
		if h.Networks[n] == framework.NetworkAbsent {
			return pl.absent(n)
		}
	}
	return nil
}

// absent is the status of a host without network: not on the host, or not
// declared anywhere.
func (pl *Plugin) absent(network string) *framework.Status {
	if pl.networks == nil || pl.networks.NetworkExists(network) {
		return statusNotOnHost
	}
	return framework.NewStatus(framework.Unschedulable, "NetworkNotFound", fmt.Sprintf("network %q does not exist", network))
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
