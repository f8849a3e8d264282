package migration

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/migration/vmotion"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/deps"
	"github.com/podvisor/podvisor/shared/lease"
	"github.com/podvisor/podvisor/shared/periodic"
)

// Name is the service's name: its consumers are migration-<STREAM>, its
// dead letters go to pv.dlq.migration.
const Name = "migration"

// Source is the CloudEvents source of everything the service publishes.
const Source = "podvisor/" + Name

const instrumentation = "github.com/podvisor/podvisor/services/migration"

// Service is the migration service.
type Service struct {
	cfg    Config
	bus    *bus.Bus
	out    *bus.Emitter
	vm     *vmotion.Client
	log    *slog.Logger
	store  *store
	tracer trace.Tracer
	now    func() time.Time
	// lease is the leader lease while Run runs; relocate fences every
	// vMotion with it.
	lease *lease.Lease
	// holder names this replica in the leader lease.
	holder string

	// ended counts migrations by outcome and reason; took measures the
	// ones that completed, from request to completion.
	ended metric.Int64Counter
	took  metric.Float64Histogram

	// mu guards the in-memory view below. The records in KV are the truth;
	// this view is rebuilt from them at start.
	mu sync.Mutex
	// lim is the admission queue.
	lim *limiter
	// podActive maps a pod key to its one active migration.
	podActive map[string]string
	// flights are the migrations whose runner is working.
	flights map[string]*flight
	// pending are the requests waiting for the scheduler, by ID, with the
	// time they were recorded.
	pending map[string]time.Time
	// positions are the queue positions last written to the records.
	positions map[string]int
	// drains are the drains running in this process, by host.
	drains map[string]*drainRun
	// runCtx is Run's context, which background drains live in.
	runCtx context.Context
	// nvm is what drains know of native VMs (vms.go).
	nvm nativeVMs

	kick    chan struct{}
	runners sync.WaitGroup

	hooks hooks
}

// flight is a migration its runner is working on.
type flight struct {
	// cancelled is set by migration.cancel.requested (or a lost host)
	// before relocating began; the runner stops at its next checkpoint.
	cancelled    bool
	cancelReason string
	cancelMsg    string
	// relocating is set once the vMotion started: from then on a cancel
	// is refused.
	relocating bool
}

// hooks let tests act at exact points of a migration; nil in production.
type hooks struct {
	// beforeRelocate runs after the prechecks passed, before the cancel
	// checkpoint that precedes the vMotion.
	beforeRelocate func(id string)
	// step runs at the named points of a run (stepRelocated,
	// stepFinalizing, stepAnnounce); an error it returns is that step's,
	// as if the bus, the KV store or vCenter had failed there.
	step func(ctx context.Context, id, at string) error
	// consume, when set, runs the term's consumers (run), as if the bus
	// had failed them when it returns an error.
	consume func(ctx context.Context, run func(context.Context) error) error
}

// The points of a run where hooks.step runs.
const (
	stepRelocated  = "relocated"  // the vMotion task ended, before finalizing
	stepFinalizing = "finalizing" // Finalizing recorded and announced, before confirming with vCenter
	stepAnnounce   = "announce"   // before the outcome's event is published
)

func (h hooks) at(ctx context.Context, id, point string) error {
	if h.step == nil {
		return nil
	}
	return h.step(ctx, id, point)
}

// newService builds the service on connections its caller checked (New,
// the tests): b and vm are not nil.
func newService(cfg Config, b *bus.Bus, vm *vmotion.Client, log *slog.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("migration: %w", err)
	}
	log = deps.OrDiscard(log)
	s := &Service{
		cfg:       cfg,
		bus:       b,
		out:       b.Emitter(Source),
		vm:        vm,
		log:       log.With("service", Name),
		tracer:    otel.Tracer(instrumentation),
		now:       time.Now,
		holder:    lease.NewHolder(),
		lim:       newLimiter(cfg.Limits),
		podActive: map[string]string{},
		flights:   map[string]*flight{},
		pending:   map[string]time.Time{},
		positions: map[string]int{},
		drains:    map[string]*drainRun{},
		kick:      make(chan struct{}, 1),
	}
	meter := otel.GetMeterProvider().Meter(instrumentation)
	var err error
	if s.ended, err = meter.Int64Counter("podvisor_migration_ended_total",
		metric.WithDescription("Migrations that ended, by outcome (Completed, Failed, Cancelled, Rejected) and reason."),
		metric.WithUnit("{migration}")); err != nil {
		return nil, fmt.Errorf("migration: counter: %w", err)
	}
	if s.took, err = meter.Float64Histogram("podvisor_migration_duration_seconds",
		metric.WithDescription("Time from request to completion of the migrations that completed (queue wait included)."),
		metric.WithUnit("s")); err != nil {
		return nil, fmt.Errorf("migration: histogram: %w", err)
	}
	// The buckets are opened here so that a missing topology fails the
	// process at start, not on its first event.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := openStore(ctx, b, func() time.Time { return s.now() })
	if err != nil {
		return nil, fmt.Errorf("migration: %w", err)
	}
	s.store = st
	return s, nil
}

