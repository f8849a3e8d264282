package allinone

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/redis/go-redis/v9"

	"github.com/podvisor/podvisor/cmd/internal/runner"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/guestcluster"
	"github.com/podvisor/podvisor/services/imagecache"
	"github.com/podvisor/podvisor/services/imagecache/layerfs"
	"github.com/podvisor/podvisor/services/netconfig"
	"github.com/podvisor/podvisor/services/provisioner"
	"github.com/podvisor/podvisor/services/provisioner/diskkeys"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bus/natsembed"
	"github.com/podvisor/podvisor/shared/config"
	"github.com/podvisor/podvisor/shared/ociregistry"
	"github.com/podvisor/podvisor/shared/pki"
	"github.com/podvisor/podvisor/shared/redact"
	"github.com/podvisor/podvisor/shared/redisclient"
	"github.com/podvisor/podvisor/shared/redisserver"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/telemetry"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// ManagementVLAN is the simulated datacenter's management VLAN: declaring a
// network on it cuts the hosts in its scope off until network-config rolls
// the change back.
const ManagementVLAN = 4000

// simulatorDefaults are service settings suited to the simulator, applied
// when the environment does not set them (and written to the env file, so
// services run with `podvisor serve` beside `up` get them too): hosts answer
// in milliseconds, so network-config need not wait the seconds a real
// vCenter takes to report a host that stopped responding; and the
// simulator's property collector re-reads every watched object on every
// change anywhere, so the scheduler polls its hosts every second rather
// than watching them (a watch of 64 hosts cost half the CPU of a burst of
// pods).
var simulatorDefaults = map[string]string{
	"PODVISOR_NETCONFIG_PROBE_WINDOW":   "1s",
	"PODVISOR_SCHEDULER_INVENTORY_POLL": "1s",
}

// ErrServiceConfig wraps the configuration errors of the services to run:
// reported before anything starts.
var ErrServiceConfig = errors.New("service configuration")

// Config says what `podvisor up` starts and where.
type Config struct {
	StateDir        string
	Clusters        int
	HostsPerCluster int
	// Services to run in-process (runner.Select of --services).
	Services []runner.Spec
	// Host is the address embedded servers listen on (127.0.0.1 unless the
	// datacenter must be reachable from elsewhere, e.g. in a dev cluster).
	Host string
	// Preferred ports; a taken port (or 0) falls back to the previous
	// run's port, else a free one (ports.go).
	NATSPort, VCenterPort, RegistryPort, UIPort int
	// ExplicitPorts names the port flags the user gave ("--nats-port",
	// ...): their port comes before the previous run's. A default port
	// comes after it, so a restart keeps an address handed out on a
	// fallback port even once the default is free again (ports.go).
	ExplicitPorts []string
	// External endpoints replace the embedded parts.
	NATSURL, VCenterURL, RedisURL, Registry string
	// NATSCreds and NATSCA are how to reach an external NATS
	// (PODVISOR_NATS_CREDS, PODVISOR_NATS_CA); every part uses them. The
	// embedded server has its own identities and CA instead.
	NATSCreds, NATSCA string
	// Seed makes the simulated hardware reproducible.
	Seed int64
	// Guests is auto, on or off: whether powered-on pod VMs of the
	// simulator run a guest (their agent, their containers); Agent is the
	// podvm-agent binary (default: beside this executable).
	Guests, Agent string
	// GuestChannel is how pod VMs' agents reach their host agents:
	// "socket" (the default: the simulated hypervisor's socket, what vsock
	// is on a real host) or "serial" (a network serial port per pod VM that
	// the simulated host connects to a concentrator of the host agents, as
	// on a vCenter whose hosts run no podvisor code).
	GuestChannel string
	// TemplatesWarm, above 0, is how many pod VM templates each host
	// keeps for instant clones (provisioner.EnvTemplatesWarm, which it
	// overrides); 0 leaves that setting as it is (off unless set).
	TemplatesWarm int
	Logger        *slog.Logger
	Recorder      *telemetry.Recorder
	// Settings is where the services read their configuration; nil means
	// the process environment. With the embedded simulator its defaults
	// (simulatorDefaults) are layered under it.
	Settings config.Source
	// Metrics, when set, is served on the status port's /metrics (the
	// Prometheus exposition of every service in this process).
	Metrics http.Handler
	// NATSNodes above 1 runs the embedded NATS as a cluster of that many
	// nodes (processes of their own, streams and buckets replicated on
	// each, at most 5); 0 or 1 is the one in-process server.
	NATSNodes int
	// Replicas above 0 runs each of Services as that many `podvisor
	// serve` processes instead of in this process.
	Replicas int
	// ServiceEnv is added to the environment of those processes: what
	// Settings gives services run in this process (a Source cannot be
	// listed, so a caller that tunes them says it here too).
	ServiceEnv map[string]string
	// VCenterFaults, when above 0, makes the simulator fail that share of
	// CreateVM, PowerOn and Relocate calls with a fault a retry outlives.
	VCenterFaults float64
	// Executable runs the processes of NATSNodes and Replicas (default:
	// this executable); the replicas' run podvisord instead when it sits
	// beside it.
	Executable string
}

