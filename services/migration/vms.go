package migration

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// Native VMs (events vm.*) on a drained or lost host get what pods get,
// through the native VM controller and the scheduler rather than this
// service's own migration runner (a VM's vMotion is the provisioner's
// native VM controller's, see services/provisioner/nativevm):
//
//   - a drain, once its pods are handled, records a move for every VM on
//     the host in its drain record and asks for each (vm.migrate.requested:
//     the scheduler reserves a target, this service queues the move under
//     the migration limits like any other VM move (vmmoves.go: it counts
//     against its source host, its source cluster and its target's
//     cluster until vm.migrated), the controller relocates the VM, powered
//     on or off, and announces vm.migrated).
//     A VM no other host can take (the scheduler answers vm.migrated with
//     NoTarget) is listed as unmovable at once, as a pod is, and keeps
//     running where it is: placing it again from its spec would meet the
//     same hosts. A VM whose move failed otherwise (the relocation failed)
//     is evicted (vm.evicted, reason DrainUnmovable): the scheduler places
//     it again away from the host and the controller makes it again there
//     from its spec, removing the one it left. The drain waits until no VM
//     is on the host; a VM still there vmLeaveTimeout after its request (or
//     its eviction) is listed as unmovable. Either way the host stays out
//     of maintenance mode.
//   - a lost host's VMs are evicted (vm.evicted, reason HostLost): they are
//     placed elsewhere and made again from their spec, in their declared
//     power state, as vSphere HA restarts them.
//
// What a drain decided about its VM moves (asked, the outcome, evicted,
// the result) lives in its drain record, written by CAS, and vm.migrated
// is written there by whichever process consumes it: a drain resumed by a
// restarted service or a new leader goes on from the record, so no
// outcome is known only to a process that is gone.

// ReasonDrainUnmovable is the reason of vm.evicted for a VM a drain could
// not move.
const ReasonDrainUnmovable = "DrainUnmovable"

// vmLeaveTimeout bounds how long a drain waits for one VM to leave its
// host (moved, or made again elsewhere after its eviction).
const vmLeaveTimeout = 2 * time.Minute

// nativeVMs is this service's handle on the provisioner's VM records.
type nativeVMs struct {
	mu sync.Mutex
	kv jetstream.KeyValue
}

// vmsKV opens the provisioner's VM records (a read model here).
func (s *Service) vmsKV(ctx context.Context) (jetstream.KeyValue, error) {
	s.nvm.mu.Lock()
	defer s.nvm.mu.Unlock()
	if s.nvm.kv != nil {
		return s.nvm.kv, nil
	}
	kv, err := s.bus.KV(ctx, events.BucketVMs)
	if err != nil {
		return nil, fmt.Errorf("KV %s: %w", events.BucketVMs, err)
	}
	s.nvm.kv = kv
	return kv, nil
}

// vmsOnHost lists the VMs placed on host that are not being deleted.
func (s *Service) vmsOnHost(ctx context.Context, host string) ([]*events.VMRecord, error) {
	kv, err := s.vmsKV(ctx)
	if err != nil {
		return nil, err
	}
	all, err := records[events.VMRecord](kv, "VM", nil).Scan(ctx)
	if err != nil {
		return nil, err
	}
	var out []*events.VMRecord
	for _, r := range all {
		if r.Status.Host == host && r.DeletionRequestedAt.IsZero() {
			out = append(out, r)
		}
	}
	return out, nil
}

func (s *Service) vmRecord(ctx context.Context, ns, name string) (*events.VMRecord, error) {
	kv, err := s.vmsKV(ctx)
	if err != nil {
		return nil, err
	}
	r, _, err := records[events.VMRecord](kv, "VM", nil).Get(ctx, events.VMRecordKey(ns, name))
	return r, err
}

// onVMMigrated ends the VM move's record and frees its room, and writes
// the outcome of a drain's VM move into the drain record of its source
// host.
func (s *Service) onVMMigrated(ctx context.Context, _ *bus.Message, e *events.VMMigrated) error {
	if err := s.endVMMove(ctx, e); err != nil {
		return err
	}
	if found, err := s.drainVMOutcome(ctx, e.SourceHost, e); err != nil || found {
		return err
	}
	// The scheduler refuses a move (NoTarget) before it reserves anything
	// and names no source host then: the move is in the drain record of
	// the host the VM is still on, if a drain asked for it.
	r, err := s.vmRecord(ctx, e.Namespace, e.Name)
	if err != nil || r == nil || r.UID != e.UID || r.Status.Host == "" || r.Status.Host == e.SourceHost {
		return err
	}
	_, err = s.drainVMOutcome(ctx, r.Status.Host, e)
	return err
}

