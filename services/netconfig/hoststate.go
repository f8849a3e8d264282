package netconfig

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig/fabric"
	"github.com/podvisor/podvisor/shared/bus"
)

// Final state per host. After any change to the networks (a version
// committed or rolled back, a network deleted) and at every resync, the
// service computes, for every connected host, the whole set of port groups
// it must carry — every network whose resolved scope holds the host — and
// sends each host whose set changed one network.host.desired, on the
// host's own subject (pv.network.host.desired.<host>), all hosts in
// parallel (Config.PushParallelism at a time). The host agent diffs it
// against what the host really has and applies only the difference
// (services/hostagent), reporting network.host.applied.

// hostStateInterval batches the pushes of final states: changes to several
// networks within it go out as one state per host.
const hostStateInterval = 100 * time.Millisecond

// hostStatesSoon asks hostStateLoop to push the hosts' final states.
func (s *Service) hostStatesSoon() {
	select {
	case s.hostStatesDue <- struct{}{}:
	default: // already due
	}
}

// hostStateLoop pushes the final states when due, at most once per
// hostStateInterval.
func (s *Service) hostStateLoop(ctx context.Context) {
	t := time.NewTicker(hostStateInterval)
	defer t.Stop()
	due := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.hostStatesDue:
			due = true
		case <-t.C:
			if !due {
				continue
			}
			if err := s.PushHostStates(ctx, false); err != nil {
				if ctx.Err() == nil {
					s.log.Warn("push hosts' final network state", "err", err)
				}
				continue // stays due
			}
			due = false
		}
	}
}

// DesiredHostStates computes every connected host's final desired state
// from the network records, the hosts in each network's scope at its last
// push (their states in `net-realized`) and the port groups in vCenter.
func (s *Service) DesiredHostStates(ctx context.Context) (map[string][]events.HostPortGroup, error) {
	recs, err := s.store.list(ctx)
	if err != nil {
		return nil, err
	}
	hosts, err := s.fab.Hosts(ctx)
	if err != nil {
		return nil, err
	}
	pgs, err := s.fab.PortGroups(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string][]events.HostPortGroup{}
	for _, h := range hosts {
		if h.ConnectionState == fabric.Connected {
			out[h.Name] = []events.HostPortGroup{}
		}
	}
	for _, r := range recs {
		if r.Version == 0 || r.Status == events.NetworkStatusDeleting {
			continue
		}
		pg, ok := pgs[events.PortGroupName(r.Name)]
		if !ok {
			continue
		}
		scope, err := s.store.hostStates(ctx, r.Name)
		if err != nil {
			return nil, err
		}
		for h := range scope {
			if _, connected := out[h]; !connected {
				continue
			}
			out[h] = append(out[h], events.HostPortGroup{
				Network: r.Name, PortGroup: pg.Name, Key: pg.Key, Switch: r.Switch,
				VLAN: r.Spec.VLAN, MTU: r.Spec.Properties.EffectiveMTU(), Version: r.Version,
			})
		}
	}
	for h := range out {
		slices.SortFunc(out[h], func(a, b events.HostPortGroup) int { return strings.Compare(a.PortGroup, b.PortGroup) })
	}
	return out, nil
}

// PushHostStates sends every host whose final state changed since the last
// push (every host, with all) its network.host.desired, in parallel. Each
// state travels on its host's own subject, which only that host's agent
// consumes; a host whose state is unchanged gets nothing (its agent
// re-applies the last state itself to repair drift on the host).
func (s *Service) PushHostStates(ctx context.Context, all bool) error {
	states, err := s.DesiredHostStates(ctx)
	if err != nil {
		return err
	}
	msgs := make([]*events.NetworkHostDesired, 0, len(states))
	for h, pgs := range states {
		d := &events.NetworkHostDesired{Host: h, Digest: events.HostStateDigest(pgs), PortGroups: pgs}
		if !all && s.lastPushed(ctx, h) == d.Digest {
			continue
		}
		msgs = append(msgs, d)
	}
	return s.PublishHostStates(ctx, msgs, s.cfg.PushParallelism)
}

// lastPushed is the digest of the last state sent to host: remembered, or
// read from the newest message on the host's subject (after a restart), so
// a restarted service does not send every host its state again.
func (s *Service) lastPushed(ctx context.Context, host string) string {
	if v, ok := s.hostDigests.Load(host); ok {
		return v.(string)
	}
	st, err := s.bus.JetStream().Stream(ctx, events.StreamNetworks)
	if err != nil {
		return ""
	}
	raw, err := st.GetLastMsgForSubject(ctx, events.SubjectNetworkHostDesiredFor(host))
	if err != nil {
		return "" // none yet (or unreadable): send it
	}
	ev, err := bus.DecodeMessage(raw)
	if err != nil {
		return ""
	}
	v, err := events.Decode(ev.Type(), ev.Data())
	if err != nil {
		return ""
	}
	d, ok := v.(*events.NetworkHostDesired)
	if !ok {
		return ""
	}
	s.hostDigests.Store(host, d.Digest)
	return d.Digest
}

// PublishHostStates publishes one final state per host, parallelism at a
// time (1: one after the other).
func (s *Service) PublishHostStates(ctx context.Context, msgs []*events.NetworkHostDesired, parallelism int) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(parallelism, 1))
	errs := make([]error, len(msgs))
	for i, d := range msgs {
		g.Go(func() error {
			// A fresh id each time: a state sent again (a resync) must reach
			// a host that drifted since.
			if err := s.out.Emit(gctx, nil, d); err != nil {
				errs[i] = fmt.Errorf("host %s: %w", d.Host, err)
				return nil
			}
			s.hostDigests.Store(d.Host, d.Digest)
			return nil
		})
	}
	_ = g.Wait()
	return errors.Join(errs...)
}
