package guestcluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/deps"
	"github.com/podvisor/podvisor/shared/periodic"
	"github.com/podvisor/podvisor/shared/record"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// Name is the service's name: consumers guestcluster-<STREAM>, dead letters
// on pv.dlq.guestcluster.
const Name = events.PublisherGuestCluster

// Source is the CloudEvents source of what it publishes.
const Source = "podvisor/" + Name

// Minter signs guest cluster identities and revokes them (AuthorityMinter).
type Minter interface {
	MintGuest(namespace, name string) (string, error)
	// Revoke makes the identity's credentials stop working on the
	// running NATS servers (its open connections are closed).
	Revoke(ctx context.Context, name string) error
	Forget(name string) error
}

// AuthorityMinter is the Minter of an installation's NATS authority: it
// signs with the authority's keys and pushes revocations to the servers
// at NATS (URL and CA; the push connects as the system account).
type AuthorityMinter struct {
	*bus.Authority
	NATS bus.ConnConfig
}

// Revoke revokes name in the authority and pushes the account to the
// servers.
func (m AuthorityMinter) Revoke(ctx context.Context, name string) error {
	if err := m.Authority.Revoke(name); err != nil {
		return err
	}
	return m.PushAccount(ctx, m.NATS)
}

// Deps are what the service runs on: its connections (package deps; the
// bus, and the vCenter session the compatibility checks read the SDDC's
// offers from and post their results to, both required) and the parts
// below.
type Deps struct {
	deps.Deps
	// ControlPlanes runs the guest control planes; nil means
	// VMControlPlanes when GuestPorts is set, Processes otherwise,
	// configured from Config.
	ControlPlanes ControlPlanes
	// GuestPorts, when set, is the path between this machine and VMs'
	// guests: each guest cluster's control plane then runs in its own
	// VM (VMControlPlanes). `podvisor up` sets it when simulated guests
	// run and the control-plane image is seeded.
	GuestPorts GuestPorts
	// Minter signs identities; nil means the authority in Config.Authority.
	Minter Minter
}

// Service is the guest cluster controller.
type Service struct {
	cfg      Config
	bus      *bus.Bus
	out      *bus.Emitter
	log      *slog.Logger
	clusters *record.Store[clusterRecord]
	// recordLog is the stream behind clusters, read for the tombstones
	// KV reads hide (tombstone.go); requests is GUESTCLUSTERS, read for
	// the delete request a resync finishes a deletion for.
	recordLog, requests jetstream.Stream
	// kubeconfigs are the admin kubeconfigs, in a bucket clients cannot
	// read.
	kubeconfigs *record.Store[events.GuestClusterKubeconfig]
	pods        *record.Store[events.PodRecord]
	// vms are the native VM controller's records (its worker VMs).
	vms *record.Store[events.VMRecord]
	// classes and images are the native VM controller's records of the
	// VirtualMachineClasses and VirtualMachineImages: a worker refused
	// for want of one is declared again once it is there.
	classes *record.Store[events.VMClassRecord]
	images  *record.Store[events.VMImageRecord]
	cps     ControlPlanes
	minter  Minter
	vs      *vsphere.Session
	// unavailable says why guest clusters cannot be made here (a setting
	// is missing); nil when they can.
	unavailable error
	closeCPs    func()
	// workerLocks, by guest cluster key, order the declarations of its
	// worker VMs (its request, replaceWorkers) with its delete's mark,
	// so that no worker is made again once the delete began.
	workerLocks bus.KeyLocks
	// passEmitted, when set (tests), is called with the guest cluster's
	// key after a declareWorkers pass published and before it reads the
	// record again: where another replica's write can come between.
	passEmitted atomic.Pointer[func(key string)]
}

