package netconfig

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/vmware/govmomi/vim25/types"
	"go.opentelemetry.io/otel/attribute"
	"golang.org/x/sync/errgroup"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig/fabric"
	"github.com/podvisor/podvisor/shared/bus"
)

// Host failure reasons (NetworkHostState.Reason, network.host.failed).
const (
	ReasonHostDisconnected = "HostDisconnected"
	ReasonDVSJoinFailed    = "DVSJoinFailed"
	ReasonReadBackFailed   = "ReadBackFailed"
	ReasonNotRealized      = "NotRealized"
	ReasonConfigMismatch   = "ConfigMismatch"
	ReasonConnectivityLost = "ConnectivityLost"
)

// rollout is the outcome of pushing one version of a network.
type rollout struct {
	name       string
	switchName string
	scope      []fabric.Host
	hosts      map[string]events.NetworkHostState
	// changed: vCenter was changed (port group created or reconfigured, a
	// host joined), so management connectivity must be probed.
	changed bool
	// lost lists hosts that were connected before the change and stopped
	// responding within the probe window.
	lost []string
}

// reconcile converges vCenter to a network's record: the current version on
// every host in scope. It is what every trigger ends in (declaration,
// restore, a host joining, resync) and is safe to repeat.
func (s *Service) reconcile(ctx context.Context, cause *event.Event, name string) error {
	defer s.locks.Lock(name)()
	return s.reconcileLocked(ctx, cause, name)
}

func (s *Service) reconcileLocked(ctx context.Context, cause *event.Event, name string) error {
	rec, _, err := s.store.get(ctx, name)
	if err != nil || rec == nil {
		return err
	}
	switch {
	case rec.Status == events.NetworkStatusDeleting:
		return s.deleteLocked(ctx, cause, name)
	case rec.Version == 0:
		// Nothing applied (rejected, or a first version rolled back): make
		// sure no port group lingers.
		if _, err := s.fab.RemovePortGroup(ctx, events.PortGroupName(name)); err != nil {
			return err
		}
		return s.store.publishAvailability(ctx, rec, nil)
	}
	ro, err := s.apply(ctx, rec, true)
	if err != nil {
		return err
	}
	if len(ro.lost) > 0 {
		return s.rollback(ctx, cause, rec, ro)
	}
	return s.commit(ctx, cause, rec.Version, ro)
}

// apply pushes rec's current version: the switch of its scope exists, the
// port group carries the version's settings, every host in scope is a
// member (the missing ones join in one batch), hosts out of scope have left,
// and each host's realized state is read back, in parallel and bounded by
// Config.PushParallelism. With probe, the management connectivity of the
// hosts is then watched for the probe window if anything changed.
func (s *Service) apply(ctx context.Context, rec *events.NetworkRecord, probe bool) (ro *rollout, err error) {
	ctx, sp := span(ctx, "netconfig push", attribute.String("network", rec.Name), attribute.Int64("network.version", rec.Version))
	defer func() { end(sp, err) }()
	hosts, err := s.fab.Hosts(ctx)
	if err != nil {
		return nil, err
	}
	ro = &rollout{
		name:       rec.Name,
		switchName: s.switchFor(rec.Spec.Scope),
		scope:      inScope(rec.Spec.Scope, hosts),
		hosts:      map[string]events.NetworkHostState{},
	}
	spec := portGroupSpec(rec.Name, rec.Version, rec.Spec)
	sw, err := s.fab.EnsureSwitch(ctx, ro.switchName, max(int32(s.cfg.SwitchMTU), spec.MTU))
	if err != nil {
		return nil, err
	}
	if spec.MTU > sw.MaxMTU {
		if err := s.fab.RaiseMTU(ctx, ro.switchName, spec.MTU); err != nil {
			return nil, err
		}
		ro.changed = true
	}
	pgChanged, err := s.fab.EnsurePortGroup(ctx, ro.switchName, spec)
	if err != nil {
		return nil, err
	}
	ro.changed = ro.changed || pgChanged
	pg, ok, err := s.fab.FindPortGroup(ctx, spec.Name)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("port group %s: missing right after it was ensured", spec.Name)
	}

	// A scope change moved the port group to another switch: the old scope
	// switch is cleaned once no podvisor port group is left on it.
	if prev := rec.Switch; prev != "" && prev != ro.switchName && prev != s.cfg.AllHostsSwitch {
		if err := s.cleanSwitch(ctx, prev); err != nil {
			return nil, err
		}
		ro.changed = true
	}

	// Narrowed scope: hosts that are members but no longer in scope leave.
	// Never on the all-hosts switch, which other things may rely on.
	if ro.switchName != s.cfg.AllHostsSwitch {
		inScopeRefs := map[types.ManagedObjectReference]bool{}
		for _, h := range ro.scope {
			inScopeRefs[h.Ref] = true
		}
		for _, m := range sw.Members {
			if !inScopeRefs[m] {
				if _, err := s.fab.Leave(ctx, ro.switchName, m); err != nil {
					return nil, err
				}
				ro.changed = true
			}
		}
	}

	// Hosts join in one batch; a batch that fails (one bad host) falls back
	// to per-host joins below, so the failure stays that host's.
	var missing []types.ManagedObjectReference
	for _, h := range ro.scope {
		if h.ConnectionState == fabric.Connected && !sw.IsMember(h.Ref) {
			missing = append(missing, h.Ref)
		}
	}
	members := map[types.ManagedObjectReference]bool{}
	for _, m := range sw.Members {
		members[m] = true
	}
	if len(missing) > 0 {
		joined, err := s.fab.JoinAll(ctx, ro.switchName, missing)
		if err != nil {
			s.log.Warn("batch join failed, joining hosts one by one", "switch", ro.switchName, "err", err)
		}
		for _, j := range joined {
			members[j] = true
		}
		ro.changed = ro.changed || len(joined) > 0
	}

	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.cfg.PushParallelism)
	for _, h := range ro.scope {
		g.Go(func() error {
			st, joined := s.pushHost(gctx, ro.switchName, pg, spec, rec.Version, h, members[h.Ref])
			mu.Lock()
			ro.hosts[h.Name] = st
			ro.changed = ro.changed || joined
			mu.Unlock()
			return nil
		})
	}
	_ = g.Wait() // per-host failures are host states, not errors

	if probe && ro.changed && s.cfg.ProbeWindow > 0 {
		var watch []fabric.Host
		for _, h := range ro.scope {
			if h.ConnectionState == fabric.Connected {
				watch = append(watch, h)
			}
		}
		ro.lost, err = s.probe(ctx, watch)
		if err != nil {
			return nil, err
		}
	}
	return ro, nil
}

