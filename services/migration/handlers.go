package migration

import (
	"context"
	"errors"
	"fmt"

	"github.com/cloudevents/sdk-go/v2/event"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// routes are the service's handlers, one per event it consumes. A reserved
// target whose handling keeps failing until the deliveries run out fails
// the migration with the reason (reservedFailed), so it does not stay
// Pending with room held on the target.
func (s *Service) routes() *bus.Router {
	r := bus.NewRouter(Name, s.log)
	bus.Handle(r, s.onRequested)
	bus.Handle(r, s.onReserved).OnFailure(s.reservedFailed)
	bus.Handle(r, s.onRejected)
	bus.Handle(r, func(ctx context.Context, _ *bus.Message, p *events.MigrationCancelRequested) error {
		annotateMigration(ctx, p.ObjectKey(), "", p.ID)
		return s.onCancel(ctx, p)
	})
	bus.Handle(r, s.onDrainRequested)
	bus.Handle(r, func(ctx context.Context, m *bus.Message, p *events.HostCordonRequested) error {
		annotateHost(ctx, p.Name)
		return s.onCordonRequested(ctx, m, p)
	})
	bus.Handle(r, func(ctx context.Context, m *bus.Message, p *events.HostUncordonRequested) error {
		annotateHost(ctx, p.Name)
		return s.onUncordonRequested(ctx, m, p)
	})
	bus.Handle(r, s.onHostLost)
	bus.Handle(r, s.onVMTargetReserved)
	bus.Handle(r, s.onVMMigrated)
	bus.Handle(r, s.onNetworkHostFailed)
	bus.Handle(r, func(ctx context.Context, _ *bus.Message, p *events.HostRecovered) error {
		annotateHost(ctx, p.Name)
		return s.onHostRecovered(ctx, p)
	})
	return r
}

func annotateMigration(ctx context.Context, pod, uid, id string) {
	span := trace.SpanFromContext(ctx)
	span.SetAttributes(attribute.String("pod", pod), attribute.String("migration.id", id))
	if uid != "" {
		span.SetAttributes(attribute.String("pod.uid", uid))
	}
}

func annotateHost(ctx context.Context, host string) {
	trace.SpanFromContext(ctx).SetAttributes(attribute.String("host", host))
}

// reservedFailed fails a migration whose reserved target could not be
// taken up: migration.failed with the reason, and the record ended.
func (s *Service) reservedFailed(ctx context.Context, m *bus.Message, p *events.MigrationTargetReserved, err error) error {
	r, rerr := s.store.migration(ctx, p.ID)
	if rerr != nil {
		return rerr
	}
	if r == nil {
		r = &events.MigrationRecord{ID: p.ID, Namespace: p.Namespace, Pod: p.Pod, TraceParent: traceParent(m.Event)}
	}
	if !r.Active() && r.Phase != "" {
		return nil // ended meanwhile; its outcome is announced already
	}
	r.UID, r.SourceHost, r.TargetHost = p.UID, p.SourceHost, p.TargetHost
	defer s.release(r)
	return s.finish(ctx, r, events.MigrationPhaseFailed, bus.ReasonOf(err, ReasonReservationFailed), m.FailureMessage(err))
}

// claim makes id the pod's one active migration, unless another one is:
// then it returns that one's ID. The in-memory view is this replica's: the
// migration it holds for the pod may have ended in another replica (the
// scheduler's refusal handled there), so a holder whose record says it
// ended gives way rather than refuse the pod's migrations from then on.
func (s *Service) claim(ctx context.Context, podKey, id string) (string, error) {
	s.mu.Lock()
	cur, ok := s.podActive[podKey]
	if !ok || cur == id {
		s.podActive[podKey] = id
		s.mu.Unlock()
		return "", nil
	}
	if _, running := s.flights[cur]; running {
		s.mu.Unlock()
		return cur, nil // its runner here holds the pod until it stops
	}
	s.mu.Unlock()
	r, err := s.store.migration(ctx, cur)
	if err != nil {
		return "", err
	}
	// No record yet is a migration being admitted right now: it holds.
	if r == nil || r.Active() {
		return cur, nil
	}
	s.release(r)
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.podActive[podKey]; ok && cur != id {
		return cur, nil
	}
	s.podActive[podKey] = id
	return "", nil
}

// onRequested records a request while the scheduler looks for a target, or
// rejects it when the pod already has a migration in flight.
func (s *Service) onRequested(ctx context.Context, m *bus.Message, p *events.MigrationRequested) error {
	annotateMigration(ctx, p.ObjectKey(), "", p.ID)
	r, err := s.store.migration(ctx, p.ID)
	if err != nil {
		return err
	}
	if r != nil {
		return nil // a redelivery, or a drain recorded it before asking
	}
	rec := &events.MigrationRecord{
		ID: p.ID, Namespace: p.Namespace, Pod: p.Pod, RequestedTarget: p.TargetHost,
		Phase: events.MigrationPhasePending, TraceParent: traceParent(m.Event),
		Message: "waiting for the scheduler to reserve a target",
	}
	return s.admit(ctx, &m.Event, rec)
}

// admit records a new migration as Pending, or as Rejected (and says so on
// the bus) when the pod already has an active one.
func (s *Service) admit(ctx context.Context, cause *event.Event, rec *events.MigrationRecord) error {
	other, err := s.claim(ctx, rec.Key(), rec.ID)
	if err != nil {
		return err
	}
	if other != "" {
		rec.Phase, rec.Reason = events.MigrationPhaseRejected, ReasonAlreadyMigrating
		rec.Message = fmt.Sprintf("pod %s is already migrating (migration %s); one migration per pod at a time", rec.Key(), other)
		rec.EndedAt = s.now().UTC()
		if err := s.publishFor(ctx, cause, rec, "rejected", &events.MigrationRejected{
			MigrationRef: events.MigrationRef{ID: rec.ID, Namespace: rec.Namespace, Pod: rec.Pod}, Reason: rec.Reason, Message: rec.Message,
		}); err != nil {
			return err
		}
		switch err := s.store.createMigration(ctx, rec); {
		case errors.Is(err, errExists):
			// Recorded Pending meanwhile by another replica (the request
			// delivered again there): the refusal published above is its
			// answer, or it would wait for the scheduler's.
			if _, _, err := s.rejectPending(ctx, rec.ID, rec.Reason, rec.Message); err != nil {
				return err
			}
		case err != nil:
			return err
		}
		s.ended.Add(ctx, 1, metric.WithAttributes(attribute.String("outcome", rec.Phase), attribute.String("reason", rec.Reason)))
		s.log.Info("migration rejected", "migration", rec.ID, "pod", rec.Key(), "reason", rec.Reason, "active", other)
		return nil
	}
	switch err := s.store.createMigration(ctx, rec); {
	case errors.Is(err, errExists):
		// Recorded meanwhile, maybe by another replica: a refusal handled
		// there ends it, and this replica must not hold the pod for it.
		cur, err := s.store.migration(ctx, rec.ID)
		if err != nil {
			return err
		}
		if cur != nil && !cur.Active() {
			s.release(cur)
			s.log.Info("migration request seen after it ended", "migration", rec.ID, "pod", rec.Key(), "phase", cur.Phase, "reason", cur.Reason)
			return nil
		}
	case err != nil:
		s.release(rec)
		return err
	}
	s.mu.Lock()
	s.pending[rec.ID] = s.now()
	s.mu.Unlock()
	s.log.Info("migration requested", "migration", rec.ID, "pod", rec.Key(), "target", rec.RequestedTarget, "waits_for", "the scheduler's target reservation")
	return nil
}

// release frees what the in-memory view holds for a migration.
func (s *Service) release(r *events.MigrationRecord) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.podActive[r.Key()] == r.ID {
		delete(s.podActive, r.Key())
	}
	delete(s.pending, r.ID)
	delete(s.positions, r.ID)
	s.lim.remove(r.ID)
}