// settings is the services' configuration source: cfg.Settings or the
// environment, over the simulator's defaults when the simulator is ours.
func (c Config) settings(simulator bool) config.Source {
	src := c.Settings
	if src == nil {
		src = config.Env()
	}
	if simulator {
		return config.Layered(src, config.Map(simulatorDefaults))
	}
	return src
}

// Endpoints are where the parts listen; they are what the env file exports.
type Endpoints struct {
	NATSURL string
	// NATSCreds is the client identity's creds file: what the CLI and
	// the nats CLI use (the env file exports it).
	NATSCreds string
	// NATSCA verifies the NATS server's certificate: the installation's CA
	// for the embedded server, PODVISOR_NATS_CA for an external one.
	NATSCA     string
	VCenterURL string // with credentials
	// VCenterCA verifies the vCenter's certificate (ours for the
	// simulator); VCenterInsecure is set only when GOVC_INSECURE asked.
	VCenterCA       string
	VCenterInsecure bool
	// StreamReplicas is the replica count of streams and buckets on a
	// NATS cluster (0: one server).
	StreamReplicas int
	RedisURL       string // as the read-only user
	RedisCA        string // CA of a TLS Redis
	Registry       string // host:port
	// RegistryCA verifies the embedded registry's certificate (the
	// installation's CA); empty for an external registry.
	RegistryCA string
	// UIURL is the status page (the dashboard), which also serves
	// /metrics.
	UIURL string
	// HostAgents counts the host agents up runs (one per simulated host
	// while guests run; 0 otherwise), GuestChannel is how guests reach
	// them (GuestChannelSocket or GuestChannelSerial), and
	// HostAgentsListen where: the directory of their sockets, or the URI
	// of their concentrator.
	HostAgents       int
	GuestChannel     string
	HostAgentsListen string
}

// System is a running all-in-one.
type System struct {
	Endpoints  Endpoints
	Datacenter *sim.Datacenter // nil with an external vCenter
	// GuestsOff says why the simulator's pod VMs run no guest ("" when
	// they do, or when the vCenter is external).
	GuestsOff string
	// Concentrator is the URI of the host agents' concentrator
	// (GuestChannel serial: telnets://127.0.0.1:<port>, the ports' proxy), "" without.
	Concentrator string

	cfg  Config
	log  *slog.Logger
	logs *ringBuffer // recent records of every service, for the status page
	// cpBinary is podvisor-guest when guest clusters' control planes run
	// in their VMs (cpBinaryOK; controlplaneimage.go).
	cpBinaryOnce sync.Once
	cpBinary     string
	cpBinaryOK   bool
	ca           *pki.CA
	redis        *redisserver.Server // nil with an external Redis
	// registry is the embedded registry (nil with an external one).
	registry *ociregistry.Registry
	// vmOS is the seeded sample VM operating system's reference, which the
	// default guest cluster node image boots ("" when it was not seeded).
	vmOS string
	// creds maps identity names to creds files (embedded NATS only).
	creds map[string]string
	// ports remembers the ports of the previous run on this state dir
	// (ports.go).
	ports   *portBook
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	errs    chan error
	closers []func()
}

