package scheduler

import (
	"context"
	"fmt"
	"math"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/services/scheduler/ledger"
	"github.com/podvisor/podvisor/services/scheduler/plugins/hostready"
	"github.com/podvisor/podvisor/shared/bus"
)

// unlimited is the capacity used to record a pod that is already on a host
// whatever the ledger says (a migration completed without a reservation).
var unlimited = ledger.Capacity{CPUMilli: math.MaxInt64 / 4, MemoryBytes: math.MaxInt64 / 4, IgnoreCordon: true}

// Migration placement. On migration.requested the scheduler validates the
// requested target (every filter, on that host only) or picks one with the
// whole framework, the source host excluded; it reserves the pod's size on
// the target as a migration allocation (uid@id) next to the pod's
// allocation on the source, so that the room is held while the VM moves.
// migration.completed turns the reservation into the pod's allocation and
// frees the source; failed, cancelled or rejected release the reservation.

// onMigrationRequested validates or picks the target and reserves it.
func (s *Service) onMigrationRequested(ctx context.Context, m *bus.Message, e *events.MigrationRequested) error {
	annotate(ctx, e.ObjectKey(), "")
	return s.placeMigration(ctx, m.Event, e)
}

// migrationRequestFailed is the failure hook of migration.requested: a
// request that cannot be placed before its deliveries run out is rejected
// with the reason, so the migration service does not wait for a target.
func (s *Service) migrationRequestFailed(ctx context.Context, m *bus.Message, e *events.MigrationRequested, err error) error {
	return s.rejectMigration(ctx, m.Event, e, bus.ReasonOf(err, ReasonNoTarget), fmt.Sprintf("gave up after %d attempts: %v", m.Delivery, err))
}

// onMigrationCompletedEvent moves the allocation to the target.
func (s *Service) onMigrationCompletedEvent(ctx context.Context, _ *bus.Message, e *events.MigrationCompleted) error {
	annotate(ctx, e.ObjectKey(), e.UID)
	return s.onMigrationCompleted(ctx, e)
}

// onMigrationFailed releases the target's reservation.
func (s *Service) onMigrationFailed(ctx context.Context, _ *bus.Message, e *events.MigrationFailed) error {
	annotate(ctx, e.ObjectKey(), e.UID)
	return s.releaseMigration(ctx, e.Namespace, e.Pod, e.UID, e.ID, e.TargetHost)
}

// onMigrationCancelled releases the target's reservation.
func (s *Service) onMigrationCancelled(ctx context.Context, _ *bus.Message, e *events.MigrationCancelled) error {
	annotate(ctx, e.ObjectKey(), e.UID)
	return s.releaseMigration(ctx, e.Namespace, e.Pod, e.UID, e.ID, e.TargetHost)
}

// onMigrationRejected releases what a rejection by another service leaves
// reserved.
func (s *Service) onMigrationRejected(ctx context.Context, m *bus.Message, e *events.MigrationRejected) error {
	if m.Event.Source() == Source {
		return nil // our own refusal: nothing was reserved
	}
	annotate(ctx, e.ObjectKey(), "")
	return s.releaseMigration(ctx, e.Namespace, e.Pod, "", e.ID, "")
}

// Reasons of migration.rejected produced here (besides the failing filter's
// own reason when the request named its target).
const (
	ReasonPodNotFound  = "PodNotFound"
	ReasonNotScheduled = "NotScheduled"
	ReasonSameHost     = "SameHost"
	ReasonNoTarget     = "NoTarget"
)

func (s *Service) placeMigration(ctx context.Context, cause event.Event, e *events.MigrationRequested) error {
	rec, err := s.podRecord(ctx, e.Namespace, e.Pod)
	if err != nil {
		return err
	}
	if rec == nil {
		return s.rejectMigration(ctx, cause, e, ReasonPodNotFound, fmt.Sprintf("pod %s/%s not found", e.Namespace, e.Pod))
	}
	annotate(ctx, e.ObjectKey(), rec.UID)
	// A request handled again after its migration ended (its first
	// answer lost) would reserve room on another host: the pod runs on
	// the old target by then, and nothing would free that room.
	if mig, err := s.migrationRecord(ctx, e.ID); err != nil {
		return err
	} else if mig != nil && !mig.Active() {
		s.log.Info("migration request seen again after the migration ended: nothing reserved", "migration", e.ID, "pod", e.ObjectKey(), "phase", mig.Phase)
		return nil
	}
	s.mu.Lock()
	source := s.allocIndex[rec.UID]
	s.mu.Unlock()
	if source == "" {
		source = rec.Host
	}
	if source == "" {
		return s.rejectMigration(ctx, cause, e, ReasonNotScheduled, fmt.Sprintf("pod %s/%s is not placed on a host yet (phase %s)", e.Namespace, e.Pod, rec.Phase))
	}
	if e.TargetHost == source {
		return s.rejectMigration(ctx, cause, e, ReasonSameHost, fmt.Sprintf("pod %s/%s already runs on %s", e.Namespace, e.Pod, source))
	}
	p, err := podInfo(&rec.Pod, rec.UID, rec.Size, rec.Networks)
	if err != nil {
		return s.rejectMigration(ctx, cause, e, ReasonNoTarget, err.Error())
	}
	o := s.submitMigration(ctx, p, source, e.ID, e.TargetHost)
	if o.fit != nil && e.TargetHost != "" && refusedForHostState(o.fit) {
		// The snapshot has the host's vCenter state from the update
		// stream, which lags: a host taken out of maintenance a moment
		// ago (uncordon, then an immediate migrate) may still show in
		// maintenance there. Read the target from vCenter before refusing.
		fresh, err := s.refreshHost(ctx, e.TargetHost)
		if err != nil {
			return fmt.Errorf("place migration %s: %w", e.ID, err)
		}
		if fresh {
			o = s.submitMigration(ctx, p, source, e.ID, e.TargetHost)
		}
	}
	switch {
	case o.err != nil:
		return fmt.Errorf("place migration %s: %w", e.ID, o.err)
	case o.fit != nil:
		reason, msg := ReasonNoTarget, "no target host for pod "+p.Key+": "+o.fit.Error()
		if e.TargetHost != "" {
			for rr, m := range o.fit.Diagnosis.Messages {
				reason, msg = rr, "target "+e.TargetHost+": "+m
			}
		}
		return s.rejectMigration(ctx, cause, e, reason, msg)
	}
	s.log.Info("migration target reserved", "migration", e.ID, "pod", p.Key, "from", source, "to", o.placement.Host)
	return s.out.Emit(ctx, &cause, &events.MigrationTargetReserved{
		MigrationRef:  e.MigrationRef,
		MigrationMove: events.MigrationMove{UID: rec.UID, SourceHost: source, TargetHost: o.placement.Host, TargetCluster: o.placement.Cluster, TargetPool: o.placement.ResourcePool},
	})
}