// New checks the configuration and opens the buckets.
func New(cfg Config, d Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("guestcluster: config: %w", err)
	}
	if err := d.Require(deps.NeedBus("guest clusters are declared, recorded and announced on it"),
		deps.NeedVSphere("compatibility checks read and report to vCenter")); err != nil {
		return nil, fmt.Errorf("guestcluster: %w", err)
	}
	log := d.Log()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	gkv, err := d.Bus.KV(ctx, events.BucketGuestClusters)
	if err != nil {
		return nil, fmt.Errorf("guestcluster: open KV bucket %s (is the topology declared?): %w", events.BucketGuestClusters, err)
	}
	kkv, err := d.Bus.KV(ctx, events.BucketGuestClusterKubeconfigs)
	if err != nil {
		return nil, fmt.Errorf("guestcluster: open KV bucket %s: %w", events.BucketGuestClusterKubeconfigs, err)
	}
	pkv, err := d.Bus.KV(ctx, events.BucketPods)
	if err != nil {
		return nil, fmt.Errorf("guestcluster: open KV bucket %s: %w", events.BucketPods, err)
	}
	vkv, err := d.Bus.KV(ctx, events.BucketVMs)
	if err != nil {
		return nil, fmt.Errorf("guestcluster: open KV bucket %s: %w", events.BucketVMs, err)
	}
	ckv, err := d.Bus.KV(ctx, events.BucketVMClasses)
	if err != nil {
		return nil, fmt.Errorf("guestcluster: open KV bucket %s: %w", events.BucketVMClasses, err)
	}
	ikv, err := d.Bus.KV(ctx, events.BucketVMImages)
	if err != nil {
		return nil, fmt.Errorf("guestcluster: open KV bucket %s: %w", events.BucketVMImages, err)
	}
	// The streams' info is read once here: their reads use direct gets.
	rlog, err := d.Bus.JetStream().Stream(ctx, "KV_"+events.BucketGuestClusters)
	if err != nil {
		return nil, fmt.Errorf("guestcluster: stream of KV bucket %s: %w", events.BucketGuestClusters, err)
	}
	reqs, err := d.Bus.JetStream().Stream(ctx, events.StreamGuestClusters)
	if err != nil {
		return nil, fmt.Errorf("guestcluster: stream %s: %w", events.StreamGuestClusters, err)
	}
	s := &Service{
		recordLog:   rlog,
		requests:    reqs,
		cfg:         cfg,
		bus:         d.Bus,
		out:         d.Bus.Emitter(Source),
		log:         log.With("service", Name),
		clusters:    record.New[clusterRecord](gkv, "guest cluster"),
		kubeconfigs: record.New[events.GuestClusterKubeconfig](kkv, "guest cluster kubeconfig"),
		pods:        record.New[events.PodRecord](pkv, "pod"),
		vms:         record.New[events.VMRecord](vkv, "VM"),
		classes:     record.New[events.VMClassRecord](ckv, "VM class"),
		images:      record.New[events.VMImageRecord](ikv, "VM image"),
		cps:         d.ControlPlanes,
		minter:      d.Minter,
		vs:          d.VSphere,
	}
	if s.cps == nil || s.minter == nil {
		s.unavailable = cfg.missing()
	}
	if s.unavailable == nil && s.minter == nil {
		a, err := bus.LoadAuthority(cfg.Authority)
		if err != nil {
			return nil, fmt.Errorf("guestcluster: PODVISOR_GUESTCLUSTER_AUTHORITY: %w", err)
		}
		s.minter = AuthorityMinter{Authority: a, NATS: bus.ConnConfig{URL: cfg.NATSURL, CAFile: cfg.NATSCA, Name: "podvisor-guestcluster-authority"}}
	}
	if s.unavailable == nil && s.cps == nil && d.GuestPorts != nil {
		s.cps = &VMControlPlanes{Dir: cfg.Dir, NATSURL: cfg.NATSURL, NATSCA: cfg.NATSCA, ReadyTimeout: cfg.ReadyTimeout,
			Ports: d.GuestPorts, Logger: s.log,
			out: s.out, vms: s.vms, images: s.images}
	}
	if s.unavailable == nil && s.cps == nil {
		p := &Processes{Binary: cfg.Binary, Dir: cfg.Dir, NATSURL: cfg.NATSURL, NATSCA: cfg.NATSCA, ReadyTimeout: cfg.ReadyTimeout, Logger: s.log}
		s.cps, s.closeCPs = p, p.Close
	}
	if s.unavailable != nil {
		s.log.Warn("guest clusters are refused here", "why", s.unavailable)
	}
	return s, nil
}

func (s *Service) routes() *bus.Router {
	r := bus.NewRouter(Name, s.log)
	bus.Handle(r, s.onRequested).OnFailure(s.requestFailed)
	bus.Handle(r, s.onDeleteRequested)
	bus.Handle(r, s.onCheckRequested)
	bus.Handle(r, s.onVMDeleted)
	bus.Handle(r, s.onVMRejected)
	return r
}

// Run consumes GUESTCLUSTERS and vm.deleted and vm.rejected (VMS), answers the guest
// nodes' queries and keeps the control planes of Ready guest clusters
// running, until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	if s.closeCPs != nil {
		defer s.closeCPs()
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.serveQueries(ctx) })
	r := s.routes()
	g.Go(func() error {
		return r.Run(ctx, s.bus, bus.ConsumerConfig{Workers: s.cfg.Workers, AckWait: s.cfg.AckWait, Logger: s.log}, nil)
	})
	if s.cfg.ResyncInterval > 0 && s.unavailable == nil {
		g.Go(func() error { s.resyncLoop(ctx); return nil })
	}
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// resyncLoop runs resync at start, then every ResyncInterval: after a
// restart of the supervisor the control planes (their processes, or VMs
// made again) serve at new endpoints, and until resync has found that out
// the records would name the old ones.
func (s *Service) resyncLoop(ctx context.Context) {
	periodic.EveryAfter(ctx, 0, s.cfg.ResyncInterval, s.log, "resync: list guest clusters", s.resync)
}