// Start brings every part up. On error everything started so far is stopped.
func Start(ctx context.Context, cfg Config) (_ *System, err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.StateDir == "" {
		return nil, errors.New("up: --state-dir is empty")
	}
	// A service whose configuration is invalid is reported before anything
	// starts, not a moment after `up` said it was up.
	var bad []error
	for _, spec := range cfg.Services {
		if spec.Check == nil {
			continue
		}
		if err := spec.Check(cfg.settings(cfg.VCenterURL == "")); err != nil {
			bad = append(bad, fmt.Errorf("%s: %w", spec.Name, err))
		}
	}
	if err := errors.Join(bad...); err != nil {
		return nil, fmt.Errorf("up: %w: %w", ErrServiceConfig, err)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o750); err != nil {
		return nil, fmt.Errorf("up: state dir: %w", err)
	}
	ring := newLogRing(cfg.Logger.Handler(), 5000)
	cfg.Logger = slog.New(ring)
	s := &System{cfg: cfg, log: cfg.Logger, logs: ring.ring, errs: make(chan error, 16)}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := s.lockStateDir(); err != nil {
		return nil, err
	}
	s.ports = loadPortBook(cfg.StateDir, s.log)
	s.ports.explicit = cfg.ExplicitPorts
	if s.ca, err = pki.LoadOrCreateCA(filepath.Join(cfg.StateDir, "tls")); err != nil {
		return nil, fmt.Errorf("up: %w", err)
	}
	// The key-encryption key of encrypted ephemeral disks: a Secret file,
	// kept with the state so that a resumed up still opens its pods' keys.
	if err := diskkeys.WriteKeyFile(s.diskKeyFile()); err != nil {
		return nil, fmt.Errorf("up: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	if err := s.startNATS(ctx, runCtx); err != nil {
		return nil, err
	}
	if err := s.startVCenter(ctx); err != nil {
		return nil, err
	}
	if err := s.startRedis(ctx); err != nil {
		return nil, err
	}
	if err := s.startRegistry(ctx); err != nil {
		return nil, err
	}
	if err := s.startUI(ctx); err != nil {
		return nil, err
	}
	if s.Datacenter != nil {
		s.run(runCtx, "simulator control", s.serveSimControl)
	}
	if err := s.startHostAgents(ctx, runCtx); err != nil {
		return nil, err
	}
	// Remembered as soon as every part listens, before anything below hands
	// an address out (the services give pod VMs the concentrator's URI; the
	// node and control plane images are declared with the registry's
	// host:port): a start that fails later may have handed them out, so they
	// are the ones to keep.
	if err := s.ports.save(); err != nil {
		return nil, err
	}
	if cfg.Replicas > 0 {
		if err := s.startReplicas(runCtx); err != nil {
			return nil, err
		}
	} else if err := s.startServices(ctx, runCtx); err != nil {
		return nil, err
	}
	s.startTraceQueries(ctx)
	if err := s.declareDefaultNetwork(ctx); err != nil {
		return nil, err
	}
	if err := s.declareNodeImage(ctx); err != nil {
		return nil, err
	}
	s.seedControlPlaneImage(runCtx)
	return s, nil
}

// declareNodeImage publishes the VirtualMachineImage a guest cluster's VMs
// boot when their GuestCluster names none (events.DefaultGuestClusterNodeImage):
// the seeded sample VM operating system. The native VM controller stores
// no new version of an unchanged image, so a resumed `up` declares it again
// harmlessly (with the registry's new address when its port moved). With an
// external registry, or without busybox to build the image, nothing is
// declared: a GuestCluster must then name its workers' image.
func (s *System) declareNodeImage(ctx context.Context) error {
	if s.vmOS == "" {
		s.log.Warn("no default guest cluster node image: GuestClusters must set spec.workers.imageName",
			"image", events.DefaultGuestClusterNodeImage)
		return nil
	}
	img := events.VirtualMachineImage{APIVersion: events.APIVersion, Kind: events.KindVirtualMachineImage,
		Metadata: events.Meta{Name: events.DefaultGuestClusterNodeImage},
		Spec:     events.VirtualMachineImageSpec{OCI: s.vmOS}}
	return s.declare(ctx, "guest cluster node image", events.TypeVMImageDeclared, img.Metadata.Name, &events.VMImageDeclared{Image: img})
}

// declareDefaultNetwork publishes the network pods attach to when they name
// none. network-config stores no new version for an unchanged spec, so a
// resumed `up` declares it again harmlessly; with --services=none it waits in
// the stream for the network-config that `podvisor serve` starts later.
func (s *System) declareDefaultNetwork(ctx context.Context) error {
	return s.declare(ctx, "default network", events.TypeNetworkDeclared, events.DefaultNetwork, netconfig.DefaultNetworkDeclared())
}

// declare publishes one declaration of `up` (what, for the error).
func (s *System) declare(ctx context.Context, what, ceType, subject string, p events.Payload) error {
	b, err := s.Dial(ctx, "up")
	if err != nil {
		return fmt.Errorf("up: declare %s: %w", what, err)
	}
	defer b.Close()
	ev, err := bus.NewEvent("podvisor/up", ceType, subject, p)
	if err != nil {
		return fmt.Errorf("up: declare %s: %w", what, err)
	}
	if err := b.Publish(ctx, ev); err != nil {
		return fmt.Errorf("up: declare %s: %w", what, err)
	}
	return nil
}

func (s *System) onClose(f func()) { s.closers = append(s.closers, f) }

func (s *System) startNATS(ctx, runCtx context.Context) error {
	if s.cfg.NATSNodes > 5 {
		return fmt.Errorf("up: --nats-nodes %d: at most 5 (JetStream replicates to at most 5 nodes)", s.cfg.NATSNodes)
	}
	if s.cfg.NATSNodes > 1 && s.cfg.NATSURL != "" {
		return ErrNoCluster
	}
	if s.cfg.NATSURL == "" {
		// Every service, the CLI and up itself get their own identity;
		// the server accepts nobody else, and only over TLS.
		auth, err := bus.LoadAuthority(filepath.Join(s.cfg.StateDir, "nats-auth"))
		if err != nil {
			return fmt.Errorf("up: NATS: %w", err)
		}
		if s.creds, err = auth.MintAll(); err != nil {
			return fmt.Errorf("up: NATS: %w", err)
		}
		srvTLS, err := s.ca.ServerTLS("nats", pki.Hosts(s.cfg.Host)...)
		if err != nil {
			return fmt.Errorf("up: NATS: %w", err)
		}
		if n := s.cfg.NATSNodes; n > 1 {
			urls, err := s.startNATSCluster(ctx, runCtx, n)
			if err != nil {
				return err
			}
			s.Endpoints.NATSURL = strings.Join(urls, ",")
			s.Endpoints.NATSCreds = s.creds[bus.IdentityClient]
			s.Endpoints.NATSCA = s.ca.CAFile()
			s.Endpoints.StreamReplicas = n
			return s.waitTopology(ctx, n)
		}
		port, err := freePort(s.cfg.Host, s.ports.want(partNATS, s.cfg.NATSPort)...)
		if err != nil {
			return fmt.Errorf("up: NATS: %w", err)
		}
		emb, err := natsembed.Start(natsembed.Config{Dir: filepath.Join(s.cfg.StateDir, "nats"), Host: s.cfg.Host, Port: port, Auth: auth, TLS: srvTLS,
			// Acknowledged means on disk: what up keeps in its state dir
			// survives a power loss, not only a crash.
			SyncAlways: true})
		if err != nil {
			return fmt.Errorf("up: NATS: %w", err)
		}
		s.onClose(emb.Shutdown)
		s.ports.use(partNATS, s.cfg.Host, s.cfg.NATSPort, port)
		s.Endpoints.NATSURL = emb.URL()
		s.Endpoints.NATSCreds = s.creds[bus.IdentityClient]
		s.Endpoints.NATSCA = s.ca.CAFile()
	} else {
		s.Endpoints.NATSURL = s.cfg.NATSURL
		s.Endpoints.NATSCreds = s.cfg.NATSCreds
		s.Endpoints.NATSCA = s.cfg.NATSCA
	}
	b, err := s.Dial(ctx, "up")
	if err != nil {
		return fmt.Errorf("up: NATS: %w", err)
	}
	defer b.Close()
	if err := b.EnsureTopology(ctx); err != nil {
		return fmt.Errorf("up: NATS topology: %w", err)
	}
	return nil
}

// NATSConn is how a part of the all-in-one named name reaches NATS: as
// the identity of that name when the table has one (a service), as admin
// otherwise (up's own parts: topology, status page, simulator control,
// trace queries, bench). With an external NATS every part uses the
// configured creds.
func (s *System) NATSConn(name string) bus.ConnConfig {
	c := bus.ConnConfig{URL: s.Endpoints.NATSURL, Name: "podvisor-" + name}
	if s.creds == nil {
		c.CredsFile, c.CAFile = s.cfg.NATSCreds, s.cfg.NATSCA
		return c
	}
	c.CAFile = s.ca.CAFile()
	if p, ok := s.creds[name]; ok {
		c.CredsFile = p
	} else {
		c.CredsFile = s.creds[bus.IdentityAdmin]
	}
	return c
}

// Dial connects as NATSConn(name) says.
func (s *System) Dial(ctx context.Context, name string) (*bus.Bus, error) {
	return bus.Dial(ctx, s.NATSConn(name))
}

func (s *System) startVCenter(ctx context.Context) error {
	if s.cfg.VCenterURL != "" {
		s.Endpoints.VCenterURL = s.cfg.VCenterURL
		s.Endpoints.VCenterCA = os.Getenv("GOVC_TLS_CA_CERTS")
		s.Endpoints.VCenterInsecure, _ = strconv.ParseBool(os.Getenv("GOVC_INSECURE"))
		return nil
	}
	port, err := freePort(s.cfg.Host, s.ports.want(partVCenter, s.cfg.VCenterPort)...)
	if err != nil {
		return fmt.Errorf("up: vCenter simulator: %w", err)
	}
	password, err := s.secret("vcenter-password")
	if err != nil {
		return err
	}
	// Datastores live in the state dir so that image disks survive a
	// restart of `up`, as the records in NATS and Redis do.
	dsDir := filepath.Join(s.cfg.StateDir, "datastores")
	if err := os.MkdirAll(dsDir, 0o750); err != nil {
		return fmt.Errorf("up: datastores: %w", err)
	}
	guests, guestsRequired, guestsOff, err := s.guestConfig()
	if err != nil {
		return err
	}
	simTLS, err := s.ca.ServerTLS("vcenter", pki.Hosts(s.cfg.Host)...)
	if err != nil {
		return fmt.Errorf("up: vCenter simulator: %w", err)
	}
	dc, err := sim.Start(ctx, sim.Config{
		TLS:             simTLS,
		Guests:          guests,
		GuestsRequired:  guestsRequired,
		Dir:             dsDir,
		KeepData:        true,
		Clusters:        s.cfg.Clusters,
		HostsPerCluster: s.cfg.HostsPerCluster,
		Username:        "podvisor",
		Password:        password,
		Addr:            net.JoinHostPort(s.cfg.Host, strconv.Itoa(port)),
		Seed:            s.cfg.Seed,
	})
	if err != nil {
		return fmt.Errorf("up: vCenter simulator: %w", err)
	}
	s.onClose(dc.Close)
	s.ports.use(partVCenter, s.cfg.Host, s.cfg.VCenterPort, port)
	s.Datacenter = dc
	s.GuestsOff = guestsOff
	if guestsOff == "" {
		s.GuestsOff = dc.GuestsOff()
	}
	if s.GuestsOff != "" {
		s.log.Warn("simulated guests are OFF: pod VMs run no containers, pods stay ContainerCreating", "reason", s.GuestsOff)
	} else if guests != nil {
		s.log.Info("simulated guests are on", "runtime", guests.Runtime)
	}
	// A port group on the management VLAN cuts its hosts off, as a bad
	// change would on a real network, so network-config's probe and
	// rollback can be seen at work.
	if err := dc.SetManagementVLAN(ManagementVLAN); err != nil {
		return fmt.Errorf("up: vCenter simulator: %w", err)
	}
	if err := s.injectVCenterFaults(dc); err != nil {
		return err
	}
	s.Endpoints.VCenterURL = dc.URL().String()
	s.Endpoints.VCenterCA = s.ca.CAFile()
	return nil
}

// secret returns a random value kept in the state dir, so that a resumed
// `up` keeps the credentials a sourced env file already holds.
func (s *System) secret(name string) (string, error) {
	path := filepath.Join(s.cfg.StateDir, name)
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	buf := make([]byte, 12)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	v := hex.EncodeToString(buf)
	if err := os.WriteFile(path, []byte(v+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("up: %s: %w", name, err)
	}
	return v, nil
}

func (s *System) startRedis(ctx context.Context) error {
	if s.cfg.RedisURL != "" {
		s.Endpoints.RedisURL = s.cfg.RedisURL
		return nil
	}
	// TLS only, and one ACL user per service: the image cache writes its
	// metadata, the scheduler (and the env file's user) only reads it.
	cert, key, err := s.ca.Issue("redis", pki.Hosts("127.0.0.1")...)
	if err != nil {
		return fmt.Errorf("up: Redis: %w", err)
	}
	var users []redisserver.User
	for _, u := range []struct{ name, rules string }{{"imagecache", redisserver.RulesWriter}, {"scheduler", redisserver.RulesReader}} {
		pw, err := s.secret("redis-" + u.name + "-password")
		if err != nil {
			return err
		}
		users = append(users, redisserver.User{Name: u.name, Password: pw, Rules: u.rules})
	}
	opts := []redisserver.Option{redisserver.WithLogger(s.log),
		redisserver.WithTLS(redisserver.TLSFiles{CertFile: cert, KeyFile: key, CAFile: s.ca.CAFile()}),
		redisserver.WithUsers(users...)}
	// The previous run's port when it is free; else redis-server's own
	// choice, which retries a port taken between the choice and its bind.
	if want := s.ports.want(partRedis, 0); len(want) > 0 {
		if port, err := freePort("127.0.0.1", want[0]); err == nil && port == want[0] {
			opts = append(opts, redisserver.WithPort(port))
		}
	}
	srv, err := redisserver.Start(ctx, filepath.Join(s.cfg.StateDir, "redis"), opts...)
	if err != nil {
		// StartEmbedded says loudly that it is a stand-in; add why.
		s.log.Warn("redis-server could not be started", "error", err)
		srv, err = redisserver.StartEmbedded(redisserver.WithLogger(s.log))
		if err != nil {
			return fmt.Errorf("up: Redis: %w", err)
		}
	}
	s.onClose(srv.Close)
	s.redis = srv
	if !srv.Embedded() { // the stand-in keeps no data worth coming back to
		s.ports.use(partRedis, "127.0.0.1", 0, portOf(srv.Addr()))
	}
	s.Endpoints.RedisURL = srv.URLFor("scheduler")
	if !srv.Embedded() {
		s.Endpoints.RedisCA = s.ca.CAFile()
	}
	return nil
}

// redisURL is the Redis URL service name uses: its own ACL user on the
// embedded redis-server, else the one URL there is.
func (s *System) redisURL(name string) string {
	if s.redis != nil && !s.redis.Embedded() {
		return s.redis.URLFor(name)
	}
	return s.Endpoints.RedisURL
}

func (s *System) startRegistry(ctx context.Context) error {
	if s.cfg.Registry != "" {
		s.Endpoints.Registry = s.cfg.Registry
		return nil
	}
	// The registry has no authentication, so it stays on loopback even when
	// the other servers listen more widely.
	host := s.cfg.Host
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		host = "127.0.0.1"
	}
	port, err := freePort(host, s.ports.want(partRegistry, s.cfg.RegistryPort)...)
	if err != nil {
		return fmt.Errorf("up: registry: %w", err)
	}
	// HTTPS with a certificate from the installation's CA, which the
	// image cache and the provisioner trust (PODVISOR_REGISTRY_CA).
	srvTLS, err := s.ca.ServerTLS("registry", pki.Hosts(host)...)
	if err != nil {
		return fmt.Errorf("up: registry: %w", err)
	}
	reg, err := ociregistry.Start(ctx, ociregistry.Config{Addr: net.JoinHostPort(host, strconv.Itoa(port)), TLS: srvTLS, RootCAs: s.ca.Pool()})
	if err != nil {
		return fmt.Errorf("up: registry: %w", err)
	}
	s.onClose(reg.Close)
	s.ports.use(partRegistry, host, s.cfg.RegistryPort, port)
	s.registry = reg
	s.Endpoints.Registry = reg.Addr()
	s.Endpoints.RegistryCA = s.ca.CAFile()
	if _, err := ociregistry.Seed(ctx, reg.Addr(), reg.Options()...); err != nil {
		return fmt.Errorf("up: seed registry: %w", err)
	}
	// The sample images above hold data only; busybox is the one whose
	// containers run, seeded when this machine has busybox-static.
	if _, err := ociregistry.SeedBusybox(ctx, reg.Addr(), reg.Options()...); err != nil && !ociregistry.IsMissing(err) {
		return fmt.Errorf("up: seed registry: %w", err)
	}
	// The operating system of native VMs: a root filesystem whose
	// /sbin/init simulated guests boot.
	ref, err := ociregistry.SeedVMOS(ctx, reg.Addr(), reg.Options()...)
	switch {
	case ociregistry.IsMissing(err):
		s.log.Warn("the sample VM image is not seeded: busybox is not installed", "image", ociregistry.VMOSRepoTag)
	case err != nil:
		return fmt.Errorf("up: seed registry: %w", err)
	default:
		s.vmOS = ref
	}
	return nil
}

// run starts f in the background; its error (other than on shutdown) ends Wait.
func (s *System) run(ctx context.Context, name string, f func(context.Context) error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		err := f(ctx)
		if ctx.Err() != nil {
			return // stopping
		}
		if err == nil {
			err = errors.New("stopped on its own")
		}
		s.errs <- fmt.Errorf("%s: %w", name, err)
	}()
}

