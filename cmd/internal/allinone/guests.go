package allinone

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/runtime"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/hostagent"
	"github.com/podvisor/podvisor/shared/deps"
	"github.com/podvisor/podvisor/shared/pki"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/sim/guest"
)

// Guest modes (--guests).
const (
	GuestsAuto = "auto" // on when this machine can run them, else off (said loudly)
	GuestsOn   = "on"   // on, or `up` fails saying why
	GuestsOff  = "off"
)

// DefaultAgentPath is podvm-agent beside the running executable (make
// build puts both in bin/).
func DefaultAgentPath() string {
	exe, err := os.Executable()
	if err != nil {
		return "podvm-agent"
	}
	return filepath.Join(filepath.Dir(exe), "podvm-agent")
}

// GuestRuntime is the OCI runtime the simulated guests' agents use: crun
// when it is on PATH (it starts a container several times faster than
// runc), else runc; "" when neither is.
func GuestRuntime() string {
	for _, rt := range runtime.Preferred {
		if _, err := exec.LookPath(rt); err == nil {
			return rt
		}
	}
	return ""
}

// guestConfig is the simulator's guest configuration for the mode, or nil
// for off; reason says why guests are off (a mode of auto that finds no
// OCI runtime is off before the simulator is asked).
func (s *System) guestConfig() (cfg *guest.Config, required bool, reason string, err error) {
	switch s.cfg.GuestChannel {
	case "", GuestChannelSocket, GuestChannelSerial:
	default:
		return nil, false, "", fmt.Errorf("up: --guest-channel %q: want socket or serial", s.cfg.GuestChannel)
	}
	switch s.cfg.Guests {
	case GuestsOff:
		return nil, false, "turned off with --guests=off", nil
	case GuestsOn, GuestsAuto, "":
	default:
		return nil, false, "", fmt.Errorf("up: --guests %q: want auto, on or off", s.cfg.Guests)
	}
	required = s.cfg.Guests == GuestsOn
	rt := GuestRuntime()
	if rt == "" {
		const why = "no OCI runtime (crun or runc) on PATH: apt-get install crun"
		if required {
			return nil, false, "", errors.New("up: --guests=on: " + why)
		}
		return nil, false, why, nil
	}
	agent := s.cfg.Agent
	if agent == "" {
		agent = DefaultAgentPath()
	}
	return &guest.Config{
		Agent:         agent,
		SerialRootCAs: s.ca.Pool(),
		ChannelDir:    s.ChannelDir(),
		Dir:           filepath.Join(s.cfg.StateDir, "guests"),
		Runtime:       rt,
		Logger:        s.log.With("component", "guests"),
	}, required, "", nil
}

// ChannelDir is where the host agents listen and guest channels arrive.
func (s *System) ChannelDir() string { return filepath.Join(s.cfg.StateDir, "channels") }

// startHostAgents runs one host agent per simulated host, in this process,
// when the simulated guests are on.
func (s *System) startHostAgents(ctx, runCtx context.Context) error {
	if s.Datacenter == nil || s.Datacenter.Guests() == nil {
		if s.cfg.GuestChannel == GuestChannelSerial {
			s.log.Warn("--guest-channel serial: no guests run, so no concentrator either", "why", s.GuestsOff)
		}
		return nil
	}
	// The host agents run as their own identity: consume PODS with their
	// durables, read the pods bucket, report containers, answer
	// pv.query.pod.>.
	b, err := s.Dial(ctx, events.PublisherHostAgent)
	if err != nil {
		return fmt.Errorf("up: host agents: %w", err)
	}
	s.onClose(b.Close)
	agents := map[string]*hostagent.Service{}
	for _, h := range s.Datacenter.Hosts() {
		cfg := hostagent.DefaultConfig()
		cfg.Host, cfg.ChannelDir = h.Name, s.ChannelDir()
		// The agent owns its host's segments: it applies the final state
		// network-config pushes, as on a real host; it serves the network
		// services from its addresses on them.
		svc, err := hostagent.New(cfg, hostagent.Deps{Deps: deps.Deps{Bus: b, Logger: s.log}, Network: s.Datacenter.HostSegments(h.Name),
			Endpoints: SimEndpoints(s.Datacenter)})
		if err != nil {
			return fmt.Errorf("up: host agent of %s: %w", h.Name, err)
		}
		s.run(runCtx, "host agent "+h.Name, svc.Run)
		agents[h.Name] = svc
	}
	s.Endpoints.HostAgents = len(agents)
	if s.cfg.GuestChannel != GuestChannelSerial {
		s.Endpoints.GuestChannel, s.Endpoints.HostAgentsListen = GuestChannelSocket, s.ChannelDir()
		return nil
	}
	// Pod VMs talk on network serial ports: the host agents take them
	// through one concentrator on loopback, whose address the provisioner
	// gives every pod VM as the ports' proxy (telnets://), as on a vCenter,
	// where a VM with a network serial port moves with vMotion only
	// through one.
	if err := guestchannel.WriteChannelKeyFile(s.channelKeyFile()); err != nil {
		return fmt.Errorf("up: %w", err)
	}
	// TLS, with a certificate of the installation's CA, which the
	// simulated hosts check (guest.Config.SerialRootCAs).
	cert, key, err := s.ca.Issue("concentrator", pki.Hosts("127.0.0.1")...)
	if err != nil {
		return fmt.Errorf("up: %w", err)
	}
	port, err := freePort("127.0.0.1", s.ports.want(partChannel, 0)...)
	if err != nil {
		return fmt.Errorf("up: guest channel concentrator: %w", err)
	}
	conc, err := hostagent.ListenConcentrator(hostagent.ConcentratorConfig{Listen: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Proxy: true, KeyFile: s.channelKeyFile(),
		TLSCert: cert, TLSKey: key}, agents, s.log)
	if err != nil {
		return fmt.Errorf("up: %w", err)
	}
	s.ports.use(partChannel, "127.0.0.1", 0, port)
	s.Concentrator = "telnets://" + conc.Listener.Addr().String()
	s.Endpoints.GuestChannel, s.Endpoints.HostAgentsListen = GuestChannelSerial, s.Concentrator
	s.run(runCtx, "guest channel concentrator", conc.Run)
	return nil
}

// Guest channels (Config.GuestChannel).
const (
	GuestChannelSocket = "socket"
	GuestChannelSerial = "serial"
)

// SimEndpoints gives host agents their service addresses on the simulated
// datacenter's segments (what a VMkernel NIC on the port group is on
// vSphere).
func SimEndpoints(d *sim.Datacenter) hostagent.EndpointsFunc {
	return func(ctx context.Context, host, portGroup string, addr netip.Prefix) (hostagent.ServiceEndpoint, error) {
		return d.AttachService(ctx, host, portGroup, addr)
	}
}