// Run leads or stands by until ctx ends. Several replicas may run: the one
// holding the lease (KV `migrations`, key events.MigrationLeaderKey) does all the work —
// it resumes the migrations and drains the records say are unfinished,
// then consumes migration and host events — while the others wait for it
// to stop or vanish. Migrations that are relocating when the leader stops
// keep their vMotion running in vCenter and are picked up again by the
// next leader. Run returns nil when ctx ends.
func (s *Service) Run(ctx context.Context) error {
	s.lease = &lease.Lease{KV: s.store.migs, Key: events.MigrationLeaderKey, Holder: s.holder, TTL: s.cfg.LeaseTTL, Logger: s.log}
	return s.lease.Run(ctx, s.lead)
}

// lead is one term as leader: it ends when ctx does, which is also when the
// lease is lost.
func (s *Service) lead(leading context.Context) error {
	// Everything of this term — the dispatcher, the sweep, the consumers,
	// the runners and the drains — lives in term, which ends with the
	// first of them that fails. Before, drains lived in the lease's context alone: a
	// consumer that failed (a NATS node killed) stopped the dispatcher,
	// the sweep and the runners, and then the term waited for the drains,
	// which waited for migrations nobody would start, with the lease still
	// renewed so that no other replica took over: the full run's stall.
	ctx, endTerm := context.WithCancel(leading)
	defer endTerm()
	// The in-memory view is rebuilt from the records for every term: a
	// previous term's view may be stale, since another replica led since.
	s.mu.Lock()
	s.runCtx = ctx
	s.lim = newLimiter(s.cfg.Limits)
	s.podActive = map[string]string{}
	s.flights = map[string]*flight{}
	s.pending = map[string]time.Time{}
	s.positions = map[string]int{}
	s.drains = map[string]*drainRun{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.runCtx = nil
		s.mu.Unlock()
	}()
	if err := s.recover(ctx); err != nil {
		return fmt.Errorf("migration: %w", err)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { s.dispatchLoop(gctx); return nil })
	g.Go(func() error { s.sweepLoop(gctx); return nil })
	r := s.routes()
	consume := func(ctx context.Context) error { return r.Run(ctx, s.bus, s.consumer(), nil) }
	if s.hooks.consume != nil {
		consume = func(ctx context.Context) error {
			return s.hooks.consume(ctx, func(ctx context.Context) error { return r.Run(ctx, s.bus, s.consumer(), nil) })
		}
	}
	g.Go(func() error { return consume(gctx) })
	s.log.Info("migration service running", "per_source_host", s.cfg.Limits.PerSourceHost, "per_cluster", s.cfg.Limits.PerCluster)
	err := g.Wait()
	if err != nil && leading.Err() == nil {
		s.log.Error("the term's consumers failed: stopping its runners and drains, and the term", "err", err)
	}
	// Runners and drains see the term end and stop at their next step; the
	// next term (here or in another replica) resumes them from the records.
	endTerm()
	s.runners.Wait()
	if err != nil && leading.Err() == nil {
		return fmt.Errorf("migration: %w", err)
	}
	return nil
}

// consumer is the configuration of the service's consumers (the router
// fills in the stream and subjects).
func (s *Service) consumer() bus.ConsumerConfig {
	return bus.ConsumerConfig{
		Workers:    s.cfg.Workers,
		AckWait:    s.cfg.AckWait,
		MaxDeliver: s.cfg.MaxAttempts,
		BackOff:    s.cfg.BackOff,
		Logger:     s.log,
		Key:        objectKey,
	}
}

// objectKey is the work-queue key of an event: the object it is about,
// from the payload (the pod for migration events, the host for host
// events), so that a request and the scheduler's answer about the same pod
// are handled in order even if a client set another subject attribute.
func objectKey(ev event.Event) string {
	v, err := events.Decode(ev.Type(), ev.Data())
	if err != nil {
		return ev.Subject()
	}
	if p, ok := v.(events.Payload); ok {
		return p.ObjectKey()
	}
	return ev.Subject()
}