// startServices connects each service (ctx bounds the connecting) and runs
// it until runCtx ends.
func (s *System) startServices(ctx, runCtx context.Context) error {
	if len(s.cfg.Services) == 0 {
		return nil
	}
	settings := s.settings()
	vcCfg, err := s.vsphereConfig(settings)
	if err != nil {
		return err
	}
	_, vmControlPlanes := s.controlPlaneBinary()
	for _, spec := range s.cfg.Services {
		deps := runner.Deps{Settings: settings}
		deps.Logger = s.log // each service scopes the logger with its name
		if spec.Name == guestcluster.Name && vmControlPlanes {
			// Guest clusters' control planes run in their VMs, reached
			// through the simulated hypervisor.
			deps.GuestPorts = newSimGuestPorts(s.Datacenter.Guests())
		}
		b, err := s.Dial(ctx, spec.Name)
		if err != nil {
			return fmt.Errorf("up: %s: %w", spec.Name, err)
		}
		s.onClose(b.Close)
		deps.Bus = b
		if spec.NeedsVSphere {
			sess, err := vsphere.Connect(ctx, vcCfg)
			if err != nil {
				return fmt.Errorf("up: %s: vCenter: %w", spec.Name, err)
			}
			s.onClose(func() { sess.Close(context.Background()) })
			deps.VSphere = sess
		}
		if spec.NeedsRedis {
			opts, err := redisclient.Options(s.redisURL(spec.Name), s.redisCA())
			if err != nil {
				return fmt.Errorf("up: %s: %w", spec.Name, err)
			}
			rdb := redis.NewClient(opts)
			s.onClose(func() { rdb.Close() })
			deps.Redis = rdb
		}
		s.run(runCtx, spec.Name, func(ctx context.Context) error { return spec.Run(ctx, deps) })
	}
	return nil
}