// pushHost brings one host to the version and reads back what it carries:
// the diff from what the host has is joining the switch (the port group's
// settings are switch-wide and were set once before the hosts).
func (s *Service) pushHost(ctx context.Context, switchName string, pg fabric.PortGroup, spec fabric.PortGroupSpec, version int64, h fabric.Host, member bool) (st events.NetworkHostState, joined bool) {
	ctx, sp := span(ctx, "netconfig push host", attribute.String("host", h.Name), attribute.Int64("network.version", version))
	defer func() {
		sp.SetAttributes(attribute.String("state", st.State), attribute.String("reason", st.Reason), attribute.Bool("joined", joined))
		sp.End()
	}()
	now := time.Now().UTC()
	failed := func(reason, format string, args ...any) events.NetworkHostState {
		return events.NetworkHostState{State: events.NetworkHostStateFailed, Reason: reason, Message: fmt.Sprintf(format, args...), UpdatedAt: now}
	}
	if h.ConnectionState != fabric.Connected {
		return failed(ReasonHostDisconnected, "host %s is %s; it gets version %d when it reconnects", h.Name, h.ConnectionState, version), false
	}
	if !member {
		var err error
		if joined, err = s.fab.Join(ctx, switchName, h.Ref); err != nil {
			return failed(ReasonDVSJoinFailed, "join switch %s: %v", switchName, err), false
		}
	}
	view, err := s.fab.ObserveHost(ctx, h.Ref)
	if err != nil {
		return failed(ReasonReadBackFailed, "%v", err), joined
	}
	if !view.Carries(pg.Ref) {
		return failed(ReasonNotRealized, "port group %s is not among the host's networks after joining switch %s", pg.Name, switchName), joined
	}
	if !pg.Matches(spec) {
		return failed(ReasonConfigMismatch, "port group %s reads back as vlan %d %q, want vlan %d %q", pg.Name, pg.VLAN, pg.Description, spec.VLAN, spec.Description), joined
	}
	return events.NetworkHostState{Version: version, State: events.NetworkHostStateReady, UpdatedAt: now}, joined
}

