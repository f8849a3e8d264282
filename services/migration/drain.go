package migration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/migration/vmotion"
	"github.com/podvisor/podvisor/shared/bus"
)

// A drain empties a host: cordon it (host.cordoned: the scheduler places
// nothing more there), ask for a migration of every running pod — they go
// through the same queue and limits as any other — wait for them to end,
// and, if every pod left, put the host in maintenance mode. host.drained
// reports what moved and what could not.
//
// A drain makes up to DrainRounds passes over the host's pods: a pod still
// being placed or provisioned there during one pass is migrated in the
// next once it runs. Its state lives in the drain record, so a drain in
// progress when the service stops resumes when it starts again.

// drainRun is a drain in progress in this process.
type drainRun struct {
	stop context.CancelFunc
	done chan struct{}
}

// drainPoll is how often a drain looks at the migrations it waits for.
const drainPoll = 50 * time.Millisecond

// settleTimeout bounds how long a drain pass waits for pods still being
// provisioned on the host to start running before the next pass.
const settleTimeout = 30 * time.Second

func (s *Service) onDrainRequested(ctx context.Context, m *bus.Message, p *events.HostDrainRequested) error {
	annotateHost(ctx, p.Name)
	if _, err := s.vm.Host(ctx, p.Name); errors.Is(err, vmotion.ErrNotFound) {
		return bus.Permanent(fmt.Errorf("drain host %s: %w", p.Name, err))
	} else if err != nil {
		return err
	}
	d, rev, err := s.store.drain(ctx, p.Name)
	if err != nil {
		return err
	}
	running := d != nil && (d.Phase == events.DrainPhaseDraining || d.Phase == events.DrainPhaseEnteringMaintenance)
	if d != nil && (d.RequestID == m.Event.ID() || running) {
		if running {
			s.startDrain(p.Name)
		}
		return nil // a redelivery, or a drain already under way
	}
	rec := &events.DrainRecord{
		Host: p.Name, Phase: events.DrainPhaseDraining, RequestID: m.Event.ID(),
		Message: "cordoned; moving pods away", StartedAt: s.now().UTC(),
	}
	if _, err := s.store.putDrain(ctx, rec, rev); err != nil {
		return err
	}
	if err := s.emit(ctx, &m.Event, &events.HostCordoned{Name: p.Name, Reason: "Drain"}); err != nil {
		return err
	}
	s.log.Info("drain started", "host", p.Name)
	s.startDrain(p.Name)
	return nil
}

// startDrain runs a host's drain in the background unless it runs already.
func (s *Service) startDrain(host string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.drains[host]; ok || s.runCtx == nil {
		return
	}
	ctx, stop := context.WithCancel(s.runCtx)
	run := &drainRun{stop: stop, done: make(chan struct{})}
	s.drains[host] = run
	s.runners.Add(1)
	go func() {
		defer s.runners.Done()
		defer close(run.done)
		defer stop()
		if err := s.runDrain(ctx, host); err != nil && ctx.Err() == nil {
			s.log.Error("drain", "host", host, "err", err)
		}
		s.mu.Lock()
		if s.drains[host] == run {
			delete(s.drains, host)
		}
		s.mu.Unlock()
	}()
}

// drainState is what a drain learned so far, by pod or VM uid.
type drainState struct {
	moved     map[string]bool // pods
	movedVMs  map[string]bool // native VMs
	unmovable map[string]events.UnmovablePod
	order     []string        // unmovable uids in the order found
	stuckVMs  map[string]bool // the unmovable that are native VMs
}

func (st *drainState) stuck(u events.UnmovablePod) {
	if _, ok := st.unmovable[u.UID]; !ok {
		st.order = append(st.order, u.UID)
	}
	st.unmovable[u.UID] = u
}

// stuckVM is stuck for a native VM.
func (st *drainState) stuckVM(u events.UnmovablePod) {
	st.stuck(u)
	st.stuckVMs[u.UID] = true
}