// vsphereConfig is how the services reach vCenter: the simulator is
// verified against our CA; an external vCenter against GOVC_TLS_CA_CERTS or
// a pinned PODVISOR_VCENTER_THUMBPRINT, and without verification only when
// GOVC_INSECURE asks for it.
func (s *System) vsphereConfig(settings config.Source) (vsphere.Config, error) {
	raw := s.Endpoints.VCenterURL
	u, err := url.Parse(raw)
	if err != nil {
		return vsphere.Config{}, fmt.Errorf("up: vCenter URL: %s", redact.String(err.Error()))
	}
	cfg := vsphere.Config{URL: raw}
	if u.User != nil {
		cfg.Username = u.User.Username()
		cfg.Password, _ = u.User.Password()
	}
	if s.Datacenter != nil {
		cfg.CAFile = s.ca.CAFile()
		return cfg, nil
	}
	cfg.CAFile, _ = settings("GOVC_TLS_CA_CERTS")
	cfg.Thumbprint, _ = settings("PODVISOR_VCENTER_THUMBPRINT")
	if v, _ := settings("GOVC_INSECURE"); v != "" {
		if cfg.Insecure, err = strconv.ParseBool(v); err != nil {
			return cfg, fmt.Errorf("up: GOVC_INSECURE=%q: want 1, true, 0 or false", v)
		}
	}
	return cfg, nil
}