// onReserved queues a migration once the scheduler holds room on its
// target. A reservation for a migration that already ended (cancelled
// while pending, or given up waiting, or completed to another target) is
// released at once (migration.cancelled), so that it does not keep room on
// a host.
//
// The reservation is acknowledged only once its outcome is durable and
// acted on: the record says Queued (or later) and this leader queues or
// runs the migration, or the record says it ended and the release is
// published. Anything else — a read or write the KV store did not answer,
// a read answered by a NATS node that has not applied the record yet —
// is an error, and the reservation comes again; when its deliveries run
// out, reservedFailed fails the migration and the scheduler frees the
// target. Nothing is decided on what this process merely remembers.
func (s *Service) onReserved(ctx context.Context, m *bus.Message, p *events.MigrationTargetReserved) error {
	annotateMigration(ctx, p.ObjectKey(), p.UID, p.ID)
	r, err := s.store.migration(ctx, p.ID)
	if err != nil {
		return err
	}
	if r == nil {
		// The request itself was not seen (published before this service
		// first started, or straight to the scheduler, or its delivery
		// comes later): adopt it.
		s.log.Info("target reserved before the request was recorded: adopting the migration", "migration", p.ID, "pod", p.ObjectKey(), "to", p.TargetHost)
		rec := &events.MigrationRecord{ID: p.ID, Namespace: p.Namespace, Pod: p.Pod, Phase: events.MigrationPhasePending, TraceParent: traceParent(m.Event)}
		if err := s.admit(ctx, &m.Event, rec); err != nil {
			return err
		}
		if r, err = s.store.migration(ctx, p.ID); err != nil {
			return err
		}
		if r == nil {
			return fmt.Errorf("migration %s: %w after creating it", p.ID, errNoRecord)
		}
	}
	if r.Phase == events.MigrationPhasePending {
		sourceCluster := ""
		if h, err := s.store.host(ctx, p.SourceHost); err == nil && h != nil {
			sourceCluster = h.Cluster
		}
		r, err = s.store.updateMigration(ctx, p.ID, func(r *events.MigrationRecord) bool {
			if r.Phase != events.MigrationPhasePending {
				return false
			}
			r.UID, r.SourceHost, r.SourceCluster = p.UID, p.SourceHost, sourceCluster
			r.TargetHost, r.TargetCluster, r.TargetPool = p.TargetHost, p.TargetCluster, p.TargetPool
			r.Phase, r.Reason, r.Message = events.PhaseQueued, "", "waiting for room"
			return true
		})
		if err != nil {
			return fmt.Errorf("queue migration %s: %w", p.ID, err)
		}
	}
	return s.takeUp(ctx, &m.Event, p, r)
}