// lostBecause says on a lost cluster's record why its control plane does
// not serve again yet (the next resync tries again).
func (s *Service) lostBecause(ctx context.Context, key string, cause error) {
	msg := "starting the control plane again failed: " + cause.Error()
	if _, err := s.clusters.Mutate(ctx, key, func(cur *clusterRecord) error {
		if cur.Phase != events.GuestClusterPhaseProvisioning || cur.Reason != reasonControlPlaneLost || cur.Message == msg {
			return record.ErrUnchanged
		}
		cur.Message = msg
		return nil
	}); err != nil && ctx.Err() == nil {
		s.log.Warn("resync: record why a control plane does not serve", "guestcluster", key, "err", err)
	}
}

// reasonControlPlaneLost: the API server of a Ready guest cluster stopped
// answering at its endpoint (its control plane's processes or VMs went
// away, as after a restart of the supervisor): the cluster is Provisioning
// with this reason until the resync has its control plane serve again.
const reasonControlPlaneLost = "ControlPlaneLost"

// answers says whether something accepts connections at a guest cluster's
// endpoint (https://host:port).
func answers(ctx context.Context, endpoint string) bool {
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return false
	}
	_ = conn.Close()
	return true
}

// resync ensures the control plane of every Ready guest cluster (starting
// again one whose process or VM is gone, after a restart of the
// supervisor, say), records its endpoint when it moved, declares again
// its worker VMs that are missing (a record removed without vm.deleted, a
// vm.deleted missed) but those whose declaration was refused and may not
// succeed yet (replaceWorkers), and refreshes its nodes; then it takes on
// the deletion of every Deleting guest cluster, whose handler may have
// gone with its process (resumeDeletion), and asks for the deletion of
// the VMs of guest clusters gone or being deleted (sweepOrphanVMs).
func (s *Service) resync(ctx context.Context) error {
	recs, err := s.clusters.List(ctx)
	if err != nil {
		return err
	}
	var deleting []clusterRecord
	for _, r := range recs {
		if r.Phase == events.GuestClusterPhaseDeleting {
			deleting = append(deleting, r)
			continue
		}
		lost := r.Phase == events.GuestClusterPhaseProvisioning && r.Reason == reasonControlPlaneLost
		if r.Phase != events.GuestClusterPhaseReady && !lost {
			continue
		}
		key := r.Namespace + "/" + r.Name
		if !lost && !answers(ctx, r.Endpoint) {
			// Not Ready while nothing serves: say so before starting it
			// again (which waits for the API server).
			msg := fmt.Sprintf("the API server does not answer at %s; starting the control plane again", r.Endpoint)
			if _, err := s.clusters.Mutate(ctx, r.Key(), func(cur *clusterRecord) error {
				if cur.Phase != events.GuestClusterPhaseReady || cur.Endpoint != r.Endpoint {
					return record.ErrUnchanged
				}
				cur.Phase, cur.Reason, cur.Message = events.GuestClusterPhaseProvisioning, reasonControlPlaneLost, msg
				return nil
			}); err != nil && ctx.Err() == nil {
				s.log.Warn("resync: record a lost control plane", "guestcluster", key, "err", err)
			}
			s.log.Warn("guest cluster control plane lost", "guestcluster", key, "endpoint", r.Endpoint)
		}
		ep, err := s.ensureControlPlane(ctx, r.Namespace, r.Name, r.Spec, r.Endpoint)
		if err == nil && ep.URL != r.Endpoint {
			s.log.Info("guest cluster endpoint moved", "guestcluster", key, "from", r.Endpoint, "to", ep.URL)
		}
		if err == nil {
			_, err = s.recordEndpoint(ctx, r.Key(), r.Namespace, r.Name, ep, nil)
		}
		if err != nil && ctx.Err() == nil {
			s.log.Warn("resync: control plane", "guestcluster", key, "err", err)
			s.lostBecause(ctx, r.Key(), err)
		}
		if err := s.replaceWorkers(ctx, nil, r.Key()); err != nil && ctx.Err() == nil {
			s.log.Warn("resync: worker nodes", "guestcluster", key, "err", err)
		}
	}
	// Before the sweep, which asks for the deletion of the worker VMs
	// that a deletion waits for.
	for i := range deleting {
		if err := s.resumeDeletion(ctx, &deleting[i]); err != nil && ctx.Err() == nil {
			s.log.Warn("resync: a deletion", "guestcluster", deleting[i].Key(), "err", err)
		}
	}
	if _, err := s.sweepOrphanVMs(ctx, nil); err != nil && ctx.Err() == nil {
		s.log.Warn("resync: VMs of guest clusters gone", "err", err)
	}
	return nil
}