// Wait blocks until ctx ends or a part fails.
func (s *System) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-s.errs:
		return err
	}
}

// Close stops the services first (they drain their consumers), then the
// infrastructure in reverse order of start.
func (s *System) Close() {
	if s.cancel != nil {
		s.cancel()
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		s.log.Warn("services did not stop within 30s; stopping the infrastructure anyway")
	}
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	s.closers = nil
}

// EnvFile renders the shell exports of the endpoints.
func (e Endpoints) EnvFile() string {
	var b strings.Builder
	b.WriteString("# Written by `podvisor up`: source it to point govc, nats and podvisor at this datacenter.\n")
	line := func(k, v string) { fmt.Fprintf(&b, "export %s=%s\n", k, quote(v)) }
	// Credentials and CAs that this installation does not have (none in an
	// insecure one) are left out rather than exported empty.
	lineIfSet := func(k, v string) {
		if v != "" {
			line(k, v)
		}
	}
	line("PODVISOR_NATS_URL", e.NATSURL)
	line("NATS_URL", e.NATSURL)
	lineIfSet("PODVISOR_NATS_CREDS", e.NATSCreds)
	lineIfSet("NATS_CREDS", e.NATSCreds)
	lineIfSet("PODVISOR_NATS_CA", e.NATSCA)
	lineIfSet("NATS_CA", e.NATSCA)
	if e.StreamReplicas > 1 {
		line("PODVISOR_STREAM_REPLICAS", strconv.Itoa(e.StreamReplicas))
	}
	line("GOVC_URL", e.VCenterURL)
	lineIfSet("GOVC_TLS_CA_CERTS", e.VCenterCA)
	if e.VCenterInsecure {
		line("GOVC_INSECURE", "1")
	}
	line("PODVISOR_REDIS_URL", e.RedisURL)
	lineIfSet("PODVISOR_REDIS_CA", e.RedisCA)
	line("PODVISOR_REGISTRY", e.Registry)
	lineIfSet("PODVISOR_REGISTRY_CA", e.RegistryCA)
	line("PODVISOR_UI_URL", e.UIURL)
	if e.HostAgents > 0 {
		line("PODVISOR_HOST_AGENTS", strconv.Itoa(e.HostAgents))
		line("PODVISOR_GUEST_CHANNEL", e.GuestChannel)
		line("PODVISOR_HOST_AGENTS_LISTEN", e.HostAgentsListen)
	}
	return b.String()
}

