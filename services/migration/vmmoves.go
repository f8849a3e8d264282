package migration

import (
	"context"
	"errors"
	"fmt"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// A native VM's move (`podvisor migrate vm`, or a drain's) goes through the
// same queue and limits as a pod's migration: the scheduler reserves its
// target (vm.migration.target.reserved), this service records it (KV
// `migrations`, Kind VirtualMachine, Phase Queued) and queues it, counted
// against its source host, its source cluster and, when it crosses
// clusters, its target cluster; with room it is Relocating and admitted
// (vm.migration.admitted), and the provisioner's native VM controller runs
// the vMotion. vm.migrated ends the record and frees its room. The record
// is the truth across restarts: a new leader queues the Queued ones again
// and counts the Relocating ones as running (admitting them again: the
// same event id, which the bus keeps once). A queued move that a lost host
// or a cancel ends is announced as vm.migrated with the reason, so the
// scheduler frees its target.

// ReasonCancelled is the reason of vm.migrated for a VM move cancelled
// while queued.
const ReasonCancelled = "Cancelled"

// onVMTargetReserved records and queues a VM move whose target the
// scheduler reserved.
func (s *Service) onVMTargetReserved(ctx context.Context, m *bus.Message, e *events.VMMigrationTargetReserved) error {
	r, err := s.store.migration(ctx, e.ID)
	if err != nil {
		return err
	}
	if r == nil {
		r = &events.MigrationRecord{ID: e.ID, Kind: events.MigrationKindVM, Namespace: e.Namespace, Pod: e.Name, UID: e.UID,
			SourceHost: e.SourceHost, TargetHost: e.TargetHost, TargetCluster: e.Cluster, TargetPool: e.ResourcePool,
			Phase: events.PhaseQueued, TraceParent: traceParent(m.Event), Message: "waiting for room under the migration limits"}
		if h, err := s.store.host(ctx, e.SourceHost); err != nil {
			return err
		} else if h != nil {
			r.SourceCluster = h.Cluster
		}
		if err := s.store.createMigration(ctx, r); err != nil && !errors.Is(err, errExists) {
			return err
		}
		if r, err = s.store.migration(ctx, e.ID); err != nil || r == nil {
			return fmt.Errorf("VM migration %s: record written and not read back: %v", e.ID, err)
		}
	}
	if !r.IsVM() {
		return bus.Permanent(fmt.Errorf("migration %s is a pod's migration, not a VM's", e.ID))
	}
	s.queueVM(ctx, r)
	return nil
}

// queueVM puts an active VM move where its record says it is: Queued in
// the queue, Relocating among the running (admitted again).
func (s *Service) queueVM(ctx context.Context, r *events.MigrationRecord) {
	if !r.Active() {
		return
	}
	sl := slotOf(r)
	s.mu.Lock()
	switch {
	case s.lim.has(r.ID):
	case r.Phase == events.PhaseRelocating:
		s.lim.start(sl)
		s.mu.Unlock()
		s.runners.Add(1)
		go func() {
			defer s.runners.Done()
			s.admitVM(ctx, r.ID)
		}()
		return
	default:
		s.lim.enqueue(sl)
	}
	s.mu.Unlock()
	s.poke()
}

// admitVM marks a VM move that has room Relocating and tells the native
// VM controller to relocate it. A failure leaves the room taken and the
// record as it is: the next leader admits it again.
func (s *Service) admitVM(ctx context.Context, id string) {
	r, err := s.store.updateMigration(ctx, id, func(r *events.MigrationRecord) bool {
		if r.Phase != events.PhaseQueued {
			return false
		}
		r.Phase, r.StartedAt, r.QueuePosition, r.Message = events.PhaseRelocating, s.now().UTC(), 0, ""
		return true
	})
	if err == nil && r.Phase == events.PhaseRelocating {
		err = s.emit(ctx, standIn("migration/"+r.ID, r.TraceParent), &events.VMMigrationAdmitted{VMMigrationTargetReserved: events.VMMigrationTargetReserved{
			ID: r.ID, VMRef: events.VMRef{Namespace: r.Namespace, Name: r.Pod, UID: r.UID}, SourceHost: r.SourceHost, TargetHost: r.TargetHost,
			Cluster: r.TargetCluster, ResourcePool: r.TargetPool}}, bus.Distinct("admitted"))
	}
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("admit VM migration", "migration", id, "err", err)
		}
		return
	}
	s.log.Info("VM migration admitted", "migration", id, "vm", r.Key(), "from", r.SourceHost, "to", r.TargetHost)
}

// endVMMove ends a VM move's record from its vm.migrated and frees its
// room. A move the scheduler refused before reserving a target has no
// record; one this leader queues or runs has, and a read that does not
// find it is one answered by a node not yet current: tried again.
func (s *Service) endVMMove(ctx context.Context, e *events.VMMigrated) error {
	r, err := s.store.migration(ctx, e.ID)
	if err != nil {
		return err
	}
	if r == nil {
		s.mu.Lock()
		ours := s.lim != nil && s.lim.has(e.ID)
		s.mu.Unlock()
		if ours {
			return fmt.Errorf("VM migration %s: %w", e.ID, errNoRecord)
		}
		return nil
	}
	_, err = s.store.updateMigration(ctx, e.ID, func(r *events.MigrationRecord) bool {
		if !r.Active() || !r.IsVM() {
			return false
		}
		r.Phase, r.Reason, r.Message, r.Percent = events.MigrationPhaseCompleted, "", "", 100
		switch {
		case e.Reason == ReasonCancelled:
			r.Phase, r.Reason, r.Message, r.Percent = events.MigrationPhaseCancelled, e.Reason, e.Message, 0
		case e.Failed():
			r.Phase, r.Reason, r.Message, r.Percent = events.MigrationPhaseFailed, e.Reason, e.Message, 0
		}
		r.QueuePosition, r.EndedAt = 0, s.now().UTC()
		return true
	})
	if err != nil {
		return err
	}
	s.vmMoveEnded(e.ID)
	return nil
}

// endQueuedVM ends a VM move that is still queued (false when it is not):
// vm.migrated with the reason frees its target on the scheduler and ends
// its record here.
func (s *Service) endQueuedVM(ctx context.Context, r *events.MigrationRecord, reason, msg string) (bool, error) {
	s.mu.Lock()
	queued := s.lim.remove(r.ID)
	s.mu.Unlock()
	if !queued {
		return false, nil
	}
	s.poke()
	return true, s.emit(ctx, standIn("migration/"+r.ID, r.TraceParent), &events.VMMigrated{ID: r.ID, VMRef: events.VMRef{Namespace: r.Namespace, Name: r.Pod, UID: r.UID},
		SourceHost: r.SourceHost, TargetHost: r.TargetHost, Reason: reason, Message: msg}, bus.Distinct("end"))
}