// probe watches the management connectivity of hosts for the probe window,
// the way an operator would: vCenter's view of each host's connection
// state. A host that stops responding after a network change has lost its
// management network to it.
func (s *Service) probe(ctx context.Context, hosts []fabric.Host) (lostHosts []string, err error) {
	if len(hosts) == 0 {
		return nil, nil
	}
	ctx, sp := span(ctx, "netconfig probe", attribute.Int("hosts", len(hosts)), attribute.String("window", s.cfg.ProbeWindow.String()))
	defer func() {
		sp.SetAttributes(attribute.StringSlice("lost", lostHosts))
		end(sp, err)
	}()
	want := map[string]bool{}
	for _, h := range hosts {
		want[h.Name] = true
	}
	lost := map[string]bool{}
	deadline := time.Now().Add(s.cfg.ProbeWindow)
	for {
		now, err := s.fab.Hosts(ctx)
		if err != nil {
			return nil, fmt.Errorf("probe management connectivity: %w", err)
		}
		for _, h := range now {
			if want[h.Name] && h.ConnectionState != fabric.Connected {
				lost[h.Name] = true
			}
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(s.cfg.ProbeInterval):
		}
	}
	out := make([]string, 0, len(lost))
	for h := range lost {
		out = append(out, h)
	}
	slices.Sort(out)
	return out, nil
}

// rollback undoes a version that cut hosts off their management network:
// the port group goes back to the last good version (or away, when there is
// none), the bad version is marked rolled back in the history with the
// reason, and network.rolledback names the hosts.
//
// A DVS port group's settings are switch-wide, so the whole network returns
// to the good version, not only the hosts that lost connectivity: the others
// would be cut off by the same setting as soon as their uplinks saw it.
func (s *Service) rollback(ctx context.Context, cause *event.Event, bad *events.NetworkRecord, ro *rollout) (err error) {
	ctx, sp := span(ctx, "netconfig rollback", attribute.String("network", bad.Name), attribute.Int64("network.version", bad.Version),
		attribute.StringSlice("lost", ro.lost))
	defer func() { end(sp, err) }()
	from := bad.Version
	target := bad.LastGoodVersion
	if target >= from {
		target = 0
	}
	msg := fmt.Sprintf("version %d (vlan %d) cut %s off the management network within %s; ",
		from, bad.Spec.VLAN, strings.Join(ro.lost, ", "), s.cfg.ProbeWindow)
	if target > 0 {
		msg += fmt.Sprintf("rolled back to version %d", target)
	} else {
		msg += "no earlier good version: port group removed"
	}
	s.log.Warn("rolling back network", "network", bad.Name, "from", from, "to", target, "lost", ro.lost)

	unlock := s.uses.Lock(bad.Name) // attaches see the good version or the bad, not both
	rec, err := s.store.update(ctx, bad.Name, func(r *events.NetworkRecord) (bool, error) {
		for i := range r.History {
			if r.History[i].Version == from {
				r.History[i].Status = events.NetworkVersionRolledBack
				r.History[i].Reason = ReasonConnectivityLost
				r.History[i].Message = msg
			}
		}
		if v, ok := r.FindVersion(target); ok && target > 0 {
			r.Version, r.Spec = target, v.Spec
		} else {
			r.Version = 0
		}
		r.Status = events.NetworkStatusRolledBack
		r.Reason = ReasonConnectivityLost
		r.Message = msg
		return true, nil
	})
	unlock()
	if err != nil {
		return err
	}
	if rec.Version == 0 {
		if _, err := s.fab.RemovePortGroup(ctx, events.PortGroupName(rec.Name)); err != nil {
			return err
		}
	} else if _, err := s.apply(ctx, rec, false); err != nil {
		return err
	}
	s.awaitReconnect(ctx, ro.lost)

	if err := s.out.Emit(ctx, cause, &events.NetworkRolledBack{
		Name: rec.Name, FromVersion: from, ToVersion: rec.Version, Hosts: ro.lost, Reason: ReasonConnectivityLost, Message: msg,
	}, bus.Distinct(fmt.Sprintf("rollback/%d", from))); err != nil {
		return err
	}
	if rec.Version == 0 {
		_, err := s.store.update(ctx, rec.Name, func(r *events.NetworkRecord) (bool, error) {
			changed := false
			assign(&changed, &r.HostsInScope, 0)
			assign(&changed, &r.HostsReady, 0)
			return changed, nil
		})
		if err == nil {
			err = s.store.removeHostStates(ctx, rec.Name)
		}
		if err == nil {
			err = s.store.publishAvailability(ctx, rec, nil)
		}
		s.hostStatesSoon()
		return err
	}
	// Read the hosts back at the good version and record them as usual.
	after, err := s.apply(ctx, rec, false)
	if err != nil {
		return err
	}
	return s.commit(ctx, cause, rec.Version, after)
}

// awaitReconnect waits up to the probe window for hosts to respond again
// after a rollback, so their read-back reflects the restored version rather
// than the moment of the outage.
func (s *Service) awaitReconnect(ctx context.Context, names []string) {
	deadline := time.Now().Add(s.cfg.ProbeWindow)
	for time.Now().Before(deadline) {
		hosts, err := s.fab.Hosts(ctx)
		if err != nil {
			return
		}
		down := 0
		for _, h := range hosts {
			if slices.Contains(names, h.Name) && h.ConnectionState != fabric.Connected {
				down++
			}
		}
		if down == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.cfg.ProbeInterval):
		}
	}
}