// takeUp acts on a reserved migration's record as it stands after
// onReserved wrote it: released if the migration ended, queued in this
// process unless it is queued or running here already.
func (s *Service) takeUp(ctx context.Context, cause *event.Event, p *events.MigrationTargetReserved, r *events.MigrationRecord) error {
	switch {
	case r.Phase == events.MigrationPhaseCompleted && p.TargetHost == r.TargetHost:
		// The migration's own reservation seen again: migration.completed
		// makes it the pod's allocation.
		return nil
	case !r.Active():
		// Ended before this reservation, or completed elsewhere: a request
		// the scheduler handled again after the migration completed (its
		// first answer lost) reserves room on another host, since the pod
		// runs on the old target by then; nothing would free it.
		// Released by uid and target, whichever scheduler replica reads it
		// and in whatever order it reads our migration.rejected (which
		// releases by what that replica knows): a rejected duplicate's
		// reservation would otherwise stay on the target. The provisioner
		// knows the cancel is not about the pod's running migration
		// (PodRecord.Migration).
		if err := s.publishFor(ctx, cause, r, "release", &events.MigrationCancelled{
			MigrationRef: events.MigrationRef{ID: p.ID, Namespace: p.Namespace, Pod: p.Pod}, UID: p.UID, TargetHost: p.TargetHost,
		}); err != nil {
			return err
		}
		s.log.Info("reservation released: the migration ended before it", "migration", r.ID, "pod", r.Key(), "phase", r.Phase, "reason", r.Reason, "target", p.TargetHost)
		return nil
	case r.Phase == events.MigrationPhasePending:
		// Only a record that changed between the read and the write
		// (which then reads it again) can be here.
		return fmt.Errorf("migration %s: still Pending after queueing it", r.ID)
	}
	s.mu.Lock()
	delete(s.pending, r.ID)
	_, running := s.flights[r.ID]
	if running || s.lim.has(r.ID) {
		s.mu.Unlock()
		s.log.Info("reservation seen again: the migration is queued or running here", "migration", r.ID, "pod", r.Key(), "phase", r.Phase)
		return nil
	}
	if cur, ok := s.podActive[r.Key()]; ok && cur != r.ID {
		s.mu.Unlock()
		// The repair sweep queues it once the pod's other migration ends.
		s.log.Info("reserved migration waits for the pod's other migration", "migration", r.ID, "pod", r.Key(), "active", cur)
		return nil
	}
	s.podActive[r.Key()] = r.ID
	sl := slotOf(r)
	pos := len(s.lim.queue)
	_, why := s.lim.fits(sl)
	s.mu.Unlock()
	if r.Phase == events.PhaseQueued {
		// The Queued progress goes out before the migration enters the
		// queue, so that it always precedes the runner's Prechecking.
		if err := s.progress(ctx, r, events.PhaseQueued, 0, pos, why); err != nil {
			return err
		}
	}
	s.mu.Lock()
	if !s.lim.has(r.ID) {
		s.lim.enqueue(sl)
		s.positions[r.ID] = pos
	}
	s.mu.Unlock()
	s.poke()
	if why == "" {
		why = "room now"
	}
	s.log.Info("migration queued", "migration", r.ID, "pod", r.Key(), "phase", r.Phase, "from", r.SourceHost, "to", r.TargetHost, "position", pos, "waits_for", why)
	return nil
}

