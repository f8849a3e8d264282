package migration

import (
	"context"
	"fmt"
	"slices"
	"time"

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
// lost the network itself: network-config could not realize it there
// (NotRealized), the host could not join the network's switch
// (DVSJoinFailed), or the host's agent could not carry its port group
// (CarryFailed: vCenter may say the host is on the switch, but no traffic
// of the network passes there). A disconnected host is host.lost's to
// handle; a port group whose settings do not match fails on every host of
// the switch at once, and evicting everywhere would help nobody; so does a
// port group vCenter does not have (PortGroupNotFound: deleted by hand, or
// not created again yet after a restart).
var evacuatingReasons = []string{"NotRealized", "DVSJoinFailed", "CarryFailed"}

// networkLostRecheck is how long a host's network loss waits for its pods'
// migrations before it is looked at again: the event's deliveries, spread
// so, outlast the longest vMotion (RelocateTimeout).
func (s *Service) networkLostRecheck() time.Duration {
	if s.cfg.MaxAttempts <= 1 {
		return 5 * time.Second
	}
	return max(s.cfg.RelocateTimeout/time.Duration(s.cfg.MaxAttempts-1), time.Second)
}

// onNetworkHostFailed evicts the pods on the host that use the network, so
// that they restart on a host that carries it. A pod is never evicted in
// the middle of a migration, which would leave it half-migrated (its VM
// pulled out from under the vMotion): the migrations to or from the host
// of the network's pods that have not begun relocating fail (reason
// NetworkLost: the target cannot take the pod, or the pod is leaving the
// source anyway), and while one is still relocating or being stopped, the
// event is looked at again after it: a pod whose vMotion took it away has
// left the host, one that landed on it is evicted then.
func (s *Service) onNetworkHostFailed(ctx context.Context, m *bus.Message, p *events.NetworkHostFailed) error {
	annotateHost(ctx, p.Host)
	if !slices.Contains(evacuatingReasons, p.Reason) {
		return nil
	}
	msg := fmt.Sprintf("host %s lost network %s (%s: %s)", p.Host, p.Name, p.Reason, p.Message)
	onNetwork := func(r *events.MigrationRecord) (bool, error) {
		if r.IsVM() {
			return false, nil
		}
		pod, err := s.store.pod(ctx, r.Namespace, r.Pod)
		return pod != nil && pod.UID == r.UID && slices.Contains(pod.Networks, p.Name), err
	}
	moving, err := s.failMigrationsTouching(ctx, p.Host, onNetwork, ReasonNetworkLost, msg)
	if err != nil {
		return err
	}
	busy := map[string]bool{}
	for _, r := range moving {
		busy[r.UID] = true
	}
	pods, err := s.store.podsOnHost(ctx, p.Host)
	if err != nil {
		return err
	}
	evicted, waiting := 0, len(moving)
	for _, pod := range pods {
		if gone(pod) || pod.Phase == events.PodPhasePending || !slices.Contains(pod.Networks, p.Name) || busy[pod.UID] {
			continue
		}
		if err := s.emit(ctx, &m.Event, &events.PodEvicted{
			PodRef: events.PodRef{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID}, Host: p.Host, Reason: ReasonNetworkLost,
			Message: msg + "; the pod restarts on another host",
		}, bus.Flow(pod.TraceParent)); err != nil {
			return err
		}
		evicted++
	}
	if evicted > 0 {
		s.log.Warn("host lost a network; its pods there evicted", "host", p.Host, "network", p.Name, "reason", p.Reason, "pods", evicted)
	}
	if waiting > 0 {
		return bus.InProgress(fmt.Errorf("host %s lost network %s: %d of its pods' migrations still under way", p.Host, p.Name, waiting), s.networkLostRecheck())
	}
	return nil
}