func (st *drainState) list() []events.UnmovablePod {
	out := make([]events.UnmovablePod, 0, len(st.order))
	for _, uid := range st.order {
		out = append(out, st.unmovable[uid])
	}
	return out
}

func (s *Service) runDrain(ctx context.Context, host string) error {
	d, _, err := s.store.drain(ctx, host)
	if err != nil || d == nil {
		return err
	}
	requestID := d.RequestID
	ctx, cancel := context.WithDeadline(ctx, d.StartedAt.Add(s.cfg.DrainTimeout))
	defer cancel()
	st := &drainState{moved: map[string]bool{}, movedVMs: map[string]bool{}, unmovable: map[string]events.UnmovablePod{}, stuckVMs: map[string]bool{}}
	// A resumed drain first settles the migrations it had asked for.
	if len(d.Migrations) > 0 {
		s.log.Info("drain resumed", "host", host, "round", d.Round, "migrations", len(d.Migrations))
	}
	if err := s.awaitMigrations(ctx, host, d.Migrations, st); err != nil {
		return s.drainStopped(ctx, host, requestID, st, err)
	}
	if d.Phase == events.DrainPhaseDraining {
		for round := d.Round + 1; round <= s.cfg.DrainRounds; round++ {
			more, err := s.drainPass(ctx, host, requestID, round, st)
			if err != nil {
				return s.drainStopped(ctx, host, requestID, st, err)
			}
			if !more {
				break
			}
		}
		// Then its native VMs (vms.go).
		if err := s.drainVMs(ctx, host, requestID, st); err != nil {
			return s.drainStopped(ctx, host, requestID, st, err)
		}
		// What is still on the host after the last pass stays.
		pods, err := s.store.podsOnHost(ctx, host)
		if err != nil {
			return s.drainStopped(ctx, host, requestID, st, err)
		}
		for _, p := range pods {
			if st.moved[p.UID] || gone(p) {
				continue
			}
			if _, ok := st.unmovable[p.UID]; !ok {
				st.stuck(events.UnmovablePod{Namespace: p.Namespace, Name: p.Name, UID: p.UID, Reason: ReasonStillProvisioning,
					Message: fmt.Sprintf("still %s on %s after %d passes", p.Phase, host, s.cfg.DrainRounds)})
			}
		}
	}
	return s.drainEnded(ctx, host, requestID, st, nil)
}

// gone reports whether a pod is leaving on its own (deleted or failed).
func gone(p *events.PodRecord) bool {
	return !p.DeletionRequestedAt.IsZero() || p.Phase == events.PodPhaseTerminating || p.Phase == events.PodPhaseFailed
}

// drainPass asks for a migration of every running pod on the host not yet
// handled, waits for them, and reports whether another pass is worth it
// (pods were still being provisioned on the host).
func (s *Service) drainPass(ctx context.Context, host, requestID string, round int, st *drainState) (bool, error) {
	pods, err := s.store.podsOnHost(ctx, host)
	if err != nil {
		return false, err
	}
	var ids []string
	inTransit := 0
	for _, p := range pods {
		if st.moved[p.UID] || gone(p) {
			continue
		}
		if _, ok := st.unmovable[p.UID]; ok {
			continue
		}
		if !events.PodHasVM(p.Phase) {
			inTransit++
			continue
		}
		id, err := s.requestDrainMigration(ctx, host, requestID, round, p)
		if err != nil {
			return false, err
		}
		ids = append(ids, id)
	}
	if _, err := s.updateRunningDrain(ctx, host, func(d *events.DrainRecord) bool {
		if d.RequestID != requestID || d.Phase != events.DrainPhaseDraining {
			return false
		}
		d.Round = round
		for _, id := range ids {
			if !containsString(d.Migrations, id) {
				d.Migrations = append(d.Migrations, id)
			}
		}
		d.Message = fmt.Sprintf("pass %d: %d migrations requested", round, len(ids))
		return true
	}); err != nil {
		return false, err
	}
	s.log.Info("drain pass", "host", host, "round", round, "migrations", len(ids), "pods_not_running_yet", inTransit)
	if err := s.awaitMigrations(ctx, host, ids, st); err != nil {
		return false, err
	}
	if inTransit == 0 {
		return false, nil
	}
	s.log.Info("drain waiting for pods still being provisioned on the host", "host", host, "round", round, "pods", inTransit, "at_most", settleTimeout)
	// Give pods still being provisioned here time to run, then go again.
	deadline := time.Now().Add(settleTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		pods, err := s.store.podsOnHost(ctx, host)
		if err != nil {
			return false, err
		}
		settled := true
		for _, p := range pods {
			if !st.moved[p.UID] && !gone(p) && !events.PodHasVM(p.Phase) {
				settled = false
			}
		}
		if settled {
			break
		}
	}
	return true, nil
}

