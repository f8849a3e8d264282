package imagecache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/podvisor/podvisor/services/imagecache/chaindb"
	"github.com/podvisor/podvisor/services/imagecache/imagedisk"
	"github.com/podvisor/podvisor/services/imagecache/layerfs"
	"github.com/podvisor/podvisor/services/imagecache/oci"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/deps"
	"github.com/podvisor/podvisor/shared/periodic"
)

// Name is the service name: consumer names, the event source
// (podvisor/imagecache) and the span attribute podvisor.service.
const Name = "imagecache"

// Source is the CloudEvent source of the events the service publishes.
const Source = "podvisor/" + Name

// Deps are the service's connections (package deps): the bus, the vCenter
// session whose datastores hold the image disks, and Redis, which holds
// the image metadata; all required.
type Deps = deps.Deps

// Stats counts what the service moved since it started; tests and the
// benchmark read it to prove that shared layers are pulled once.
type Stats struct {
	// LayersPulled and BytesPulled count layer blobs fetched from registries.
	LayersPulled int64
	BytesPulled  int64
	// ChainsCopied and BytesCopied count chains copied between datastores.
	ChainsCopied int64
	BytesCopied  int64
	// ChainsEvicted and BytesEvicted count garbage-collected chains.
	ChainsEvicted int64
	BytesEvicted  int64
	// Rebuilds counts metadata rebuilds after Redis lost its data.
	Rebuilds int64
	// DiskBytes counts the bytes of image disks written (flat extents).
	DiskBytes int64
}

// Service is the image cache.
type Service struct {
	cfg      Config
	bus      *bus.Bus
	out      *bus.Emitter // the one publish path: validated, deterministic effect ids
	db       *chaindb.DB
	store    *imagedisk.Store
	registry *oci.Client
	log      *slog.Logger
	now      func() time.Time
	// diskErr says why image disks cannot be written here (nil: they can).
	diskErr error

	chains   flights // one pull per chain and datastore in this process
	resolves flights // one manifest request per reference at a time
	stats    counters

	invMu     sync.Mutex
	inventory []imagedisk.Datastore
	invAt     time.Time

	rebuildMu sync.Mutex

	podsMu sync.Mutex
	pods   jetstream.KeyValue // the provisioner's pod records (read only), once looked up

	manifests sync.Map // manifestWritten → true: manifest files this process wrote
	resolved  sync.Map // image reference → timed[image]
	ensured   sync.Map // ensuredKey → timed[prepared]
}

// manifestWritten identifies a manifest file written beside a chain.
type manifestWritten struct {
	digest, datastore, chain string
	created                  int64 // the chain's CreatedAt in ns: a chain made again differs
}

// New checks the configuration and the dependencies. It does not touch the
// network: Run does.
func New(cfg Config, d Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if err := d.Require(deps.NeedBus("pods' images are asked for and announced on it"),
		deps.NeedVSphere("image disks are written to its datastores"),
		deps.NeedRedis("the image metadata is kept there")); err != nil {
		return nil, fmt.Errorf("imagecache: %w", err)
	}
	log := d.Log()
	registry, err := oci.New(oci.Config{Insecure: cfg.InsecureRegistries, CAFile: cfg.RegistryCAFile, AuthFile: cfg.RegistryAuthFile,
		RedirectHosts: cfg.RedirectHosts, Platform: cfg.Platform, Limits: cfg.Limits, Timeouts: cfg.RegistryTimeouts})
	if err != nil {
		return nil, fmt.Errorf("imagecache config: %w", err)
	}
	svc := &Service{
		cfg:      cfg,
		bus:      d.Bus,
		out:      d.Bus.Emitter(Source),
		db:       chaindb.New(d.Redis, nil),
		store:    imagedisk.New(d.VSphere.Client.Client, d.VSphere.Datacenter),
		registry: registry,
		log:      log.With("service", Name),
		now:      time.Now,
		stats:    newCounters(),
	}
	if err := layerfs.Check(cfg.DiskCompression); err != nil {
		svc.diskErr = fmt.Errorf("%w: %v", ErrDisksUnavailable, err)
	}
	return svc, nil
}

