package hostagent

import (
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/podvisor/podvisor/shared/config"
)

// Config tunes one host agent.
type Config struct {
	// Host is the name of the host this agent serves (as vCenter names it);
	// required.
	Host string
	// ChannelDir is where the agent listens, on <ChannelDir>/<Host>.sock,
	// for the guest channels the hypervisor routes to this host; required.
	ChannelDir string
	// StopSlack is how long past a pod's grace period a delete waits for
	// the guest's "stopped" before it gives up and lets the power-off go
	// ahead (default 10s).
	StopSlack time.Duration
	// HelloTimeout bounds the wait for a new connection's hello (default 10s).
	HelloTimeout time.Duration
	// WriteTimeout bounds every write to a guest channel (default 10s): a
	// guest that does not read its channel for that long has its channel
	// closed (it dials again), rather than hold a delete's stop, a query
	// or a resync waiting to write for good.
	WriteTimeout time.Duration
	// Workers is how many deletes are handled at once (default 8).
	Workers int
	// NetworkResync is how often the host's last desired network state is
	// applied again, repairing drift on the host (default 1m);
	// NetworkRetry is how soon after a state that could not be applied
	// whole (default 10s); a state that failed only on port groups vCenter
	// does not have is tried again sooner, from 1s doubling up to it.
	NetworkResync, NetworkRetry time.Duration
	// ReportHold is how long a channel's first report, when it only says
	// every container is still being created (what the agent sends at
	// hello, and what the pod's record already assumes), waits for a newer
	// report to replace it before it is published (0, the default,
	// publishes it at once). A guest whose containers start within the
	// hold costs one report, one event and one record write instead of
	// two; a report that says anything more is never held. Off by default:
	// with a 1 s hold a burst of 100 pods with guests on reached Running
	// about a second later at the median (p99 4.29 s against 2.88 s,
	// back to back, same tree), which the write saved is not worth.
	ReportHold time.Duration
	// SharedDeletes: the agent runs no delete consumer of its own; the
	// process's one (RunDeletes) hands it its pods' deletes. What a
	// process serving every host (ConfigFor) does: a consumer per host
	// would read every delete's record once per host.
	SharedDeletes bool
}

// Settings read by ConfigsFrom.
const (
	// EnvHost names the host this process serves, or several, comma
	// separated (one agent each, in one process).
	EnvHost       = "PODVISOR_HOSTAGENT_HOST"
	EnvChannelDir = "PODVISOR_HOSTAGENT_CHANNEL_DIR"
)

// Settings of the concentrator (ConcentratorConfigFrom), one per process.
const (
	// EnvConcentrator is the address the concentrator listens on for pod
	// VMs' network serial ports: telnet://host:port as the ports' proxy
	// (vSPC; what vMotion needs), or host:port, tcp://host:port for ports
	// that connect to it directly; unset, the process runs none.
	EnvConcentrator = "PODVISOR_HOSTAGENT_CONCENTRATOR"
	// EnvChannelKeyFile is the Secret file of the channel key the
	// provisioner makes pods' channel tokens with.
	EnvChannelKeyFile = "PODVISOR_HOSTAGENT_CHANNEL_KEY_FILE"
	// EnvConcentratorTLSCert and EnvConcentratorTLSKey make the
	// concentrator serve TLS (pod VMs' ports then name it telnets://…, or
	// ssl://… without the proxy).
	EnvConcentratorTLSCert = "PODVISOR_HOSTAGENT_CONCENTRATOR_TLS_CERT"
	EnvConcentratorTLSKey  = "PODVISOR_HOSTAGENT_CONCENTRATOR_TLS_KEY"
)

// ConcentratorConfig says whether and where this process's concentrator
// listens (Concentrator).
type ConcentratorConfig struct {
	// Listen is the TCP address, host:port; empty runs no concentrator.
	Listen string
	// Proxy makes the concentrator the ports' proxy (a telnet:// address):
	// hosts speak the VMware telnet extension to it (Concentrator.Proxy).
	Proxy bool
	// KeyFile holds the channel key (guestchannel.LoadChannelKey).
	KeyFile string
	// TLSCert and TLSKey, both or neither, are the concentrator's
	// certificate and key: set, it serves TLS only.
	TLSCert, TLSKey string
}