// requestDrainMigration records and requests the migration of one pod. If
// the pod is migrating already (someone asked before the drain), the drain
// waits for that migration instead.
func (s *Service) requestDrainMigration(ctx context.Context, host, requestID string, round int, p *events.PodRecord) (string, error) {
	id := drainMigrationID(host, round, p.UID)
	rec := &events.MigrationRecord{
		ID: id, Namespace: p.Namespace, Pod: p.Name, Phase: events.MigrationPhasePending, Drain: host,
		TraceParent: p.TraceParent, Message: "requested by the drain of " + host + "; waiting for the scheduler to reserve a target",
	}
	other, err := s.claim(ctx, rec.Key(), id)
	if err != nil {
		return "", err
	}
	if other != "" {
		return other, nil
	}
	if err := s.store.createMigration(ctx, rec); err != nil && !errors.Is(err, errExists) {
		s.release(rec)
		return "", err
	}
	s.mu.Lock()
	s.pending[id] = s.now()
	s.mu.Unlock()
	if err := s.emit(ctx, standIn(fmt.Sprintf("drain/%s/%s", host, requestID), p.TraceParent), &events.MigrationRequested{
		MigrationRef: events.MigrationRef{ID: id, Namespace: p.Namespace, Pod: p.Name},
	}, bus.Distinct(id)); err != nil {
		return "", err
	}
	return id, nil
}

// drainMigrationID names a drain's migration of one pod: readable in `get
// migrations`, the same on a resumed pass, within the 128 characters of an
// event token.
func drainMigrationID(host string, round int, uid string) string {
	var b strings.Builder
	for _, r := range host {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	h := b.String()
	if len(h) > 64 {
		h = h[:64]
	}
	id := fmt.Sprintf("drain-%s-%d-%s", h, round, uid)
	if len(id) > 128 {
		id = id[:128]
	}
	return id
}

// awaitMigrations waits until every migration in ids ended and tallies
// them. The log says which migrations it waits for, and in what phase,
// each time that changes and every waitLogEvery.
func (s *Service) awaitMigrations(ctx context.Context, host string, ids []string, st *drainState) error {
	left := append([]string(nil), ids...)
	said, saidAt := "", time.Time{}
	for len(left) > 0 {
		var still, waits []string
		for _, id := range left {
			r, err := s.store.migration(ctx, id)
			if err != nil {
				// The KV store not answering for a moment ends no drain:
				// look again at the next poll.
				if ctx.Err() != nil {
					return ctx.Err()
				}
				still, waits = append(still, id), append(waits, id+" (unread: "+err.Error()+")")
				continue
			}
			if r == nil {
				continue
			}
			if r.Active() {
				w := id + " " + r.Phase
				if r.Message != "" {
					w += ": " + r.Message
				}
				still, waits = append(still, id), append(waits, w)
				continue
			}
			uid := r.UID
			if uid == "" {
				if p, err := s.store.pod(ctx, r.Namespace, r.Pod); err == nil && p != nil {
					uid = p.UID
				}
			}
			if r.Phase == events.MigrationPhaseCompleted {
				st.moved[uid] = true
				continue
			}
			reason := r.Reason
			if reason == "" {
				reason = "Migration" + r.Phase
			}
			st.stuck(events.UnmovablePod{Namespace: r.Namespace, Name: r.Pod, UID: uid, Reason: reason, Message: r.Message})
		}
		left = still
		if len(left) == 0 {
			break
		}
		if now := time.Now(); strings.Join(waits, "; ") != said || now.Sub(saidAt) >= waitLogEvery {
			said, saidAt = strings.Join(waits, "; "), now
			s.log.Info("drain waiting for migrations", "host", host, "count", len(waits), "waits_for", said)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(drainPoll):
		}
	}
	return nil
}

// lagRereads are the pauses before reading again a drain record that a
// read did not find: a NATS node that restarted catches up in moments.
var lagRereads = []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond}