// onRejected records the scheduler's refusal.
func (s *Service) onRejected(ctx context.Context, m *bus.Message, p *events.MigrationRejected) error {
	annotateMigration(ctx, p.ObjectKey(), "", p.ID)
	if m.Event.Source() == Source {
		return nil // our own refusal, already recorded
	}
	r, err := s.store.migration(ctx, p.ID)
	if err != nil {
		return err
	}
	if r == nil {
		rec := &events.MigrationRecord{
			ID: p.ID, Namespace: p.Namespace, Pod: p.Pod, Phase: events.MigrationPhaseRejected,
			Reason: p.Reason, Message: p.Message, EndedAt: s.now().UTC(),
		}
		err := s.store.createMigration(ctx, rec)
		if !errors.Is(err, errExists) {
			return err
		}
		// The request's handler (another replica) recorded it Pending
		// between the read and this write: the refusal applies to that
		// record, or the migration would wait for an answer given already.
	} else if r.Phase != events.MigrationPhasePending {
		if !r.Active() {
			s.release(r) // a redelivery: this replica must not hold the pod for it
		}
		return nil
	}
	r, rejected, err := s.rejectPending(ctx, p.ID, p.Reason, p.Message)
	if err != nil {
		return err
	}
	if rejected {
		s.release(r)
		s.ended.Add(ctx, 1, metric.WithAttributes(attribute.String("outcome", r.Phase), attribute.String("reason", p.Reason)))
		s.log.Info("migration rejected by the scheduler", "migration", r.ID, "pod", r.Key(), "reason", p.Reason)
	}
	return nil
}

