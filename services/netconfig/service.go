package netconfig

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25"
	"golang.org/x/sync/errgroup"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig/fabric"
	"github.com/podvisor/podvisor/services/netconfig/ipam"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/deps"
	"github.com/podvisor/podvisor/shared/periodic"
	"github.com/podvisor/podvisor/shared/record"
)

// Name is the service name: consumer names, the DLQ subject and the span
// attribute podvisor.service.
const Name = "netconfig"

// Source is the CloudEvent source of everything the service publishes.
const Source = "podvisor/" + Name

// Service is the network-config service.
type Service struct {
	cfg   Config
	bus   *bus.Bus
	fab   *fabric.Fabric
	log   *slog.Logger
	store *store
	ipam  *ipam.Allocator
	pods  jetstream.KeyValue // provisioner's pod records, read-only
	// services holds the network services (KV net-services), data the
	// pass-through data (KV net-data).
	services *record.Store[events.NetworkServiceRecord]
	data     *record.Store[events.NetworkDataRecord]
	spaces   *record.Store[events.NetworkDataNamespaces]
	vms      jetstream.KeyValue // provisioner's VM records, read-only

	out *bus.Emitter
	// locks serializes changes to one network within the process
	// (declare, restore, reconcile, delete): each holds it exclusively.
	locks bus.KeyLocks
	// uses orders the attaches of one network against what changes what
	// an attach reads: attaching pods holds it shared, so pods of one
	// network get their addresses in parallel (the allocator is safe for
	// that); storing a new version, rolling one back and beginning a
	// delete hold it exclusively, briefly, so a delete still sees every
	// address taken before it or runs before the next attach, and an
	// attach never mixes two versions. A push to the hosts (seconds to
	// minutes at thousands of hosts) holds only locks, so attaches on
	// hosts that carry the network go on while it runs.
	uses bus.KeyLocks
	// podNets remembers the networks of accepted pods (uid → names) so that
	// pod.scheduled does not have to read the pod record.
	podNets sync.Map
	// orphans are the addresses the orphan sweep found without an owner.
	orphans orphanSeen
	// hostRefs caches host references by name (availability queries);
	// hostListing makes the queries that miss it share one listing.
	hostRefs    sync.Map
	hostListing sync.Mutex
	// pgRefs caches port group references by name for availability
	// queries (portGroupRef).
	pgRefs sync.Map
	// repairing names the networks a query found missing on a host and
	// being reconciled.
	repairing sync.Map
	// hostStatesDue asks for the hosts' final states to be pushed;
	// hostDigests remembers the digest last pushed per host.
	hostStatesDue chan struct{}
	hostDigests   sync.Map
	// countsDue names the networks whose addresses changed; a loop
	// recounts them in batches and serves the network services waiting
	// for an address there (see recountLoop).
	countsDue chan string
	// svcList is the last listing of the network services, reused by
	// attaches while the bucket is unchanged (serviceRecords).
	svcList serviceList
	// mgmt is what the management port repair knows (mgmtrepair.go).
	mgmt mgmtState
}

// newService builds the service over a bus and a vCenter client on one
// datacenter; New (deps.go) takes them from Deps and checks them, as
// NewForTest's callers do: none is nil here.
func newService(cfg Config, b *bus.Bus, vc *vim25.Client, dc *object.Datacenter, log *slog.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("netconfig: config: %w", err)
	}
	log = deps.OrDiscard(log)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kvs := map[string]jetstream.KeyValue{}
	for _, name := range []string{events.BucketNetworks, events.BucketNetHosts, events.BucketIPAM, bus.BucketPods, events.BucketNetServices, events.BucketNetData, events.BucketVMs} {
		kv, err := b.KV(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("netconfig: open KV bucket %s (is the topology declared?): %w", name, err)
		}
		kvs[name] = kv
	}
	realized, err := b.OwnBucket(ctx, realizedBucket(), events.BucketNetworks)
	if err != nil {
		return nil, fmt.Errorf("netconfig: declare KV bucket %s: %w", events.BucketNetRealized, err)
	}
	return &Service{
		cfg:   cfg,
		bus:   b,
		out:   b.Emitter(Source),
		fab:   fabric.New(vc, dc),
		log:   log.With("service", Name),
		store: newStore(kvs[events.BucketNetworks], kvs[events.BucketNetHosts], realized),
		ipam:  ipam.New(kvs[events.BucketIPAM], b.JetStream()),
		pods:  kvs[bus.BucketPods],
		vms:   kvs[events.BucketVMs],

		services: record.New[events.NetworkServiceRecord](kvs[events.BucketNetServices], "network service"),
		data:     record.New[events.NetworkDataRecord](kvs[events.BucketNetData], "network data"),
		spaces:   record.New[events.NetworkDataNamespaces](kvs[events.BucketNetData], "network data namespaces"),

		orphans:       orphanSeen{at: map[string]time.Time{}},
		countsDue:     make(chan string, 1024),
		hostStatesDue: make(chan struct{}, 1),
	}, nil
}