// updateRunningDrain is updateDrain for a drain's own steps, whose record
// exists: one not found (a read answered by a NATS node not yet current)
// is read again after a pause, a few times, before the step gives up
// (and the runner stops, for the sweep to resume the drain).
func (s *Service) updateRunningDrain(ctx context.Context, host string, mutate func(r *events.DrainRecord) bool) (*events.DrainRecord, error) {
	for i := 0; ; i++ {
		d, err := s.store.updateDrain(ctx, host, mutate)
		if !errors.Is(err, errNoRecord) || i == len(lagRereads) {
			return d, err
		}
		s.log.Info("drain record not found by a read; reading again", "host", host, "attempt", i+1)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(lagRereads[i]):
		}
	}
}

// drainStopped is where a drain step's error goes. The KV store or the bus
// not answering for a moment (a read or a listing that timed out, a record
// read from a NATS node not yet current) ends no drain: the record stays
// as it is and the runner stops, and the leader's sweep resumes the drain
// (its passes and migrations are named so that a resumed drain asks for
// nothing twice). The drain's own deadline, or a refusal, ends it
// Incomplete with the cause.
func (s *Service) drainStopped(ctx context.Context, host, requestID string, st *drainState, err error) error {
	if ctx.Err() == nil && !bus.IsPermanent(err) {
		s.log.Warn("drain step could not run; the repair sweep resumes the drain", "host", host, "err", err)
		return nil
	}
	return s.drainEnded(ctx, host, requestID, st, err)
}

// drainEnded writes the outcome: maintenance mode when every pod left,
// the list of pods that stayed otherwise, and host.drained either way. A
// drain stopped by an uncordon (its context cancelled) writes nothing: the
// uncordon did.
func (s *Service) drainEnded(ctx context.Context, host, requestID string, st *drainState, cause error) error {
	if cause != nil && errors.Is(cause, context.Canceled) {
		return nil
	}
	if s.runCtx != nil && s.runCtx.Err() != nil {
		return nil // the service is stopping: the next Run resumes the drain
	}
	unmovable := st.list()
	migrated, migratedVMs := len(st.moved), len(st.movedVMs)
	phase, msg := events.DrainPhaseDrained, ""
	switch {
	case cause != nil:
		phase, msg = events.DrainPhaseIncomplete, fmt.Sprintf("drain stopped: %v", cause)
	case len(unmovable) > 0:
		vms := len(st.stuckVMs)
		phase, msg = events.DrainPhaseIncomplete, fmt.Sprintf("%s could not move; %s stays cordoned and out of maintenance mode",
			events.MovedText(len(unmovable)-vms, vms), host)
	default:
		s.log.Info("drain entering maintenance mode", "host", host, "migrated", migrated)
		if _, err := s.updateRunningDrain(ctx, host, func(d *events.DrainRecord) bool {
			if d.RequestID != requestID || d.Phase != events.DrainPhaseDraining {
				return false
			}
			d.Phase, d.Migrated, d.MigratedVMs, d.Message = events.DrainPhaseEnteringMaintenance, migrated, migratedVMs, "entering maintenance mode"
			return true
		}); err != nil {
			return err
		}
		if err := s.enterMaintenance(ctx, host); err != nil {
			phase, msg = events.DrainPhaseIncomplete, err.Error()
		} else {
			msg = fmt.Sprintf("%s moved; %s is in maintenance mode", events.MovedText(migrated, migratedVMs), host)
		}
	}
	// The outcome is recorded first: host.drained is what a waiting CLI
	// reads, and it must find the record final when it looks.
	d, err := s.updateRunningDrain(ctx, host, func(d *events.DrainRecord) bool {
		if d.RequestID != requestID || (d.Phase != events.DrainPhaseDraining && d.Phase != events.DrainPhaseEnteringMaintenance) {
			return false
		}
		d.Phase, d.Migrated, d.MigratedVMs, d.Unmovable, d.Message, d.EndedAt = phase, migrated, migratedVMs, unmovable, msg, s.now().UTC()
		return true
	})
	if err != nil {
		return err
	}
	if d == nil || d.RequestID != requestID || d.Phase != phase {
		return nil // uncordoned meanwhile
	}
	if err := s.emit(ctx, standIn(fmt.Sprintf("drain/%s/%s", host, requestID), ""), &events.HostDrained{Name: host, Migrated: migrated, MigratedVMs: migratedVMs, Unmovable: unmovable}); err != nil {
		return err
	}
	s.log.Info("drain ended", "host", host, "phase", phase, "migrated", migrated, "migrated_vms", migratedVMs, "unmovable", len(unmovable))
	return nil
}