// rejectPending ends migration id as Rejected with the reason, if it is
// still Pending; rejected says whether this write ended it.
func (s *Service) rejectPending(ctx context.Context, id, reason, msg string) (r *events.MigrationRecord, rejected bool, err error) {
	r, err = s.store.updateMigration(ctx, id, func(r *events.MigrationRecord) bool {
		rejected = r.Phase == events.MigrationPhasePending // as of this attempt: a lost compare-and-set reads again
		if rejected {
			r.Phase, r.Reason, r.Message, r.EndedAt = events.MigrationPhaseRejected, reason, msg, s.now().UTC()
		}
		return rejected
	})
	return r, rejected, err
}

// onCancel cancels a migration that has not begun relocating. Once the
// vMotion runs, stopping it half-way would leave the pod nowhere safe; the
// cancel is then refused and the record says so.
func (s *Service) onCancel(ctx context.Context, p *events.MigrationCancelRequested) error {
	r, err := s.store.migration(ctx, p.ID)
	if err != nil {
		return err
	}
	if r == nil {
		s.log.Info("cancel for an unknown migration", "migration", p.ID)
		return nil
	}
	if !r.Active() {
		return nil
	}
	if r.IsVM() {
		// A VM move is cancelled while queued; once admitted, the
		// native VM controller's vMotion runs to its end.
		if ended, err := s.endQueuedVM(ctx, r, ReasonCancelled, "cancelled while queued"); ended || err != nil {
			return err
		}
		_, err := s.store.updateMigration(ctx, r.ID, func(r *events.MigrationRecord) bool {
			if !r.Active() {
				return false
			}
			r.CancelRequested, r.Message = true, fmt.Sprintf("cancel refused: the relocation to %s already began", r.TargetHost)
			return true
		})
		return err
	}
	s.mu.Lock()
	if s.lim.remove(r.ID) {
		s.mu.Unlock()
		s.poke()
		return s.finish(ctx, r, events.MigrationPhaseCancelled, "Cancelled", "cancelled while queued")
	}
	if f, ok := s.flights[r.ID]; ok {
		relocating := f.relocating
		if !relocating {
			f.cancelled, f.cancelReason, f.cancelMsg = true, "Cancelled", "cancelled before relocating"
		}
		s.mu.Unlock()
		_, err := s.store.updateMigration(ctx, r.ID, func(r *events.MigrationRecord) bool {
			if !r.Active() {
				return false
			}
			r.CancelRequested = true
			if relocating {
				r.Message = fmt.Sprintf("cancel refused: the relocation to %s already began", r.TargetHost)
			}
			return true
		})
		return err
	}
	s.mu.Unlock()
	if r.Phase == events.MigrationPhasePending {
		return s.finish(ctx, r, events.MigrationPhaseCancelled, "Cancelled", "cancelled before a target was reserved")
	}
	// Between queue and runner: the runner reads the flag when it starts.
	_, err = s.store.updateMigration(ctx, r.ID, func(r *events.MigrationRecord) bool {
		r.CancelRequested = true
		return r.Active()
	})
	return err
}