// ConcentratorConfigFrom reads PODVISOR_HOSTAGENT_CONCENTRATOR and
// PODVISOR_HOSTAGENT_CHANNEL_KEY_FILE from src, validated.
func ConcentratorConfigFrom(src config.Source) (ConcentratorConfig, error) {
	listen, _ := src(EnvConcentrator)
	key, _ := src(EnvChannelKeyFile)
	cert, _ := src(EnvConcentratorTLSCert)
	certKey, _ := src(EnvConcentratorTLSKey)
	c := ConcentratorConfig{Listen: strings.TrimPrefix(strings.TrimSpace(listen), "tcp://"), KeyFile: strings.TrimSpace(key),
		TLSCert: strings.TrimSpace(cert), TLSKey: strings.TrimSpace(certKey)}
	if rest, ok := strings.CutPrefix(c.Listen, "telnet://"); ok {
		c.Listen, c.Proxy = rest, true
	}
	if c.Listen == "" {
		return c, nil
	}
	var p config.Checks
	if _, port, err := net.SplitHostPort(c.Listen); err != nil || port == "" {
		p.Add(fmt.Errorf("Listen %q (%s): want telnet://host:port (the ports' proxy), host:port or tcp://host:port, such as telnet://0.0.0.0:7041", listen, EnvConcentrator))
	}
	if c.KeyFile == "" {
		p.Add(fmt.Errorf("KeyFile: required with a concentrator (%s: the channel key the provisioner's tokens are made with)", EnvChannelKeyFile))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		p.Add(fmt.Errorf("TLSCert, TLSKey: set both or neither (%s, %s)", EnvConcentratorTLSCert, EnvConcentratorTLSKey))
	}
	if err := p.Err(); err != nil {
		return c, fmt.Errorf("hostagent config: %w", err)
	}
	return c, nil
}

// DefaultConfig returns the defaults; Host and ChannelDir are still to set.
func DefaultConfig() Config {
	return Config{StopSlack: 10 * time.Second, HelloTimeout: 10 * time.Second, WriteTimeout: DefaultWriteTimeout, Workers: 8,
		NetworkResync: time.Minute, NetworkRetry: 10 * time.Second, ReportHold: 0}
}

// DefaultWriteTimeout is Config.WriteTimeout's and
// Concentrator.WriteTimeout's default.
const DefaultWriteTimeout = 10 * time.Second

// EveryHost is PODVISOR_HOSTAGENT_HOST's value for a process that serves
// every host of the inventory (the scheduler's host records), adding a
// host's agent as the host appears there: what a concentrator serving a
// vCenter's hosts runs (FollowHosts). It needs the concentrator, where the
// channels of every host arrive.
const EveryHost = "*"

// ServesEveryHost reports whether src sets PODVISOR_HOSTAGENT_HOST to
// EveryHost.
func ServesEveryHost(src config.Source) bool {
	hosts, _ := src(EnvHost)
	return strings.TrimSpace(hosts) == EveryHost
}

// ConfigFor is the configuration of host's agent in a process that serves
// every host: DefaultConfig with the host and src's channel directory.
func ConfigFor(src config.Source, host string) (Config, error) {
	dir, _ := src(EnvChannelDir)
	cfg := DefaultConfig()
	cfg.Host, cfg.ChannelDir, cfg.SharedDeletes = host, strings.TrimSpace(dir), true
	return cfg, cfg.Validate()
}

// ConfigsFrom reads PODVISOR_HOSTAGENT_HOST (one host, or a comma-separated
// list) and PODVISOR_HOSTAGENT_CHANNEL_DIR from src: one validated Config per
// host, each DefaultConfig with its Host and the shared ChannelDir.
func ConfigsFrom(src config.Source) ([]Config, error) {
	hosts, _ := src(EnvHost)
	dir, _ := src(EnvChannelDir)
	var out []Config
	seen := map[string]bool{}
	for _, h := range strings.Split(hosts, ",") {
		h = strings.TrimSpace(h)
		if h == "" && strings.TrimSpace(hosts) != "" {
			return nil, fmt.Errorf("hostagent config: %s %q: an empty host name in the list", EnvHost, hosts)
		}
		if seen[h] {
			return nil, fmt.Errorf("hostagent config: %s %q: host %s listed twice", EnvHost, hosts, h)
		}
		seen[h] = true
		cfg := DefaultConfig()
		cfg.Host, cfg.ChannelDir = h, strings.TrimSpace(dir)
		if err := cfg.Validate(); err != nil {
			return nil, err
		}
		out = append(out, cfg)
	}
	return out, nil
}

// Validate reports every problem, each naming its field.
func (c Config) Validate() error {
	var p config.Checks
	switch {
	case c.Host == "":
		p.Add(fmt.Errorf("Host: required (the host this agent serves; %s)", EnvHost))
	case strings.ContainsAny(c.Host, " /*>\t"):
		p.Add(fmt.Errorf("Host %q: must not contain spaces, '/', '*' or '>'", c.Host))
	}
	if c.ChannelDir == "" {
		p.Add(fmt.Errorf("ChannelDir: required (where guest channels arrive; %s)", EnvChannelDir))
	}
	p.Must(c.StopSlack > 0, "StopSlack", c.StopSlack, "be positive")
	p.Must(c.HelloTimeout > 0, "HelloTimeout", c.HelloTimeout, "be positive")
	p.Must(c.WriteTimeout > 0, "WriteTimeout", c.WriteTimeout, "be positive")
	if c.NetworkResync <= 0 || c.NetworkRetry <= 0 {
		p.Add(fmt.Errorf("NetworkResync %s, NetworkRetry %s: must be positive", c.NetworkResync, c.NetworkRetry))
	}
	p.Must(c.ReportHold >= 0, "ReportHold", c.ReportHold, "not be negative")
	p.Must(c.Workers >= 1, "Workers", c.Workers, "be at least 1")
	if err := p.Err(); err != nil {
		return fmt.Errorf("hostagent config: %w", err)
	}
	return nil
}