// maintenanceAttempts: vCenter refuses maintenance mode while a powered-on
// VM is still registered on the host (a pod VM whose delete is finishing);
// a few tries a second apart let such stragglers go.
const maintenanceAttempts = 5

func (s *Service) enterMaintenance(ctx context.Context, host string) error {
	return bus.Retry(ctx, maintenanceAttempts, []time.Duration{time.Second}, func(ctx context.Context) error {
		return s.vm.EnterMaintenance(ctx, host)
	})
}

// onCordonRequested cordons a host a client asked for: host.cordoned, which
// the scheduler acts on. Only podvisor announces cordons; a client asks.
func (s *Service) onCordonRequested(ctx context.Context, m *bus.Message, p *events.HostCordonRequested) error {
	if _, err := s.vm.Host(ctx, p.Name); errors.Is(err, vmotion.ErrNotFound) {
		return bus.Permanent(fmt.Errorf("cordon host %s: %w", p.Name, err))
	} else if err != nil {
		return err
	}
	reason := p.Reason
	if reason == "" {
		reason = "Manual"
	}
	return s.emit(ctx, &m.Event, &events.HostCordoned{Name: p.Name, Reason: reason})
}

// onUncordonRequested stops a drain still running, takes the host out of
// maintenance mode, then announces host.uncordoned (the scheduler clears
// the cordon from it).
func (s *Service) onUncordonRequested(ctx context.Context, m *bus.Message, p *events.HostUncordonRequested) error {
	s.mu.Lock()
	run := s.drains[p.Name]
	s.mu.Unlock()
	if run != nil {
		run.stop()
		select {
		case <-run.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if _, err := s.store.updateDrain(ctx, p.Name, func(d *events.DrainRecord) bool {
		if d.Phase == events.DrainPhaseUncordoned {
			return false
		}
		if d.Phase == events.DrainPhaseDraining || d.Phase == events.DrainPhaseEnteringMaintenance {
			d.Message = "stopped: the host was uncordoned"
		} else {
			d.Message = "uncordoned after the drain"
		}
		d.Phase = events.DrainPhaseUncordoned
		if d.EndedAt.IsZero() {
			d.EndedAt = s.now().UTC()
		}
		return true
	}); err != nil && (run != nil || !errors.Is(err, errNoRecord)) {
		// A drain that ran here has a record: not finding it is a lagging
		// read, tried again with the delivery. Without one, the host was
		// never drained.
		return err
	}
	if err := s.vm.ExitMaintenance(ctx, p.Name); err != nil && !errors.Is(err, vmotion.ErrNotFound) {
		return err
	}
	if err := s.emit(ctx, &m.Event, &events.HostUncordoned{Name: p.Name}); err != nil {
		return err
	}
	s.log.Info("host uncordoned", "host", p.Name)
	return nil
}

func containsString(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}
