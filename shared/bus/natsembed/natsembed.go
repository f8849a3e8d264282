package natsembed

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/podvisor/podvisor/shared/bus"
)

// Config configures an in-process NATS server with JetStream.
type Config struct {
	// Dir holds the JetStream file store. Required: streams and KV buckets
	// live here, and a later start on the same Dir resumes them.
	Dir string
	// Host to listen on; default 127.0.0.1 so that an all-in-one on a laptop
	// is not reachable from the network unless asked.
	Host string
	// Port to listen on; 0 picks a free port.
	Port int
	// ServerName names the server in advisories and monitoring; default
	// "podvisor-embedded". Keep it stable across restarts on the same Dir.
	ServerName string
	// SyncAlways fsyncs every JetStream write. The server default syncs every
	// two minutes, which can lose acknowledged writes on power loss (not on a
	// process crash); a single-node deployment that must survive power loss
	// sets this.
	SyncAlways bool
	// MaxStore is the file store's capacity, which JetStream admits each
	// stream's and bucket's byte limit against when it is created. 0 keeps
	// the server's default: three quarters of the disk space free at start,
	// so a topology whose limits add up to more than that is refused
	// ("insufficient storage resources") however little it holds. Tests
	// set it, so that a short disk does not fail a run that writes a few
	// megabytes.
	MaxStore int64
	// Auth, when set, makes the server accept only the identities this
	// authority mints (creds files), each with its permissions. Without it
	// the server is open, which only tests want.
	Auth *bus.Authority
	// TLS, when set, is the server's certificate configuration: every
	// client connection must then use TLS (a plain-text one is refused).
	TLS *tls.Config
	// Cluster, when set, makes the server one node of a NATS cluster
	// (JetStream clustered: streams and buckets with replicas).
	Cluster *ClusterConfig
}

// ClusterConfig is an embedded server's part in a cluster.
type ClusterConfig struct {
	// Name is the cluster's name, the same on every node.
	Name string
	// Port is where this node listens for routes from the others (on
	// Config.Host).
	Port int
	// Routes are the route URLs of every node (nats-route://host:port);
	// a node ignores its own.
	Routes []string
}

// Server is a running in-process NATS server.
type Server struct {
	srv *server.Server
}

// Start runs nats-server in this process with JetStream file storage in
// cfg.Dir and returns once it accepts client connections.
func Start(cfg Config) (*Server, error) {
	if cfg.Dir == "" {
		return nil, errors.New("bus: embedded server: Dir is required (JetStream file storage)")
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		return nil, fmt.Errorf("bus: embedded server: Port %d out of range 0-65535", cfg.Port)
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if net.ParseIP(cfg.Host) == nil && cfg.Host != "localhost" {
		return nil, fmt.Errorf("bus: embedded server: Host %q is not an IP address", cfg.Host)
	}
	if cfg.ServerName == "" {
		cfg.ServerName = "podvisor-embedded"
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("bus: embedded server: Dir %s: %w", cfg.Dir, err)
	}
	port := cfg.Port
	if port == 0 {
		// nats-server reads 0 as "the default port 4222"; -1 is its "any free port".
		port = server.RANDOM_PORT
	}
	opts := &server.Options{
		ServerName:        cfg.ServerName,
		Host:              cfg.Host,
		Port:              port,
		JetStream:         true,
		StoreDir:          cfg.Dir,
		SyncAlways:        cfg.SyncAlways,
		JetStreamMaxStore: cfg.MaxStore,
		// The host process owns signals and logging.
		NoSigs: true,
		NoLog:  true,
	}
	if cfg.Auth != nil {
		opts.MaxControlLine = bus.MaxControlLine
		if err := trust(opts, cfg.Auth); err != nil {
			return nil, fmt.Errorf("bus: embedded server: auth: %w", err)
		}
	}
	if cfg.TLS != nil {
		opts.TLSConfig = cfg.TLS
		opts.TLS = true
		opts.TLSTimeout = 5
	}
	if c := cfg.Cluster; c != nil {
		if c.Name == "" || c.Port <= 0 || len(c.Routes) == 0 {
			return nil, fmt.Errorf("bus: embedded server: Cluster: Name, Port and Routes are required (got %q, %d, %d routes)", c.Name, c.Port, len(c.Routes))
		}
		opts.Cluster = server.ClusterOpts{Name: c.Name, Host: cfg.Host, Port: c.Port}
		opts.Routes = server.RoutesFromStr(strings.Join(c.Routes, ","))
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("bus: embedded server: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("bus: embedded server on %s: not ready within 10s", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
	}
	if !srv.JetStreamEnabled() {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("bus: embedded server: JetStream did not start (store dir %s)", cfg.Dir)
	}
	return &Server{srv: srv}, nil
}

// trust makes the server trust the authority only: its operator, its
// account and the system account.
func trust(opts *server.Options, a *bus.Authority) error {
	t := a.Trust()
	res := &server.MemAccResolver{}
	for pub, claims := range t.Accounts {
		if err := res.Store(pub, claims); err != nil {
			return err
		}
	}
	opts.TrustedOperators = []*jwt.OperatorClaims{t.Operator}
	opts.AccountResolver = res
	opts.SystemAccount = t.SystemAccount
	return nil
}

// URL is the nats:// URL clients connect to.
func (e *Server) URL() string { return e.srv.ClientURL() }

// Server is the underlying nats-server, for monitoring in tests and the
// status page.
func (e *Server) Server() *server.Server { return e.srv }

// Shutdown stops the server and waits until it has flushed its store and
// closed its listeners. Safe to call more than once.
func (e *Server) Shutdown() {
	if e == nil || e.srv == nil {
		return
	}
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}
