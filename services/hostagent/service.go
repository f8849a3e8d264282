package hostagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/deps"
)

// Name is the service's name; each host's agent consumes as
// hostagent-<host> (see consumerName).
const Name = "hostagent"

// Source is the CloudEvents source of the reports.
const Source = "podvisor/" + Name

// Deps are what the host agent works through: its connections (package
// deps; only the bus, required, which carries the reports, the deletes and
// the queries, and holds the `pods` bucket, read only) and the host's parts
// below.
type Deps struct {
	deps.Deps
	// Network is the host's own network state; with it the agent applies
	// the final desired state network-config pushes to the host
	// (network.host.desired). Nil leaves the host's network to others.
	Network HostNetwork
	// Endpoints gives the host addresses on port groups, from which it
	// serves the network services (DNS) of its networks; nil serves none.
	Endpoints EndpointsFunc
	// Modules receive the pass-through data of their namespace (the key)
	// on this host.
	Modules map[string]DataModule
}

// Service is one host's agent.
type Service struct {
	cfg  Config
	bus  *bus.Bus
	pods jetstream.KeyValue
	log  *slog.Logger
	// network is Deps.Network (nil: not this agent's).
	network HostNetwork

	mu    sync.Mutex
	conns map[string]*podConn // by pod uid: the pod's current channel

	// view, endpoints, modules and delivered serve the networks of the
	// host (netservices.go, netdata.go); delivered is the runNetworks loop's.
	view      *netView
	endpoints EndpointsFunc
	modules   map[string]DataModule
	delivered map[string]HostData
	// netState is the host's last desired network state (netstate.go).
	netState netState

	// templates is the provisioner's bucket of pod VM templates, opened
	// when a concentrator first routes a template's line (templateHost):
	// an agent on a host's socket never needs it.
	templatesMu sync.Mutex
	templates   jetstream.KeyValue
}

// New checks the configuration and opens the `pods` bucket.
func New(cfg Config, d Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := d.Require(deps.NeedBus("the guests' reports are published on it")); err != nil {
		return nil, fmt.Errorf("hostagent: %w", err)
	}
	d.Logger = d.Log()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kv, err := d.Bus.KV(ctx, events.BucketPods)
	if err != nil {
		return nil, fmt.Errorf("hostagent: pods bucket (is the topology declared?): %w", err)
	}
	return &Service{
		cfg:     cfg,
		bus:     d.Bus,
		pods:    kv,
		log:     d.Logger.With("service", Name, "host", cfg.Host),
		conns:   map[string]*podConn{},
		network: d.Network,

		view:      newNetView(),
		endpoints: d.Endpoints,
		modules:   d.Modules,
		delivered: map[string]HostData{},
	}, nil
}

// Socket is where this host agent listens for guest channels.
func (s *Service) Socket() string { return socketPath(s.cfg.ChannelDir, s.cfg.Host) }

func socketPath(dir, host string) string { return strings.TrimSuffix(dir, "/") + "/" + host + ".sock" }

// Run listens for guest channels, serves logs and exec for the pods whose
// channel it holds, and stops pods' containers on delete, until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	if err := os.MkdirAll(s.cfg.ChannelDir, 0o750); err != nil {
		return fmt.Errorf("hostagent: channel dir: %w", err)
	}
	// A socket left by a process that died is in the way; a live one on the
	// same path would be a second agent for the host, which the deployment
	// must not do.
	_ = os.Remove(s.Socket())
	ln, err := net.Listen("unix", s.Socket())
	if err != nil {
		return fmt.Errorf("hostagent: listen on %s: %w", s.Socket(), err)
	}
	subs, err := s.serveQueries()
	if err != nil {
		ln.Close()
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		<-gctx.Done()
		ln.Close()
		for _, sub := range subs {
			_ = sub.Drain()
		}
		s.closeAll()
		return nil
	})
	g.Go(func() error { return s.accept(gctx, ln) })
	if s.endpoints != nil || len(s.modules) > 0 {
		g.Go(func() error { return s.runNetworks(gctx) })
	}
	if !s.cfg.SharedDeletes {
		g.Go(func() error {
			return s.router().Run(gctx, s.bus, bus.ConsumerConfig{Workers: s.cfg.Workers}, nil)
		})
	}
	if s.network != nil {
		g.Go(func() error { return s.runNetworkState(gctx) })
	}
	s.log.Info("host agent running", "socket", s.Socket())
	err = g.Wait()
	_ = os.Remove(s.Socket())
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("hostagent %s: %w", s.cfg.Host, err)
	}
	return nil
}

// router is the agent's handlers of the pods stream (deletes) on its own
// durable, hostagent-<host>-PODS.
func (s *Service) router() *bus.Router {
	r := bus.NewRouter(consumerName(s.cfg.Host), s.log)
	bus.Handle(r, s.handleDelete)
	return r
}

var notConsumerChar = regexp.MustCompile(`[^a-z0-9-]+`)

// consumerName is the durable consumer's service name: every host agent
// sees every delete, so each has its own durable, hostagent-<host>.
func consumerName(host string) string {
	n := Name + "-" + notConsumerChar.ReplaceAllString(strings.ToLower(host), "-")
	return strings.TrimRight(n[:min(len(n), 63)], "-")
}

func (s *Service) accept(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		conn := guestchannel.NewConn(c)
		conn.SetWriteTimeout(s.cfg.WriteTimeout)
		wg.Go(func() { s.serveConn(ctx, conn) })
	}
}

// conn returns the pod's current channel.
func (s *Service) conn(uid string) *podConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[uid]
}

func (s *Service) closeAll() {
	s.mu.Lock()
	conns := make([]*podConn, 0, len(s.conns))
	for _, c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.conn.Close()
	}
}

// record reads a pod record.
func (s *Service) record(ctx context.Context, namespace, name string) (*events.PodRecord, error) {
	e, err := s.pods.Get(ctx, events.PodRecordKey(namespace, name))
	if err != nil {
		return nil, err
	}
	var r events.PodRecord
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, fmt.Errorf("pod record %s/%s: %w", namespace, name, err)
	}
	return &r, nil
}
