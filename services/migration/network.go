package migration

import (
	"context"
	"fmt"
	"slices"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// Networks and migrations. A vMotion moves the pod's ports from the source
// host's port group to the target's, so both hosts must carry every network
// of the pod. "Available" is events.NetworkUsable of network-config's read
// model, the definition the scheduler places pods and reserves targets
// with: realized on the host, or in scope with nothing failed there. A
// target only in scope is realized by network-config when the scheduler
// reserves it (migration.target.reserved); the precheck waits for that.
//
// A host that loses a network (network.host.failed for a reason of that
// host) has its pods on that network evicted: they restart on a host that
// carries it, as for a lost host.

// checkNetworks checks every network of the pod on the source and the
// target.
func (s *Service) checkNetworks(ctx context.Context, r *events.MigrationRecord, pod *events.PodRecord) error {
	for _, n := range pod.Networks {
		a, err := s.store.network(ctx, n)
		if err != nil {
			return err
		}
		if a == nil {
			return refuse(ReasonNetworkMissingOnTarget, "network %s of pod %s does not exist", n, r.Key())
		}
		if st := a.On(r.SourceHost); !events.NetworkUsable(st) {
			return refuse(ReasonNetworkMissingOnSource, "network %s is not available on source host %s (%s): the pod's port there cannot be moved",
				n, r.SourceHost, describeState(st))
		}
		switch st := a.On(r.TargetHost); {
		case !events.NetworkUsable(st):
			where := "no host"
			if len(a.Hosts) > 0 {
				where = summarizeHosts(a.Hosts)
			}
			return refuse(ReasonNetworkMissingOnTarget, "network %s is not available on %s (%s); it is realized on %s", n, r.TargetHost, describeState(st), where)
		case st == events.NetworkOnHostInScope:
			// Retried by the precheck loop while network-config realizes it.
			return bus.WithReason(ReasonNetworkMissingOnTarget, fmt.Errorf("network %s is in the scope of %s but not realized there yet", n, r.TargetHost))
		}
	}
	return nil
}

func describeState(st string) string {
	switch st {
	case events.NetworkOnHostFailed:
		return "in its scope, but failed there"
	case events.NetworkOnHostNotInScope:
		return "not in its scope"
	}
	return st
}

// evacuatingReasons are the network.host.failed reasons that mean the host
// lost the network itself. A disconnected host is host.lost's to handle;
// a port group whose settings do not match fails on every host of the
// switch at once, and evicting everywhere would help nobody.
var evacuatingReasons = []string{"NotRealized", "DVSJoinFailed"}

// onNetworkHostFailed evicts the pods on the host that use the network.
func (s *Service) onNetworkHostFailed(ctx context.Context, m *bus.Message, p *events.NetworkHostFailed) error {
	annotateHost(ctx, p.Host)
	if !slices.Contains(evacuatingReasons, p.Reason) {
		return nil
	}
	pods, err := s.store.podsOnHost(ctx, p.Host)
	if err != nil {
		return err
	}
	evicted := 0
	for _, pod := range pods {
		if gone(pod) || pod.Phase == events.PodPhasePending || !slices.Contains(pod.Networks, p.Name) {
			continue
		}
		if err := s.emit(ctx, &m.Event, &events.PodEvicted{
			PodRef: events.PodRef{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID}, Host: p.Host, Reason: ReasonNetworkLost,
			Message: fmt.Sprintf("host %s lost network %s (%s: %s); the pod restarts on another host", p.Host, p.Name, p.Reason, p.Message),
		}, bus.Flow(pod.TraceParent)); err != nil {
			return err
		}
		evicted++
	}
	if evicted > 0 {
		s.log.Warn("host lost a network; its pods there evicted", "host", p.Host, "network", p.Name, "reason", p.Reason, "pods", evicted)
	}
	return nil
}
