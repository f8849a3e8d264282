package netconfig

import (
	"context"
	"errors"
	"fmt"
	"io"
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

	locks keyedMutex
	// podNets remembers the networks of accepted pods (uid → names) so that
	// pod.scheduled does not have to read the pod record.
	podNets sync.Map
	// countsDue names the networks whose IPsUsed must be recounted; a loop
	// recounts them in batches (see recountLoop).
	countsDue chan string
}

// newService builds the service over a bus and a vCenter client on one
// datacenter; New (deps.go) takes them from Deps.
func newService(cfg Config, b *bus.Bus, vc *vim25.Client, dc *object.Datacenter, log *slog.Logger) (*Service, error) {
	var errs []error
	if err := cfg.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("netconfig: config: %w", err))
	}
	if b == nil {
		errs = append(errs, errors.New("netconfig: Deps.Bus: required"))
	}
	if vc == nil || dc == nil {
		errs = append(errs, errors.New("netconfig: Deps.VSphere: required (a session with a client and a datacenter)"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kvs := map[string]jetstream.KeyValue{}
	for _, name := range []string{events.BucketNetworks, events.BucketNetHosts, events.BucketIPAM, bus.BucketPods} {
		kv, err := b.KV(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("netconfig: open KV bucket %s (is the topology declared?): %w", name, err)
		}
		kvs[name] = kv
	}
	return &Service{
		cfg:   cfg,
		bus:   b,
		fab:   fabric.New(vc, dc),
		log:   log.With("service", Name),
		store: &store{networks: kvs[events.BucketNetworks], netHosts: kvs[events.BucketNetHosts]},
		ipam:  ipam.New(kvs[events.BucketIPAM]),
		pods:  kvs[bus.BucketPods],

		countsDue: make(chan string, 1024),
	}, nil
}

// Run consumes the NETWORKS, PODS, MIGRATIONS and HOSTS streams, answers
// availability queries and resyncs periodically, until ctx ends. It returns
// nil when ctx ends and the consumers have drained.
func (s *Service) Run(ctx context.Context) error {
	sub, err := s.serveQueries()
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()

	g, ctx := errgroup.WithContext(ctx)
	consumers := []struct {
		stream   string
		subjects []string
		handler  bus.Handler
	}{
		{bus.StreamNetworks, []string{events.SubjectNetworkDeclared, events.SubjectNetworkRestoreRequested, events.SubjectNetworkDeleteRequested}, s.handleNetwork},
		{bus.StreamPods, []string{events.SubjectPodAccepted, events.SubjectPodScheduled, events.SubjectPodDeleted, events.SubjectPodFailed}, s.handlePod},
		{bus.StreamMigrations, []string{events.SubjectMigrationCompleted}, s.handleMigration},
		{bus.StreamHosts, []string{events.SubjectHostDiscovered, events.SubjectHostRecovered, events.SubjectHostUpdated}, s.handleHost},
	}
	for _, c := range consumers {
		cc := bus.ConsumerConfig{
			Service:  Name,
			Stream:   c.stream,
			Subjects: c.subjects,
			Workers:  s.cfg.Workers,
			AckWait:  s.cfg.AckWait,
			Logger:   s.log,
		}
		h := c.handler
		g.Go(func() error { return s.bus.Consume(ctx, cc, h) })
	}
	if s.cfg.ResyncInterval > 0 {
		g.Go(func() error { s.resyncLoop(ctx); return nil })
	}
	g.Go(func() error { s.recountLoop(ctx); return nil })
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// resyncLoop re-pushes every network periodically: the push is computed
// from what each host has, so it repairs drift (a host that left a switch,
// a port group edited or deleted by hand) and realizes networks on hosts
// whose discovery event was missed.
func (s *Service) resyncLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.ResyncInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.Resync(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("resync", "err", err)
			}
		}
	}
}

// Resync reconciles every network once.
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
	}
	return errors.Join(errs...)
}

// keyedMutex serializes work on one network within the process (the bus
// already runs one handler per event key, but a network is also touched by
// pod, host and migration events keyed differently). Changes to a network
// (declare, restore, reconcile, delete) hold it exclusively; attaching pods
// holds it shared, so pods of one network get their addresses in parallel
// (the allocator is safe for that) while a delete still sees every address
// taken before it or runs before the next attach. Across replicas the
// records' compare-and-set keeps writes consistent.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*sync.RWMutex
}

func (k *keyedMutex) get(key string) *sync.RWMutex {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.m == nil {
		k.m = map[string]*sync.RWMutex{}
	}
	l, ok := k.m[key]
	if !ok {
		l = &sync.RWMutex{}
		k.m[key] = l
	}
	return l
}

// lock takes the network exclusively and returns the unlock.
func (k *keyedMutex) lock(key string) func() {
	l := k.get(key)
	l.Lock()
	return l.Unlock
}

// rlock takes the network shared and returns the unlock.
func (k *keyedMutex) rlock(key string) func() {
	l := k.get(key)
	l.RLock()
	return l.RUnlock
}