// refusedForHostState says whether a named target was refused for its
// vCenter state (maintenance mode, not connected): what a fresh read of the
// host may tell otherwise.
func refusedForHostState(fe *framework.FitError) bool {
	for reason := range fe.Diagnosis.Reasons {
		if reason == hostready.ReasonInMaintenance || reason == hostready.ReasonNotConnected {
			return true
		}
	}
	return false
}

// refreshHost reads one host from vCenter now and folds it into the
// snapshot and its record; false when the host is not known by reference.
func (s *Service) refreshHost(ctx context.Context, name string) (bool, error) {
	s.mu.Lock()
	rec := s.records[name]
	s.mu.Unlock()
	if rec == nil || rec.Ref == "" {
		return false, nil
	}
	obs, err := s.source.Read(ctx, rec.Ref)
	if err != nil || len(obs) == 0 {
		return false, err
	}
	s.applyObservations(ctx, obs, false)
	return true, nil
}

func (s *Service) rejectMigration(ctx context.Context, cause event.Event, e *events.MigrationRequested, reason, msg string) error {
	s.log.Info("migration rejected", "migration", e.ID, "reason", reason, "message", msg)
	return s.out.Emit(ctx, &cause, &events.MigrationRejected{
		MigrationRef: e.MigrationRef, Reason: reason, Message: msg,
	})
}

// onMigrationCompleted moves the allocation: the reservation on the target
// becomes the pod's allocation, then the source is freed. Both steps are
// idempotent, so a redelivery converges.
func (s *Service) onMigrationCompleted(ctx context.Context, e *events.MigrationCompleted) error {
	entry, promoted, err := s.ledger.Promote(ctx, e.TargetHost, e.UID, e.ID)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.applyEntryLocked(entry)
	_, onTarget := entry.Allocations[e.UID]
	s.mu.Unlock()
	if !promoted && !onTarget {
		// The pod moved without a reservation here (another placer, or a
		// lost reservation): account for it anyway, the VM is there.
		rec, err := s.podRecord(ctx, e.Namespace, e.Pod)
		if err != nil {
			return err
		}
		if rec != nil && rec.UID == e.UID {
			p, err := podInfo(&rec.Pod, rec.UID, rec.Size, rec.Networks)
			if err == nil {
				s.mu.Lock()
				h, _ := s.snap.Host(e.TargetHost)
				s.mu.Unlock()
				if h != nil {
					// Capacity is not enforced here: the VM already runs on
					// the target, and the ledger must say so.
					res, err := s.ledger.Reserve(ctx, e.TargetHost, unlimited, []events.Allocation{allocationOf(p)})
					if err != nil {
						return err
					}
					s.mu.Lock()
					s.applyEntryLocked(res.Entry)
					s.mu.Unlock()
				}
			}
		}
	}
	if err := s.ledger.Rebind(ctx, e.UID, e.TargetHost); err != nil {
		return err
	}
	if e.SourceHost != "" && e.SourceHost != e.TargetHost {
		if err := s.release(ctx, map[string][]string{e.SourceHost: {e.UID}}); err != nil {
			return err
		}
	}
	s.pending.kickAll()
	return nil
}

// releaseMigration frees a migration's reservation on its target.
func (s *Service) releaseMigration(ctx context.Context, ns, pod, uid, id, target string) error {
	byHost := map[string][]string{}
	s.mu.Lock()
	for k, h := range s.allocIndex {
		if len(k) > len(id)+1 && k[len(k)-len(id)-1:] == "@"+id && (uid == "" || k == uid+"@"+id) {
			byHost[h] = append(byHost[h], k)
		}
	}
	s.mu.Unlock()
	if target != "" && uid != "" {
		if _, ok := byHost[target]; !ok {
			byHost[target] = []string{uid + "@" + id}
		}
	}
	if len(byHost) == 0 {
		return nil
	}
	if err := s.release(ctx, byHost); err != nil {
		return err
	}
	s.pending.kickAll()
	return nil
}