// recover rebuilds the in-memory view from the records: the pod locks, the
// queue (migrations that had started first, so they get their room back),
// the requests waiting for the scheduler, and the drains that were running.
func (s *Service) recover(ctx context.Context) error {
	recs, err := s.store.migrations(ctx)
	if err != nil {
		return fmt.Errorf("load migrations: %w", err)
	}
	slices.SortFunc(recs, func(a, b *events.MigrationRecord) int {
		if c := a.StartedAt.Compare(b.StartedAt); c != 0 && !a.StartedAt.IsZero() && !b.StartedAt.IsZero() {
			return c
		}
		if a.StartedAt.IsZero() != b.StartedAt.IsZero() {
			if a.StartedAt.IsZero() {
				return 1
			}
			return -1
		}
		return a.CreatedAt.Compare(b.CreatedAt)
	})
	s.mu.Lock()
	resumed := 0
	var vms []*events.MigrationRecord
	for _, r := range recs {
		if !r.Active() {
			continue
		}
		if r.IsVM() {
			vms = append(vms, r)
			continue
		}
		s.podActive[r.Key()] = r.ID
		if r.Phase == events.MigrationPhasePending {
			s.pending[r.ID] = r.CreatedAt
			continue
		}
		s.lim.enqueue(slotOf(r))
		resumed++
	}
	s.mu.Unlock()
	// VM moves (vmmoves.go): those admitted take their room first.
	for _, r := range vms {
		s.queueVM(ctx, r)
	}
	resumed += len(vms)
	drains, err := s.store.drainRecords(ctx)
	if err != nil {
		return fmt.Errorf("load drains: %w", err)
	}
	for _, d := range drains {
		if d.Phase == events.DrainPhaseDraining || d.Phase == events.DrainPhaseEnteringMaintenance {
			s.startDrain(d.Host)
		}
	}
	if resumed > 0 {
		s.log.Info("resuming migrations", "count", resumed)
		s.poke()
	}
	return nil
}

func slotOf(r *events.MigrationRecord) slot {
	return slot{id: r.ID, sourceHost: r.SourceHost, sourceCluster: r.SourceCluster, targetCluster: r.TargetCluster, vm: r.IsVM()}
}

// poke wakes the dispatcher.
func (s *Service) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// dispatchLoop starts every queued migration that has room and writes the
// queue positions of those still waiting.
func (s *Service) dispatchLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		}
		s.mu.Lock()
		started := s.lim.next()
		// A VM move is admitted here and run by the native VM controller.
		var vmMoves []slot
		started = slices.DeleteFunc(started, func(sl slot) bool {
			if sl.vm {
				vmMoves = append(vmMoves, sl)
			}
			return sl.vm
		})
		for _, sl := range vmMoves {
			delete(s.positions, sl.id)
		}
		for _, sl := range started {
			s.flights[sl.id] = &flight{}
			delete(s.positions, sl.id)
		}
		waiting := s.lim.waiting()
		var changed []string
		for id, q := range waiting {
			if p, ok := s.positions[id]; !ok || p != q.position {
				s.positions[id] = q.position
				changed = append(changed, id)
			}
		}
		s.mu.Unlock()
		for _, sl := range vmMoves {
			s.runners.Add(1)
			go func() {
				defer s.runners.Done()
				s.admitVM(ctx, sl.id)
			}()
		}
		for _, sl := range started {
			s.log.Info("migration started", "migration", sl.id, "from", sl.sourceHost)
			s.runners.Add(1)
			go func() {
				defer s.runners.Done()
				s.runMigration(ctx, sl.id)
			}()
		}
		for _, id := range changed {
			q := waiting[id]
			s.log.Info("migration waiting for room", "migration", id, "position", q.position, "waits_for", q.why)
			if _, err := s.store.updateMigration(ctx, id, func(r *events.MigrationRecord) bool {
				if r.Phase != events.PhaseQueued || (r.QueuePosition == q.position && r.Message == q.why) {
					return false
				}
				r.QueuePosition, r.Message = q.position, q.why
				return true
			}); err != nil && ctx.Err() == nil {
				s.log.Warn("write queue position", "migration", id, "err", err)
			}
		}
	}
}

// waitLogEvery is how often the log says again what a migration or a
// drain still waits for.
const waitLogEvery = 30 * time.Second

// pruneInterval is how often finished records past their retention are
// removed.
const pruneInterval = time.Minute

// prune removes the records of migrations that ended more than
// RecordRetention ago.
func (s *Service) prune(ctx context.Context) {
	recs, err := s.store.migrations(ctx)
	if err != nil {
		s.log.Warn("list migrations to prune", "err", err)
		return
	}
	cutoff := s.now().Add(-s.cfg.RecordRetention)
	removed := 0
	for _, r := range recs {
		if r.Active() || r.EndedAt.IsZero() || r.EndedAt.After(cutoff) {
			continue
		}
		if err := s.store.migs.Delete(ctx, events.MigrationRecordKey(r.ID)); err != nil {
			s.log.Warn("prune migration record", "migration", r.ID, "err", err)
			continue
		}
		removed++
	}
	if removed > 0 {
		s.log.Info("pruned finished migration records", "count", removed, "older_than", s.cfg.RecordRetention)
	}
}