// finish ends a migration: it makes the record final, frees the pod, then
// announces the outcome. The record comes first so that whoever hears of
// the end — a client that asks again at once, a drain — finds it final and
// the pod free (before, migration.failed went out first, and an immediate
// new request was rejected AlreadyMigrating). The record says the
// announcement is pending until it is published, and the leader's sweep
// makes one a crash cut off (announcePending), so the scheduler still
// hears of every end and releases the target.
func (s *Service) finish(ctx context.Context, r *events.MigrationRecord, phase, reason, msg string) error {
	if !events.MigrationPhaseFinal(phase) || phase == events.MigrationPhaseRejected {
		return fmt.Errorf("finish migration %s: %q is not a final phase", r.ID, phase)
	}
	end := func(rec *events.MigrationRecord) {
		rec.Phase, rec.Reason, rec.Message = phase, reason, msg
		if phase == events.MigrationPhaseCompleted {
			rec.Reason, rec.Message, rec.Percent = "", "", 100
		}
		rec.QueuePosition, rec.RelocateTask, rec.EndedAt = 0, "", s.now().UTC()
		rec.AnnouncePending = true
	}
	wrote := false
	updated, err := s.store.updateMigration(ctx, r.ID, func(rec *events.MigrationRecord) bool {
		wrote = rec.Active() // as of this attempt: a lost compare-and-set reads again
		if wrote {
			end(rec)
		}
		return wrote
	})
	if errors.Is(err, errNoRecord) && r.CreatedAt.IsZero() {
		// Never stored (a reservation whose deliveries ran out before its
		// request was recorded): the record is created final.
		rec := *r
		end(&rec)
		if err = s.store.createMigration(ctx, &rec); errors.Is(err, errExists) {
			return fmt.Errorf("finish migration %s: created meanwhile", r.ID)
		}
		updated, wrote = &rec, err == nil
	}
	if err != nil {
		return err
	}
	if !wrote {
		// Ended meanwhile by another step; its outcome is its own, and
		// announced (or pending) with it.
		return s.announce(ctx, updated)
	}
	s.release(updated)
	s.ended.Add(ctx, 1, metric.WithAttributes(attribute.String("outcome", phase), attribute.String("reason", reason)))
	if phase == events.MigrationPhaseCompleted && !updated.CreatedAt.IsZero() && !updated.EndedAt.IsZero() {
		s.took.Record(ctx, updated.EndedAt.Sub(updated.CreatedAt).Seconds())
	}
	s.log.Info("migration ended", "migration", r.ID, "pod", r.Key(), "phase", phase, "reason", reason, "message", msg)
	return s.announce(ctx, updated)
}

// announce publishes the outcome of a final record whose announcement is
// pending, then clears the mark. The event's id is derived from the
// migration, so announcing twice (a crash between the two steps) is
// de-duplicated by JetStream.
func (s *Service) announce(ctx context.Context, r *events.MigrationRecord) error {
	if r == nil || r.Active() || !r.AnnouncePending {
		return nil
	}
	var data events.Payload
	switch r.Phase {
	case events.MigrationPhaseCompleted:
		data = &events.MigrationCompleted{
			MigrationRef:  events.MigrationRef{ID: r.ID, Namespace: r.Namespace, Pod: r.Pod},
			MigrationMove: events.MigrationMove{UID: r.UID, SourceHost: r.SourceHost, TargetHost: r.TargetHost, TargetCluster: r.TargetCluster, TargetPool: r.TargetPool},
		}
	case events.MigrationPhaseCancelled:
		data = &events.MigrationCancelled{
			MigrationRef: events.MigrationRef{ID: r.ID, Namespace: r.Namespace, Pod: r.Pod}, UID: r.UID, TargetHost: r.TargetHost,
		}
	case events.MigrationPhaseFailed:
		data = &events.MigrationFailed{
			MigrationRef: events.MigrationRef{ID: r.ID, Namespace: r.Namespace, Pod: r.Pod}, UID: r.UID, SourceHost: r.SourceHost,
			TargetHost: r.TargetHost, Reason: r.Reason, Message: r.Message,
		}
	default:
		return nil
	}
	if err := s.hooks.at(ctx, r.ID, stepAnnounce); err != nil {
		return err
	}
	if err := s.publishFor(ctx, nil, r, "end", data); err != nil {
		return err
	}
	_, err := s.store.updateMigration(ctx, r.ID, func(rec *events.MigrationRecord) bool {
		if !rec.AnnouncePending {
			return false
		}
		rec.AnnouncePending = false
		return true
	})
	return err
}
