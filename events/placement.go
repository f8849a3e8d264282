package events

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Network-aware placement. A candidate host can turn out not to carry one of
// the pod's networks: network-config's availability query says so before the
// pod is bound there, or its attach fails there with a host-specific reason
// (pod.network.failed). Either way the pod is placed on another host instead
// of failing; each such refusal is a HostRefusal kept on the pod's record and
// shown on its NetworkRefused condition.

// Where a network stands on one host (NetworkAvailability.On,
// NetworkAvailabilityAnswer.State).
const (
	// NetworkOnHostRealized: the network's current version is realized on
	// the host.
	NetworkOnHostRealized = "Realized"
	// NetworkOnHostInScope: the host is in the network's scope and nothing
	// failed there; network-config realizes it when a pod needs it.
	NetworkOnHostInScope = "InScope"
	// NetworkOnHostFailed: the host is in scope but does not carry the
	// network (its last push failed there, or the host reads back without
	// it).
	NetworkOnHostFailed = "Failed"
	// NetworkOnHostNotInScope: the host is outside the network's scope (or
	// the network does not exist).
	NetworkOnHostNotInScope = "NotInScope"
)

// NetworkUsable is the one definition of "the network is available on the
// host" that the scheduler (placing a pod, reserving a migration target)
// and the migration precheck (source and target) share: realized there, or
// in scope with nothing failed there (network-config realizes it on
// demand).
func NetworkUsable(state string) bool {
	return state == NetworkOnHostRealized || state == NetworkOnHostInScope
}

// Reasons of pod.network.failed that are about the host rather than the
// network or the pod: another host may well carry the network.
const (
	// ReasonNotInScope: the host is outside the network's scope.
	ReasonNotInScope = "NotInScope"
	// ReasonNotRealizedOnHost: the network could not be realized on the
	// host.
	ReasonNotRealizedOnHost = "NotRealizedOnHost"
	// ReasonNetworkUnavailable: network-config's availability query said
	// the network is not available on the host (a refusal before binding).
	ReasonNetworkUnavailable = "NetworkUnavailable"
)

// HostSpecificNetworkReason reports whether a pod.network.failed reason is
// about the host it was scheduled to, so that the pod is placed on another
// host rather than failed.
func HostSpecificNetworkReason(reason string) bool {
	return reason == ReasonNotInScope || reason == ReasonNotRealizedOnHost || reason == ReasonNetworkUnavailable
}

// MaxNetworkRefusals bounds how many hosts may refuse a pod's network on
// attach before the pod fails: each refusal places it on another host.
const MaxNetworkRefusals = 3

// PodConditionNetworkRefused is True once a host refused the pod's network;
// its message lists every refusal, first first.
const PodConditionNetworkRefused = "NetworkRefused"

// HostRefusal is one host refusing a pod's network.
type HostRefusal struct {
	// Host that refused.
	Host string `json:"host"`
	// Network that is not available there.
	Network string `json:"network"`
	// Reason is a CamelCase word (NetworkUnavailable, NotRealizedOnHost,
	// NotInScope).
	Reason string `json:"reason"`
	// Message explains for a person.
	Message string `json:"message,omitempty"`
	// OnAttach: the refusal came back from the attach
	// (pod.network.failed) rather than from the query before binding; only
	// these count towards MaxNetworkRefusals.
	OnAttach bool `json:"onAttach,omitempty"`
}

func (r HostRefusal) String() string {
	s := fmt.Sprintf("%s: network %s %s", r.Host, r.Network, r.Reason)
	if r.Message != "" {
		s += " (" + r.Message + ")"
	}
	return s
}

func validateRefusals(p *field.Path, rs []HostRefusal) field.ErrorList {
	var errs field.ErrorList
	for i, r := range rs {
		errs = append(errs, validateHostName(p.Index(i).Child("host"), r.Host)...)
		errs = append(errs, validateDNSLabel(p.Index(i).Child("network"), r.Network)...)
		errs = append(errs, validateReason(p.Index(i).Child("reason"), r.Reason)...)
	}
	return errs
}

// AddNetworkRefusals records refusals on the pod (a host refusing the same
// network the same way again is not counted twice); it reports whether
// anything changed.
func (r *PodRecord) AddNetworkRefusals(rs []HostRefusal) bool {
	changed := false
	for _, n := range rs {
		dup := false
		for _, o := range r.NetworkRefusals {
			if o.Host == n.Host && o.Network == n.Network && o.OnAttach == n.OnAttach {
				dup = true
				break
			}
		}
		if !dup {
			r.NetworkRefusals = append(r.NetworkRefusals, n)
			changed = true
		}
	}
	return changed
}

// NetworkRefusalMessage lists the refusals, first first, for the
// NetworkRefused condition.
func (r *PodRecord) NetworkRefusalMessage() string {
	parts := make([]string, len(r.NetworkRefusals))
	for i, x := range r.NetworkRefusals {
		parts[i] = x.String()
	}
	return "refused by " + strings.Join(parts, "; ")
}

// AttachRefusals counts the refusals that came back from attaches.
func (r *PodRecord) AttachRefusals() int {
	n := 0
	for _, x := range r.NetworkRefusals {
		if x.OnAttach {
			n++
		}
	}
	return n
}

// RefusedHosts lists the hosts that refused the pod's network.
func (r *PodRecord) RefusedHosts() map[string]bool {
	out := map[string]bool{}
	for _, x := range r.NetworkRefusals {
		out[x.Host] = true
	}
	return out
}