// sweepLoop fails the requests the scheduler never answered, so that a pod
// is not held by a migration that will not happen, and repairs the
// migrations no runner works on.
func (s *Service) sweepLoop(ctx context.Context) {
	lastPrune := s.now()
	periodic.Every(ctx, s.cfg.SweepInterval, s.log, "sweep", func(ctx context.Context) error {
		now := s.now()
		if now.Sub(lastPrune) >= pruneInterval {
			lastPrune = now
			s.prune(ctx)
		}
		s.repair(ctx)
		var expired []string
		s.mu.Lock()
		for id, since := range s.pending {
			waited := now.Sub(since)
			if waited > s.cfg.ReservationTimeout {
				expired = append(expired, id)
			} else if waited >= waitLogEvery && waited%waitLogEvery < s.cfg.SweepInterval {
				s.log.Info("migration still waiting", "migration", id, "waits_for", "the scheduler's target reservation",
					"waited", waited.Round(time.Second), "fails_after", s.cfg.ReservationTimeout)
			}
		}
		s.mu.Unlock()
		for _, id := range expired {
			r, err := s.store.migration(ctx, id)
			if err != nil || r == nil {
				continue
			}
			if !r.Active() {
				s.release(r) // ended by another replica, or by a step here
				continue
			}
			if r.Phase != events.MigrationPhasePending {
				s.mu.Lock()
				delete(s.pending, id)
				s.mu.Unlock()
				continue
			}
			msg := fmt.Sprintf("the scheduler reserved no target within %s (is it running?)", s.cfg.ReservationTimeout)
			if err := s.finish(ctx, r, events.MigrationPhaseFailed, ReasonNoReservation, msg); err != nil {
				s.log.Warn("expire migration", "migration", id, "err", err)
			}
		}
		return nil
	})
}

// repair announces every end recorded and not yet announced, queues again every active migration that this leader neither
// queues nor runs, waits again for the reservation of every pending one
// it does not know, and resumes every unfinished drain it does not run: a runner that met an error it could not decide on
// (the bus, the KV store or vCenter not answering for a moment) leaves the
// record active and stops, and this is where the migration resumes — so
// one left Finalizing is finished, or failed by where vCenter says its VM
// is, by this leader rather than by the next. A record is left alone for
// a few sweeps after its last write, while the handler that wrote it may
// still be queueing it.
func (s *Service) repair(ctx context.Context) {
	recs, err := s.store.migrations(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("list migrations to repair", "err", err)
		}
		return
	}
	settled := s.now().Add(-3 * s.cfg.SweepInterval)
	var queued []string
	var unannounced []*events.MigrationRecord
	s.mu.Lock()
	for _, r := range recs {
		if r.UpdatedAt.After(settled) || r.IsVM() {
			continue // a VM move is queued by its handler and at start
		}
		if !r.Active() {
			if r.AnnouncePending {
				unannounced = append(unannounced, r)
			}
			continue
		}
		if cur, ok := s.podActive[r.Key()]; ok && cur != r.ID {
			continue // another migration of the pod is the active one here
		}
		if r.Phase == events.MigrationPhasePending {
			if _, ok := s.pending[r.ID]; !ok {
				s.podActive[r.Key()] = r.ID
				s.pending[r.ID] = r.CreatedAt
			}
			continue
		}
		if s.lim.has(r.ID) {
			continue
		}
		s.podActive[r.Key()] = r.ID
		s.lim.enqueue(slotOf(r))
		queued = append(queued, r.ID)
	}
	s.mu.Unlock()
	if len(queued) > 0 {
		s.log.Info("resuming migrations no runner works on", "migrations", queued)
		s.poke()
	}
	// An end recorded and not announced (the bus did not take it, or the
	// process stopped in between) is announced here.
	for _, r := range unannounced {
		if err := s.announce(ctx, r); err != nil {
			if ctx.Err() == nil {
				s.log.Warn("announce the end of a migration; the next sweep retries", "migration", r.ID, "phase", r.Phase, "err", err)
			}
			continue
		}
		s.log.Info("announced the end of a migration a step before had recorded", "migration", r.ID, "phase", r.Phase, "reason", r.Reason)
	}
	// A drain whose runner stopped on an error is resumed the same way
	// (startDrain does nothing for one that runs).
	drains, err := s.store.drainRecords(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("list drains to repair", "err", err)
		}
		return
	}
	for _, d := range drains {
		if (d.Phase == events.DrainPhaseDraining || d.Phase == events.DrainPhaseEnteringMaintenance) && !d.UpdatedAt.After(settled) {
			s.startDrain(d.Host)
		}
	}
}
