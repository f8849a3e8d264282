package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/services/scheduler/inventory"
	"github.com/podvisor/podvisor/services/scheduler/ledger"
	"github.com/podvisor/podvisor/services/scheduler/plugins"
	locality "github.com/podvisor/podvisor/services/scheduler/plugins/imagelocality"
	"github.com/podvisor/podvisor/services/scheduler/plugins/networkavailable"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/deps"
	"github.com/podvisor/podvisor/shared/imagemeta"
	"github.com/podvisor/podvisor/shared/record"
)

// Name is the service name: consumer durables are scheduler-<STREAM>.
const Name = "scheduler"

// Source is the CloudEvent source of everything the scheduler publishes.
const Source = "podvisor/" + Name

// Deps are the scheduler's connections (package deps): the bus and the
// vCenter session the host inventory is read from (every host of the
// vCenter, whatever the session's datacenter), both required, and
// Redis, the image cache's metadata store, read (never written) for image
// locality when set (without it ImageLocality scores zero).
type Deps = deps.Deps

// Service is the scheduler.
type Service struct {
	cfg     Config
	profile framework.Profile
	bus     *bus.Bus
	out     *bus.Emitter
	source  *inventory.Source
	log     *slog.Logger

	hostsKV  jetstream.KeyValue
	ledgerKV jetstream.KeyValue
	netKV    jetstream.KeyValue
	podsKV   jetstream.KeyValue
	vmsKV    jetstream.KeyValue
	migsKV   jetstream.KeyValue
	ledger   *ledger.Ledger
	// hostRecords is KV `hosts` as typed records (compare-and-set writes).
	hostRecords *record.Store[events.HostRecord]

	// mu guards everything below: the snapshot the framework reads, the
	// inventory records and the read models folded into it.
	mu       sync.Mutex
	snap     *framework.Snapshot
	fw       *framework.Framework
	records  map[string]*events.HostRecord
	netAvail map[string]*events.NetworkAvailability
	// allocIndex maps a committed allocation key to its host.
	allocIndex map[string]string
	// gone holds uids of pods deleted or failed recently, so that a
	// scheduling request racing with the delete is dropped.
	gone map[string]time.Time
	// stranded is since when the pending rescan has found each pod (by
	// uid) held in the ledger while its record shows no host
	// (recoverPending).
	stranded map[string]time.Time
	// vmGen is the latest generation accepted per VM uid: what
	// vm.scheduled confirms.
	vmGen map[string]int64
	// dirty hosts whose record must be written.
	dirty map[string]bool
	ready bool

	// entries caches the last ledger entry applied per host (the hint of
	// the next write to it).
	entries map[string]ledger.Entry
	// ledgerKeys maps a ledger key to its host (keys may be escaped).
	ledgerKeys map[string]string
	// recordRevs is the revision of each host record as this replica last
	// wrote it: the next write is a compare-and-set at it, without a read.
	recordRevs map[string]uint64
	// recordValues is each host record as this replica last wrote or
	// read it: a flush skips a record that did not change since (every
	// write is a JetStream message synced to disk).
	recordValues map[string][]byte

	// sweepSeen is what the ledger sweep's last pass found wrong, per pod
	// uid (only the rescan loop touches it).
	sweepSeen map[string]sweepMark
	// reservationSeen is since when the sweep has found each migration
	// reservation (host|key) ended or without a record.
	reservationSeen map[string]sweepMark

	queue     chan *request
	retryMu   sync.Mutex
	retries   []*request
	retryWake chan struct{}
	// recordWake asks hostRecordLoop to flush before its next tick: a
	// host's own state changed (flushSoonLocked).
	recordWake chan struct{}
	loopDone   chan struct{} // closed when scheduleLoop returns

	commitMu   sync.Mutex
	committers map[string]*hostCommitter
	commitSem  chan struct{}

	pending *pendingSet
	metrics *metrics
	// runCtx is Run's context, for work a handler starts but does not
	// wait for.
	runCtx context.Context
}