// drainVMOutcome writes a vm.migrated into the drain record of host;
// found says the record holds the move.
func (s *Service) drainVMOutcome(ctx context.Context, host string, e *events.VMMigrated) (found bool, err error) {
	_, err = s.store.updateDrain(ctx, host, func(d *events.DrainRecord) bool {
		i := slices.IndexFunc(d.VMs, func(v events.DrainVM) bool { return v.ID == e.ID })
		found = i >= 0
		if i < 0 || !d.VMs[i].MigratedAt.IsZero() {
			return false
		}
		v := &d.VMs[i]
		v.MigratedAt, v.Reason, v.Message = s.now().UTC(), e.Reason, e.Message
		return true
	})
	if errors.Is(err, errNoRecord) {
		return false, nil // no drain record: a move no drain asked for
	}
	return found, err
}

// drainVMID names a drain's move of one VM: the same for a resumed drain,
// another for a later drain of the host.
func drainVMID(host, requestID, uid string) string {
	sum := sha256.Sum256([]byte(requestID))
	id := fmt.Sprintf("vm%s-%x", drainMigrationID(host, 0, uid), sum[:4])
	if len(id) > 128 {
		id = id[len(id)-128:]
	}
	return id
}

// drainVMs moves every VM off host (see above) and tallies them in st.
func (s *Service) drainVMs(ctx context.Context, host, requestID string, st *drainState) error {
	on, err := s.vmsOnHost(ctx, host)
	if err != nil {
		return err
	}
	// The moves are recorded before any is asked for.
	d, err := s.updateRunningDrain(ctx, host, func(d *events.DrainRecord) bool {
		if d.RequestID != requestID {
			return false
		}
		changed := false
		for _, v := range on {
			if !slices.ContainsFunc(d.VMs, func(m events.DrainVM) bool { return m.UID == v.UID }) {
				d.VMs = append(d.VMs, events.DrainVM{ID: drainVMID(host, requestID, v.UID), Namespace: v.Namespace, Name: v.Name, UID: v.UID})
				changed = true
			}
		}
		return changed
	})
	if err != nil || d == nil || d.RequestID != requestID || len(d.VMs) == 0 {
		return err
	}
	cause := standIn(fmt.Sprintf("drain/%s/%s", host, requestID), "")
	logged := false
	for {
		d, _, err = s.store.drain(ctx, host)
		if err != nil {
			return err
		}
		if d == nil || d.RequestID != requestID {
			return nil // uncordoned meanwhile
		}
		open := 0
		for _, v := range d.VMs {
			if v.Result != "" {
				continue
			}
			open++
			if err := s.stepVMMove(ctx, cause, host, requestID, v); err != nil {
				return err
			}
		}
		if open == 0 {
			break
		}
		if !logged {
			s.log.Info("drain: moving VMs", "host", host, "vms", open)
			logged = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(drainPoll):
		}
	}
	for _, v := range d.VMs {
		switch v.Result {
		case events.DrainVMMoved:
			st.movedVMs[v.UID] = true
		case events.DrainVMGone:
		default:
			st.stuckVM(events.UnmovablePod{Namespace: v.Namespace, Name: v.Name, UID: v.UID, Reason: v.Result, Message: v.Message})
		}
	}
	return nil
}