// commit records a rollout of version in the network record, the hosts'
// states and the availability read model, then publishes what changed:
// network.host.ready or network.host.failed for each host whose state
// changed and network.realized when the rollout's outcome changed. What
// did not change is not written: a resync that finds every host as it was
// writes nothing.
func (s *Service) commit(ctx context.Context, cause *event.Event, version int64, ro *rollout) error {
	prev, err := s.store.hostStates(ctx, ro.name)
	if err != nil {
		return err
	}
	cur, _, err := s.store.get(ctx, ro.name)
	if err != nil || cur == nil || cur.Version != version {
		return err // superseded while pushing; the newer push records itself
	}
	// The hosts' states go first, so that a record counting a host ready
	// (what `podvisor bench` and a person wait for) is never ahead of the
	// host's own state, which attaches read.
	hosts := withApplyFailures(cur.ApplyFailed, ro.hosts) // applied.go
	if err := s.store.putHostStates(ctx, ro.name, version, hosts, prev); err != nil {
		return err
	}
	var prevStatus string
	var name string
	superseded := false
	rec, err := s.store.update(ctx, ro.name, func(r *events.NetworkRecord) (bool, error) {
		if r.Version != version {
			superseded = true
			return false, nil
		}
		name = r.Name
		prevStatus = r.Status
		changed := forgetApplyFailures(r, hosts) // applied.go
		failed, ready := 0, 0
		for _, h := range hosts {
			if h.State == events.NetworkHostStateReady && h.Version == version {
				ready++
			} else {
				failed++
			}
		}
		assign(&changed, &r.HostsInScope, len(hosts))
		assign(&changed, &r.HostsReady, ready)
		assign(&changed, &r.Switch, ro.switchName)
		assign(&changed, &r.PortGroup, events.PortGroupName(r.Name))
		switch {
		case r.Status == events.NetworkStatusRolledBack:
			// Stays visible with its reason until the next declaration.
		case failed > 0:
			assign(&changed, &r.Status, events.NetworkStatusDegraded)
			assign(&changed, &r.Reason, "HostsFailed")
			assign(&changed, &r.Message, fmt.Sprintf("%d of %d hosts in scope do not carry version %d", failed, len(hosts), version))
		default:
			assign(&changed, &r.Status, events.NetworkStatusReady)
			assign(&changed, &r.Reason, "")
			assign(&changed, &r.Message, "")
		}
		for i := range r.History {
			if r.History[i].Version == version && r.History[i].Status == events.NetworkVersionPending {
				r.History[i].Status = events.NetworkVersionApplied
				changed = true
			}
		}
		assign(&changed, &r.LastGoodVersion, version)
		n, err := s.ipam.Count(ctx, r.Name)
		if err != nil {
			return false, err
		}
		assign(&changed, &r.IPsUsed, n)
		return changed, nil
	})
	if err != nil || superseded {
		return err
	}
	if err := s.store.publishAvailability(ctx, rec, hosts); err != nil {
		return err
	}
	s.hostStatesSoon()

	var ready, failed []string
	changed := prevStatus != rec.Status
	for _, h := range hostNames(ro.scope) {
		st := hosts[h]
		old, had := prev[h]
		same := had && sameHostState(old.NetworkHostState, st)
		if st.State == events.NetworkHostStateReady {
			ready = append(ready, h)
		} else {
			failed = append(failed, h)
		}
		if same {
			continue
		}
		changed = true
		disc := fmt.Sprintf("host/%s/%d", h, version)
		if st.State == events.NetworkHostStateReady {
			err = s.out.Emit(ctx, cause, &events.NetworkHostReady{
				Name: name, Version: version, Host: h, PortGroup: rec.PortGroup,
			}, bus.Distinct(disc))
		} else {
			err = s.out.Emit(ctx, cause, &events.NetworkHostFailed{
				Name: name, Version: version, Host: h, Reason: st.Reason, Message: st.Message,
			}, bus.Distinct(disc))
		}
		if err != nil {
			return err
		}
	}
	if !changed {
		return nil
	}
	return s.out.Emit(ctx, cause, &events.NetworkRealized{
		Name: name, Version: version, Ready: ready, Failed: failed,
	}, bus.Distinct(fmt.Sprintf("realized/%d", version)))
}

// assign sets *dst to v and notes a change when they differ.
func assign[T comparable](changed *bool, dst *T, v T) {
	if *dst != v {
		*dst, *changed = v, true
	}
}