// New builds the scheduler; it fails on a bad configuration or missing
// dependencies rather than on the first event.
func New(cfg Config, d Deps) (*Service, error) {
	err := d.Require(deps.NeedBus("pods are placed and announced on it"),
		deps.NeedVSphere("the host inventory is read from vCenter"))
	if cerr := cfg.Validate(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if err != nil {
		return nil, fmt.Errorf("scheduler: %w", err)
	}
	log := d.Log()
	s := &Service{
		cfg:          cfg,
		profile:      cfg.profile(),
		bus:          d.Bus,
		out:          d.Bus.Emitter(Source),
		source:       inventory.NewSource(d.VSphere.Vim()),
		log:          log.With("service", Name),
		snap:         framework.NewSnapshot(),
		records:      map[string]*events.HostRecord{},
		netAvail:     map[string]*events.NetworkAvailability{},
		allocIndex:   map[string]string{},
		gone:         map[string]time.Time{},
		stranded:     map[string]time.Time{},
		vmGen:        map[string]int64{},
		dirty:        map[string]bool{},
		entries:      map[string]ledger.Entry{},
		ledgerKeys:   map[string]string{},
		recordRevs:   map[string]uint64{},
		recordValues: map[string][]byte{},
		queue:        make(chan *request, cfg.BatchSize*4),
		retryWake:    make(chan struct{}, 1),
		recordWake:   make(chan struct{}, 1),
		loopDone:     make(chan struct{}),
		committers:   map[string]*hostCommitter{},
		commitSem:    make(chan struct{}, commitParallelism),
	}
	s.pending = newPendingSet(cfg.RetryInitial, cfg.RetryMax)
	m, err := newMetrics(s)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	services := map[string]any{
		// Read under s.mu: the framework filters with it held (placeLocked).
		networkavailable.ServiceName: networkavailable.NetworksFunc(func(name string) bool {
			_, ok := s.netAvail[name]
			return ok
		}),
	}
	if d.Redis != nil {
		services[locality.ServiceName] = imagemeta.NewReader(d.Redis)
	}
	fw, err := framework.New(s.profile, plugins.NewRegistry(), s.snap, services)
	if err != nil {
		return nil, fmt.Errorf("scheduler: %w", err)
	}
	s.fw = fw
	return s, nil
}

// Run loads the inventory, the ledger and the read models, then schedules
// until ctx ends. It returns nil when ctx ends.
func (s *Service) Run(ctx context.Context) error {
	s.runCtx = ctx
	if err := s.open(ctx); err != nil {
		return err
	}
	if err := s.load(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting: not a failure
		}
		return err
	}
	stopGauge, err := s.metrics.observe()
	if err != nil {
		return err
	}
	defer stopGauge()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { s.scheduleLoop(gctx); return nil })
	g.Go(func() error { return s.watchLedger(gctx) })
	g.Go(func() error { return s.watchNetworks(gctx) })
	g.Go(func() error { s.watchInventory(gctx); return nil })
	g.Go(func() error { s.resyncLoop(gctx); return nil })
	g.Go(func() error { s.retryLoop(gctx); return nil })
	g.Go(func() error { s.rescanLoop(gctx, s.cfg.PendingRescan); return nil })
	g.Go(func() error { s.hostRecordLoop(gctx); return nil })
	r := s.routes()
	g.Go(func() error { return r.Run(gctx, s.bus, bus.ConsumerConfig{Logger: s.log}, s.tuneConsumer) })
	err = g.Wait()
	if ctx.Err() != nil {
		// Write what changed last so that `get hosts` is current.
		flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		s.flushHostRecords(flushCtx)
		cancel()
		return nil
	}
	return err
}

func (s *Service) open(ctx context.Context) error {
	var err error
	kv := func(bucket string) jetstream.KeyValue {
		if err != nil {
			return nil
		}
		var b jetstream.KeyValue
		b, err = s.bus.KV(ctx, bucket)
		if err != nil {
			err = fmt.Errorf("scheduler: KV %s: %w", bucket, err)
		}
		return b
	}
	s.hostsKV = kv(events.BucketHosts)
	s.ledgerKV = kv(events.BucketLedger)
	s.netKV = kv(events.BucketNetHosts)
	s.podsKV = kv(events.BucketPods)
	s.vmsKV = kv(events.BucketVMs)
	s.migsKV = kv(events.BucketMigrations)
	if err != nil {
		return err
	}
	s.ledger = ledger.New(s.ledgerKV)
	s.hostRecords = record.New[events.HostRecord](s.hostsKV, "host")
	return nil
}

// load builds the first snapshot: host records (they keep cordons), the
// vCenter inventory, the ledger, network availability, then the pods that
// were waiting for a host when the scheduler last stopped.
func (s *Service) load(ctx context.Context) error {
	if err := s.loadHostRecords(ctx); err != nil {
		return err
	}
	obs, err := s.source.List(ctx)
	if err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	s.applyObservations(ctx, obs, true)
	entries, err := s.ledger.List(ctx)
	if err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	// Native VMs whose allocations an older version wrote without the VM
	// flag count as pods until flagged: flag them before the first
	// placement rather than a sweep interval later. What fails here is
	// left to the sweep, which flags them on every pass.
	if vms, err := s.vmUIDs(ctx, nil); err != nil {
		s.log.Warn("flag native VM allocations at start", "err", err)
	} else if err := s.markVMs(ctx, entries, vms); err != nil {
		s.log.Warn("flag native VM allocations at start", "err", err)
	}
	s.mu.Lock()
	inLedger := map[string]bool{}
	for _, e := range entries {
		inLedger[e.Host] = true
		s.applyEntryLocked(e)
	}
	for name, rec := range s.records {
		// The ledger holds the cordons; a host without an entry has none
		// (a record may still say otherwise from an older writer).
		if !inLedger[name] && rec.Cordoned {
			rec.Cordoned = false
			s.snap.SetHost(s.hostFromRecordLocked(rec))
			s.dirty[name] = true
		}
	}
	s.mu.Unlock()
	if err := s.loadNetworks(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	s.ready = true
	s.mu.Unlock()
	if err := s.recoverPending(ctx, true); err != nil {
		s.log.Warn("recover pending pods", "err", err)
	}
	return nil
}