// DisksUnavailable says why this process cannot write image disks (every
// pull then fails with reason ImageDisksUnavailable), or nil.
func (s *Service) DisksUnavailable() error { return s.diskErr }

// Stats returns the counters.
func (s *Service) Stats() Stats {
	return Stats{
		LayersPulled: s.stats.layersPulled.load(), BytesPulled: s.stats.bytesPulled.load(),
		ChainsCopied: s.stats.chainsCopied.load(), BytesCopied: s.stats.bytesCopied.load(),
		ChainsEvicted: s.stats.chainsEvicted.load(), BytesEvicted: s.stats.bytesEvicted.load(),
		Rebuilds: s.stats.rebuilds.load(), DiskBytes: s.stats.diskBytes.load(),
	}
}

// Run consumes pod events until ctx ends, collects garbage every
// GCInterval and rebuilds the Redis metadata from the datastores whenever
// it finds it gone. It returns nil when ctx ends.
func (s *Service) Run(ctx context.Context) error {
	if err := s.checkDatastores(ctx); err != nil {
		return err
	}
	if s.diskErr != nil {
		s.log.Error("IMAGE DISKS CANNOT BE WRITTEN: every image pull will fail with "+ReasonDisksUnavailable, "err", s.diskErr)
	}
	// At start the datastores are compared with Redis whatever the epoch
	// says: a Redis that outlived its datastores (or the other way round)
	// must not hand out disks that are gone.
	if _, err := s.Rebuild(ctx); err != nil {
		return fmt.Errorf("imagecache: initial sync with the datastores: %w", err)
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return s.routes().Run(ctx, s.bus, bus.ConsumerConfig{
			Workers: s.cfg.Workers,
			// Pulls can be long; the bus keeps the message alive with
			// InProgress, AckWait only bounds a crashed replica's hold.
			AckWait:    time.Minute,
			MaxDeliver: s.cfg.MaxDeliver,
			BackOff:    s.cfg.BackOff,
			Logger:     s.log,
		}, nil)
	})
	g.Go(func() error {
		periodic.Every(ctx, s.cfg.CheckInterval, s.log, "metadata check failed", s.EnsureMetadata)
		return nil
	})
	g.Go(func() error {
		periodic.Every(ctx, s.cfg.GCInterval, s.log, "garbage collection failed", func(ctx context.Context) error {
			_, err := s.CollectGarbage(ctx)
			return err
		})
		return nil
	})
	err := g.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// checkDatastores verifies that configured datastores exist, so that a typo
// fails at start and not on the first pod.
func (s *Service) checkDatastores(ctx context.Context) error {
	inv, err := s.datastores(ctx, true)
	if err != nil {
		return fmt.Errorf("imagecache: %w", err)
	}
	known := map[string]bool{}
	for _, d := range inv {
		known[d.Name] = true
	}
	var errs []error
	for i, ds := range s.cfg.Datastores {
		if !known[ds] {
			errs = append(errs, fmt.Errorf("imagecache config: Datastores[%d]: datastore %q does not exist in the datacenter", i, ds))
		}
	}
	return errors.Join(errs...)
}

// inventoryTTL bounds how stale the datastore list (free space, mounts) may be.
const inventoryTTL = 10 * time.Second

// datastores returns the datastore inventory, refreshed when older than
// inventoryTTL or when fresh is set.
func (s *Service) datastores(ctx context.Context, fresh bool) ([]imagedisk.Datastore, error) {
	s.invMu.Lock()
	defer s.invMu.Unlock()
	if !fresh && s.inventory != nil && s.now().Sub(s.invAt) < inventoryTTL {
		return s.inventory, nil
	}
	inv, err := s.store.Datastores(ctx)
	if err != nil {
		return nil, err
	}
	s.inventory, s.invAt = inv, s.now()
	return inv, nil
}

// RefreshInventory re-reads the datastores (free space, mounts) now instead
// of within inventoryTTL.
func (s *Service) RefreshInventory(ctx context.Context) error {
	_, err := s.datastores(ctx, true)
	return err
}