// stepVMMove takes one VM move a step further: ended when the VM left
// the host (or is gone), asked for (it waits for room in the queue once
// its target is reserved), ended as unmovable at once when no host can
// take it, evicted once vm.migrated says it could not move otherwise,
// given up vmLeaveTimeout later. What is decided lives in the drain
// record; a request or an eviction is sent before it is recorded and sent
// again (same id, kept once by the bus) by a drain resumed in between.
func (s *Service) stepVMMove(ctx context.Context, cause *event.Event, host, requestID string, v events.DrainVM) error {
	set := func(mutate func(m *events.DrainVM)) error {
		_, err := s.updateRunningDrain(ctx, host, func(d *events.DrainRecord) bool {
			i := slices.IndexFunc(d.VMs, func(m events.DrainVM) bool { return m.ID == v.ID })
			if d.RequestID != requestID || i < 0 || d.VMs[i].Result != "" {
				return false
			}
			mutate(&d.VMs[i])
			return true
		})
		return err
	}
	end := func(result, msg string) error {
		return set(func(m *events.DrainVM) {
			m.Result = result
			if msg != "" {
				m.Message = msg
			}
		})
	}
	cur, err := s.vmRecord(ctx, v.Namespace, v.Name)
	if err != nil {
		return err
	}
	switch {
	case cur == nil || cur.UID != v.UID || !cur.DeletionRequestedAt.IsZero():
		return end(events.DrainVMGone, "") // deleted meanwhile: nothing to move
	case cur.Status.Host != "" && cur.Status.Host != host && cur.StaleVM == "":
		return end(events.DrainVMMoved, "")
	}
	now := s.now().UTC()
	if v.RequestedAt.IsZero() {
		if err := s.emit(ctx, cause, &events.VMMigrateRequested{ID: v.ID, Namespace: v.Namespace, Name: v.Name}, bus.Distinct(v.ID)); err != nil {
			return err
		}
		return set(func(m *events.DrainVM) { m.RequestedAt = now })
	}
	if !v.MigratedAt.IsZero() && v.Reason == ReasonNoTarget {
		// The scheduler's message names the VM and why no host fits.
		msg := v.Message
		if msg == "" {
			msg = fmt.Sprintf("no other host can take VM %s", cur.Key())
		}
		return end(ReasonNoTarget, msg)
	}
	if !v.MigratedAt.IsZero() && v.Reason != "" && v.EvictedAt.IsZero() {
		msg := fmt.Sprintf("drain of %s: the VM could not move (%s: %s); it is made again on another host from its spec", host, v.Reason, v.Message)
		if err := s.emit(ctx, cause, &events.VMEvicted{VMRef: events.VMRef{Namespace: v.Namespace, Name: v.Name, UID: v.UID}, Host: host,
			Reason: ReasonDrainUnmovable, Message: msg}, bus.Distinct("evict/"+v.ID)); err != nil {
			return err
		}
		s.log.Warn("drain: VM evicted", "host", host, "vm", cur.Key(), "reason", v.Reason)
		return set(func(m *events.DrainVM) { m.EvictedAt = now })
	}
	since := v.RequestedAt
	if !v.EvictedAt.IsZero() {
		since = v.EvictedAt
	}
	if now.Sub(since) <= vmLeaveTimeout {
		return nil
	}
	reason := ReasonVMStillOnHost
	if v.Reason != "" {
		reason = v.Reason
	}
	return end(reason, fmt.Sprintf("VM %s is still on %s after %s (phase %s)", cur.Key(), host, vmLeaveTimeout, cur.Status.Phase))
}

// vmMoveEnded gives a VM move's room back (or takes it out of the queue).
func (s *Service) vmMoveEnded(id string) {
	s.mu.Lock()
	if s.lim == nil || (!s.lim.remove(id) && !s.lim.has(id)) {
		s.mu.Unlock()
		return
	}
	s.lim.done(id)
	s.mu.Unlock()
	s.poke()
}

// evictVMs evicts the VMs of a lost host: each is placed elsewhere and
// made again from its spec.
func (s *Service) evictVMs(ctx context.Context, m *bus.Message, host, why string) error {
	vms, err := s.vmsOnHost(ctx, host)
	if err != nil {
		return err
	}
	for _, v := range vms {
		if err := s.emit(ctx, &m.Event, &events.VMEvicted{VMRef: events.VMRef{Namespace: v.Namespace, Name: v.Name, UID: v.UID}, Host: host, Reason: ReasonHostLost,
			Message: fmt.Sprintf("host %s stopped responding (%s); the VM is made again on another host", host, why)}, bus.Distinct(v.UID)); err != nil {
			return err
		}
	}
	if len(vms) > 0 {
		s.log.Warn("host lost; VMs evicted", "host", host, "vms", len(vms))
	}
	return nil
}
