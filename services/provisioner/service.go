package provisioner

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner/diskkeys"
	"github.com/podvisor/podvisor/services/provisioner/nativevm"
	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/podvisor/podvisor/services/provisioner/templates"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/deps"
	"github.com/podvisor/podvisor/shared/periodic"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"
)

// Name is the service's name: its consumers are provisioner-<STREAM>, its
// dead letters go to pv.dlq.provisioner, its events' source is
// podvisor/provisioner.
const Name = "provisioner"

// Source is the CloudEvents source of everything the provisioner publishes.
const Source = "podvisor/" + Name

// instrumentation is the OpenTelemetry scope of the service's spans and
// metrics.
const instrumentation = "github.com/podvisor/podvisor/services/provisioner"

// Service is the provisioner: pod admission, pod records and pod VMs.
type Service struct {
	cfg  Config
	bus  *bus.Bus
	out  *bus.Emitter // the one publish path: validated, deterministic effect ids
	vms  *podvm.Client
	log  *slog.Logger
	recs *records
	// migs reads the migration service's records (is a migration over?).
	migs jetstream.KeyValue
	// keys holds the key-encryption key of encrypted ephemeral disks; nil
	// without a key file.
	keys *diskkeys.Keeper
	// channelKey makes pods' channel tokens (Config.ChannelURI; nil
	// without).
	channelKey []byte
	// templates forks pod VMs from warm templates (nil: forking off).
	templates *templates.Keeper
	starts    metric.Int64Counter
	// native is the native VM controller (nil in tests of pods alone).
	native *nativevm.Controller

	// locks serializes work on one pod in this process: the consumer's
	// keyed queue runs one handler per pod within one stream only, while a
	// pod's events arrive on two (pods, migrations) and drift repair works
	// on pods outside the bus.
	locks   bus.KeyLocks
	tracer  trace.Tracer
	repairs metric.Int64Counter
	now     func() time.Time
	// failedRepairs holds the uids of pods whose repair failed in this
	// process's last pass, with the time it failed: the pass after takes
	// them up at once rather than when the record's age says they are
	// stuck, unless the record was written since. Only a matter of timing:
	// another replica, or a restart, goes by the record's age.
	failedRepairs sync.Map

	// hooks let tests stop the service at the exact points where a crash
	// matters; nil in production.
	hooks hooks
}

type hooks struct {
	// afterCreateSubmit runs once vCenter accepted the CreateVM task,
	// before its reference is saved in the record; an error it returns
	// ends the attempt there, as a crash would.
	afterCreateSubmit func(ctx context.Context, r *events.PodRecord) error
	// afterCreateTask runs once the CreateVM task reference is in the
	// record, before the service waits on the task.
	afterCreateTask func(ctx context.Context, r *events.PodRecord)
}

