package netconfig

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"go.opentelemetry.io/otel/attribute"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// What host agents report. network.host.applied says, per host, which port
// groups of its final state the host could not carry. vCenter may read such
// a host back as carrying the port group (its switch membership says so)
// while the host itself does not pass the network's traffic, so the agent's
// word decides: the network is Failed on that host (record, `net-hosts`
// failed, network.host.failed with the agent's reason), not usable there
// for placement or the availability query, until a report from the host
// shows the port group carried. The agent retries on its own
// (hostagent NetworkRetry), so a host that recovers reports it.

// onHostApplied records the port groups a host could not carry, and clears
// those it now carries.
func (s *Service) onHostApplied(ctx context.Context, m *bus.Message, p *events.NetworkHostApplied) error {
	annotate(ctx, attribute.String("host", p.Host), attribute.Int("failed", len(p.Failed)))
	if sent := s.lastPushed(ctx, p.Host); sent != "" && sent != p.Digest {
		return nil // about a state since replaced; the newer one's report follows
	}
	failed := map[string]events.PortGroupFailure{}
	for _, f := range p.Failed {
		failed[f.PortGroup] = f
	}
	recs, err := s.store.list(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range recs {
		f, bad := failed[events.PortGroupName(r.Name)]
		_, marked := r.ApplyFailed[p.Host]
		if r.Version == 0 || r.Status == events.NetworkStatusDeleting || (!bad && !marked) {
			continue
		}
		if bad {
			st, err := s.store.hostState(ctx, r.Name, p.Host)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if st == nil {
				continue // not the host's network (a port group it failed to drop)
			}
		}
		if err := s.markApplied(ctx, &m.Event, r.Name, p.Host, bad, f); err != nil {
			errs = append(errs, fmt.Errorf("network %s on host %s: %w", r.Name, p.Host, err))
		}
	}
	return errors.Join(errs...)
}

// markApplied records (bad) or clears a host's apply failure on a network
// and reconciles it, which records the host's state, the availability and
// the events.
func (s *Service) markApplied(ctx context.Context, cause *event.Event, name, host string, bad bool, f events.PortGroupFailure) error {
	defer s.locks.Lock(name)()
	changed := false
	_, err := s.store.update(ctx, name, func(r *events.NetworkRecord) (bool, error) {
		prev, marked := r.ApplyFailed[host]
		if !bad {
			delete(r.ApplyFailed, host)
			changed = marked
			return marked, nil
		}
		st := events.NetworkHostState{
			State: events.NetworkHostStateFailed, Reason: f.Reason,
			Message: fmt.Sprintf("host agent of %s could not carry port group %s: %s", host, f.PortGroup, f.Message), UpdatedAt: time.Now().UTC(),
		}
		if marked && prev.Reason == st.Reason && prev.Message == st.Message {
			return false, nil // the agent's retry failed the same way
		}
		if r.ApplyFailed == nil {
			r.ApplyFailed = map[string]events.NetworkHostState{}
		}
		r.ApplyFailed[host] = st
		changed = true
		return true, nil
	})
	if err != nil || !changed {
		return err
	}
	if bad {
		s.log.Warn("host could not carry a network", "network", name, "host", host, "reason", f.Reason, "message", f.Message)
	} else {
		s.log.Info("host carries a network again", "network", name, "host", host)
	}
	return s.reconcileLocked(ctx, cause, name)
}

// withApplyFailures returns the read-back host states of a rollout with
// the failures the hosts' agents reported (applyFailed) in place of
// theirs.
func withApplyFailures(applyFailed, readBack map[string]events.NetworkHostState) map[string]events.NetworkHostState {
	hosts := maps.Clone(readBack)
	if hosts == nil {
		hosts = map[string]events.NetworkHostState{}
	}
	for h, st := range applyFailed {
		if _, inScope := hosts[h]; inScope {
			hosts[h] = st
		}
	}
	return hosts
}

// forgetApplyFailures drops the reported failures of hosts no longer in
// scope from r and says whether it dropped any. Called inside commit's
// record update.
func forgetApplyFailures(r *events.NetworkRecord, hosts map[string]events.NetworkHostState) bool {
	changed := false
	for h := range r.ApplyFailed {
		if _, inScope := hosts[h]; !inScope {
			delete(r.ApplyFailed, h)
			changed = true
		}
	}
	return changed
}