// routes are the service's handlers, one per event it consumes.
func (s *Service) routes() *bus.Router {
	r := bus.NewRouter(Name, s.log)
	bus.Handle(r, s.onDeclared)
	bus.Handle(r, s.onRestoreRequested)
	bus.Handle(r, s.onDeleteRequested)
	bus.Handle(r, s.onPodAccepted)
	bus.Handle(r, s.onPodScheduled).OnFailure(s.attachFailed)
	bus.Handle(r, s.onPodDeleted)
	bus.Handle(r, s.onPodFailed)
	bus.Handle(r, s.onMigrationTargetReserved)
	bus.Handle(r, s.onMigrationCompleted)
	bus.Handle(r, s.onVMScheduled).OnFailure(s.vmAttachFailed)
	bus.Handle(r, s.onVMDeleted)
	bus.Handle(r, s.onVMMigrated)
	bus.Handle(r, s.onHostDiscovered)
	bus.Handle(r, s.onHostUpdated)
	bus.Handle(r, s.onHostRecovered)
	bus.Handle(r, s.onHostApplied)
	bus.Handle(r, s.onServiceDeclared)
	bus.Handle(r, s.onServiceDeleteRequested)
	bus.Handle(r, s.onDataRegister)
	bus.Handle(r, s.onDataSet)
	bus.Handle(r, s.onDataRemove)
	return r
}

// Run consumes the NETWORKS, PODS, MIGRATIONS and HOSTS streams, answers
// availability queries and resyncs periodically, until ctx ends. It returns
// nil when ctx ends and the consumers have drained.
func (s *Service) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.serveQueries(ctx) })
	r := s.routes()
	g.Go(func() error {
		return r.Run(ctx, s.bus, bus.ConsumerConfig{
			Workers: s.cfg.Workers, AckWait: s.cfg.AckWait, MaxDeliver: s.cfg.MaxDeliver, BackOff: s.cfg.BackOff, Logger: s.log,
		}, s.tuneConsumer)
	})
	if s.cfg.ResyncInterval > 0 {
		g.Go(func() error { s.resyncLoop(ctx); return nil })
	}
	g.Go(func() error { s.recountLoop(ctx); return nil })
	g.Go(func() error { s.hostStateLoop(ctx); return nil })
	if s.cfg.ManagementInterval > 0 {
		g.Go(func() error { s.managementLoop(ctx); return nil })
	}
	if s.cfg.OrphanSweepInterval > 0 {
		g.Go(func() error { s.orphanLoop(ctx); return nil })
	}
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// tuneConsumer gives the pods' stream (attaches) its own worker count.
func (s *Service) tuneConsumer(c *bus.ConsumerConfig) {
	if c.Stream == events.StreamPods {
		c.Workers = s.cfg.AttachWorkers
	}
}

// resyncLoop re-pushes every network periodically: the push is computed
// from what each host has, so it repairs drift (a host that left a switch,
// a port group edited or deleted by hand) and realizes networks on hosts
// whose discovery event was missed.
func (s *Service) resyncLoop(ctx context.Context) {
	periodic.Every(ctx, s.cfg.ResyncInterval, s.log, "resync", s.Resync)
}

// Resync reconciles every network once and gives the network services
// waiting for an address the free ones: a release whose pass was lost
// (made by a replica that stopped right after) is served here.
func (s *Service) Resync(ctx context.Context) error {
	recs, err := s.store.list(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range recs {
		if err := s.reconcile(ctx, nil, r.Name); err != nil {
			errs = append(errs, fmt.Errorf("network %s: %w", r.Name, err))
		}
		if err := s.serveWaiting(ctx, r.Name); err != nil {
			errs = append(errs, fmt.Errorf("network %s: %w", r.Name, err))
		}
	}
	if err := s.PushHostStates(ctx, false); err != nil {
		errs = append(errs, fmt.Errorf("hosts' final states: %w", err))
	}
	return errors.Join(errs...)
}