// newService builds the service on connections its caller checked (New,
// the tests): b and vms are not nil.
func newService(cfg Config, b *bus.Bus, vms *podvm.Client, log *slog.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("provisioner config: %w", err)
	}
	log = deps.OrDiscard(log)
	repairs, err := otel.GetMeterProvider().Meter(instrumentation).Int64Counter(
		"podvisor_provisioner_repairs_total",
		metric.WithDescription("Drift repairs by kind: orphan_vm, stale_vm, missing_vm, power_state, stuck, guest_silent, guest_recreate."),
		metric.WithUnit("{repair}"),
	)
	if err != nil {
		return nil, fmt.Errorf("provisioner: repairs counter: %w", err)
	}
	// The bucket is opened here so that a missing topology fails the
	// process at start, not on its first event.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kv, err := b.KV(ctx, events.BucketPods)
	if err != nil {
		return nil, fmt.Errorf("provisioner: pods bucket (is the topology declared?): %w", err)
	}
	migs, err := b.KV(ctx, events.BucketMigrations)
	if err != nil {
		return nil, fmt.Errorf("provisioner: migrations bucket (is the topology declared?): %w", err)
	}
	s := &Service{
		migs:    migs,
		cfg:     cfg,
		bus:     b,
		out:     b.Emitter(Source),
		vms:     vms,
		log:     log.With("service", Name),
		tracer:  otel.Tracer(instrumentation),
		repairs: repairs,
		now:     time.Now,
	}
	s.recs = &records{kv: kv, now: func() time.Time { return s.now() }}
	if cfg.KeyFile != "" {
		if s.keys, err = diskkeys.Load(cfg.KeyFile); err != nil {
			return nil, fmt.Errorf("provisioner: %w", err)
		}
	}
	if cfg.ChannelURI != "" {
		if s.channelKey, err = guestchannel.LoadChannelKey(cfg.ChannelKeyFile); err != nil {
			return nil, fmt.Errorf("provisioner: %s: %w", EnvChannelKeyFile, err)
		}
		if !podvm.IsProxyURI(cfg.ChannelURI) {
			// Allowed (a concentrator that is no proxy), but a vCenter
			// refuses to vMotion a VM whose network serial port connects
			// directly: say so once, before the first migration fails.
			s.log.Warn("pod VMs' channel ports connect to the concentrator directly: vSphere will not vMotion them, so pods cannot migrate; name the concentrator as their proxy (telnet:// or telnets://)",
				"setting", EnvChannelURI, "uri", cfg.ChannelURI)
		}
	}
	if cfg.BootDisk != "" {
		if err := vms.CheckBootDisk(ctx, cfg.BootDisk); err != nil {
			return nil, fmt.Errorf("provisioner: %s: %w", EnvBootDisk, err)
		}
	}
	if err := s.initTemplates(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// recordsReady exposes the record store to tests.
func (s *Service) recordsReady() *records { return s.recs }

// Run consumes pod and migration events and runs drift repair every
// ResyncInterval until ctx ends, then drains and returns nil.
func (s *Service) Run(ctx context.Context) error {
	defer s.templates.Close()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		// One durable per stream: pod events, and the migrations'.
		return s.routes().Run(gctx, s.bus, bus.ConsumerConfig{
			Workers:    s.cfg.Workers,
			AckWait:    s.cfg.AckWait,
			MaxDeliver: s.cfg.MaxAttempts,
			BackOff:    s.cfg.BackOff,
			Logger:     s.log,
		}, s.tuneConsumer)
	})
	g.Go(func() error {
		return s.bus.Serve(gctx, events.SubjectDiskKeyRelease, s.releaseDiskKey)
	})
	if s.native != nil {
		g.Go(func() error { return s.native.Run(gctx) })
	}
	if s.cfg.ResyncInterval > 0 {
		g.Go(func() error {
			s.resyncLoop(gctx)
			return nil
		})
	}
	s.log.Info("provisioner running", "workers", s.cfg.Workers, "pod_workers", s.cfg.PodWorkers, "resync", s.cfg.ResyncInterval, "folder", s.cfg.FolderRoot, "boot_disk", s.cfg.BootDisk)
	if s.cfg.BootDisk == "" {
		// Right for the simulated datacenter, whose guests run the agent
		// without booting; on a vCenter the VMs would have no system.
		s.log.Info("pod VMs get no boot disk: " + EnvBootDisk + " is unset (podvisor install prints it); only simulated guests run without one")
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("provisioner: %w", err)
	}
	return nil
}

// tuneConsumer gives the pods' stream its own worker count (PodWorkers).
func (s *Service) tuneConsumer(c *bus.ConsumerConfig) {
	if c.Stream == events.StreamPods {
		c.Workers = s.cfg.PodWorkers
	}
}

// resyncLoop runs drift repair at start, then every ResyncInterval; an
// incomplete pass is run again after 2 s, doubling. The pass at start
// matters after a restart: a vCenter that lost pod VMs meanwhile (a
// restarted simulator, a restore) is repaired at once, and until it is the
// records of those pods would claim VMs that are gone. Its repairs may
// fail on what other services are still making (port groups in a rebuilt
// datacenter, the guest cluster image being pushed): those come again in
// seconds.
func (s *Service) resyncLoop(ctx context.Context) {
	periodic.EveryAfterRetrying(ctx, 0, s.cfg.ResyncInterval, min(s.cfg.ResyncInterval, 2*time.Second), s.log, "drift repair incomplete",
		func(ctx context.Context) error { _, err := s.Resync(ctx); return err })
}

// span starts a span for one step of work on a pod, carrying the
// attributes `podvisor trace pod` looks for.
func (s *Service) span(ctx context.Context, name string, r *events.PodRecord, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	attrs = append(attrs, attribute.String("podvisor.service", Name))
	if r != nil {
		attrs = append(attrs, attribute.String("pod", r.Key()), attribute.String("pod.uid", r.UID))
	}
	return s.tracer.Start(ctx, name, trace.WithAttributes(attrs...))
}