// guestTimeout is how long the provisioner lets a powered-on pod VM's guest
// stay silent before drift repair power-cycles it, when guests run: a
// simulated guest reports within seconds of power-on.
const guestTimeout = "60s"

// serviceDefaults are simulatorDefaults plus the settings that follow from
// whether the simulated pod VMs run guests: with guests, the provisioner
// repairs a silent guest after guestTimeout; without, it never expects a
// guest (no repair of silence, and a delete powers off at once instead of
// waiting out the grace period for a report that cannot come).
func (s *System) serviceDefaults() map[string]string {
	out := maps.Clone(simulatorDefaults)
	maps.Copy(out, s.cfg.flagSettings()) // exported in the env file too
	out[provisioner.EnvKeyFile] = s.diskKeyFile()
	if s.Concentrator != "" {
		out[provisioner.EnvChannelURI] = s.Concentrator
		out[provisioner.EnvChannelKeyFile] = s.channelKeyFile()
	}
	if s.GuestsOff == "" {
		out[provisioner.EnvGuestTimeout] = guestTimeout
		out[provisioner.EnvTemplateAgent] = agentID(s.cfg.Agent)
	} else {
		out[provisioner.EnvAwaitGuestStop] = "false"
	}
	// Guest clusters: their control planes live in the state dir, their
	// nodes reach the embedded NATS with identities its authority signs.
	if s.cfg.NATSURL == "" {
		out["PODVISOR_GUESTCLUSTER_DIR"] = filepath.Join(s.cfg.StateDir, "guestclusters")
		out["PODVISOR_GUESTCLUSTER_AUTHORITY"] = filepath.Join(s.cfg.StateDir, "nats-auth")
		out["PODVISOR_GUESTCLUSTER_NATS_URL"] = s.Endpoints.NATSURL
		out["PODVISOR_GUESTCLUSTER_NATS_CA"] = s.Endpoints.NATSCA
	}
	return out
}

// channelKeyFile holds the key of pods' channel tokens (GuestChannel
// serial), hex, mode 0600.
func (s *System) channelKeyFile() string { return filepath.Join(s.cfg.StateDir, "channel-key") }

// diskKeyFile holds the provisioner's key-encryption key (package
// diskkeys), hex, mode 0600.
func (s *System) diskKeyFile() string { return filepath.Join(s.cfg.StateDir, "disk-kek") }

// settings is the services' configuration source: cfg.Settings or the
// environment, over serviceDefaults when the simulator is ours.
func (s *System) settings() config.Source {
	// The embedded registry's CA, under whatever PODVISOR_REGISTRY_CA
	// the environment names.
	reg := map[string]string{}
	if s.Endpoints.RegistryCA != "" {
		reg["PODVISOR_REGISTRY_CA"] = s.Endpoints.RegistryCA
	}
	flags := config.Map(s.cfg.flagSettings())
	if s.Datacenter == nil {
		return config.Layered(flags, s.cfg.settings(false), config.Map(reg))
	}
	src := s.cfg.Settings
	if src == nil {
		src = config.Env()
	}
	return config.Layered(flags, src, config.Map(s.serviceDefaults()), config.Map(reg))
}

// flagSettings are the service settings up's flags set: they win over the
// environment.
func (c Config) flagSettings() map[string]string {
	out := map[string]string{}
	if c.TemplatesWarm > 0 {
		out[provisioner.EnvTemplatesWarm] = strconv.Itoa(c.TemplatesWarm)
	}
	return out
}

// RegistryOptions reach the embedded registry (its transport trusts the
// installation's CA): what a test or the bench pushes and pulls with. None
// for an external registry.
func (s *System) RegistryOptions() []remote.Option {
	if s.registry == nil {
		return nil
	}
	return s.registry.Options()
}

// simulatorEnv renders serviceDefaults as exports, sorted, with the value
// in force (up's environment wins over the default).
func (s *System) simulatorEnv() string {
	src := s.settings()
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(s.serviceDefaults())) {
		v, _ := src(k)
		fmt.Fprintf(&b, "export %s=%s\n", k, quote(v))
	}
	return b.String()
}

func quote(v string) string { return "'" + strings.ReplaceAll(v, "'", `'\''`) + "'" }

// WriteEnv writes the env file atomically into the state dir.
func (s *System) WriteEnv() (string, error) {
	path := filepath.Join(s.cfg.StateDir, "env")
	env := s.Endpoints.EnvFile()
	if s.Datacenter != nil {
		env += s.simulatorEnv()
	}
	return path, writeStateFile(path, []byte(env))
}

// writeStateFile replaces a file of the state dir atomically (a temporary
// file, then a rename): a reader, or the next run, sees the old content or
// the new one, never a part.
func writeStateFile(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// PrintEndpoints writes the human summary of where everything listens.
func (s *System) PrintEndpoints(w io.Writer, envPath string, took time.Duration) {
	fmt.Fprintf(w, "podvisor is up (%s)\n", took.Round(time.Millisecond))
	fmt.Fprintf(w, "  NATS      %s\n", redact.URL(s.Endpoints.NATSURL))
	fmt.Fprintf(w, "  vCenter   %s\n", redact.URL(s.Endpoints.VCenterURL))
	fmt.Fprintf(w, "  Redis     %s\n", redact.URL(s.Endpoints.RedisURL))
	fmt.Fprintf(w, "  registry  %s\n", s.Endpoints.Registry)
	status := s.Endpoints.UIURL + " (status page"
	if s.cfg.Metrics != nil {
		status += "; Prometheus metrics at /metrics"
	}
	fmt.Fprintf(w, "  status    %s)\n", status)
	if s.Datacenter != nil {
		fmt.Fprintf(w, "  datacenter: %d clusters x %d hosts\n", s.cfg.Clusters, s.cfg.HostsPerCluster)
		if e := s.Endpoints; s.GuestsOff == "" {
			fmt.Fprintln(w, "  guests: on (pod VM agents run as simulated guests)")
			where := "sockets in " + e.HostAgentsListen
			if e.GuestChannel == GuestChannelSerial {
				where = "concentrator " + e.HostAgentsListen
			}
			fmt.Fprintf(w, "  host agents: %d, one per host; guest channel %s (%s)\n", e.HostAgents, e.GuestChannel, where)
		} else {
			fmt.Fprintf(w, "\n  !!! GUESTS ARE OFF: %s.\n  !!! Pod VMs run no containers here: pods stay ContainerCreating, logs and exec have nothing to reach.\n\n", s.GuestsOff)
		}
	}
	names := make([]string, 0, len(s.cfg.Services))
	for _, sp := range s.cfg.Services {
		names = append(names, sp.Name)
	}
	// The host agents (one per simulated host) and the status page run
	// beside the services: list what runs.
	if e := s.Endpoints; e.HostAgents > 0 && !slices.Contains(names, "hostagent") {
		names = append(names, fmt.Sprintf("hostagent ×%d", e.HostAgents))
	}
	if s.Endpoints.UIURL != "" && !slices.Contains(names, "dashboard") {
		names = append(names, "dashboard")
	}
	if len(names) == 0 {
		names = []string{"none"}
	}
	fmt.Fprintf(w, "  services: %s\n", strings.Join(names, ", "))
	if slices.Contains(names, imagecache.Name) {
		ic, _ := imagecache.ConfigFrom(s.settings())
		if err := layerfs.Check(ic.DiskCompression); err != nil {
			fmt.Fprintf(w, "\n  WARNING: image disks cannot be written here: %v.\n  Every image pull fails with reason %s; run podvisor up as root with erofs-utils installed, or with uncompressed image disks.\n",
				err, imagecache.ReasonDisksUnavailable)
		}
	}
	// An address that moved breaks what kept the old one; say so where the
	// user looks, not only in the log.
	if s.ports != nil {
		for _, n := range s.ports.notes {
			fmt.Fprintf(w, "\n  !!! %s.\n", n)
		}
	}
	fmt.Fprintf(w, "\n  source %s   # then: podvisor get hosts, govc find / -type h\n", envPath)
}

// redisCA is the CA a Redis client trusts: ours for the embedded server,
// PODVISOR_REDIS_CA for an external one.
func (s *System) redisCA() string {
	if s.redis != nil && !s.redis.Embedded() {
		return s.ca.CAFile()
	}
	return os.Getenv("PODVISOR_REDIS_CA")
}
