package guestcluster

import (
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/podvisor/podvisor/shared/config"
)

// Config tunes the guest cluster controller.
type Config struct {
	// Dir holds one directory per guest cluster control plane
	// (PODVISOR_GUESTCLUSTER_DIR; `podvisor up` sets <state>/guestclusters).
	Dir string
	// Binary is the podvisor-guest program (PODVISOR_GUESTCLUSTER_BINARY;
	// default: podvisor-guest beside this executable, else on PATH).
	Binary string
	// NATSURL and NATSCA are how a guest cluster's node reaches NATS
	// (PODVISOR_GUESTCLUSTER_NATS_URL and _NATS_CA; default
	// PODVISOR_NATS_URL and PODVISOR_NATS_CA).
	NATSURL, NATSCA string
	// Authority is the NATS authority directory that signs the guest
	// clusters' identities (PODVISOR_GUESTCLUSTER_AUTHORITY; `podvisor up`
	// sets <state>/nats-auth). Without it guest clusters are refused.
	Authority string
	// ReadyTimeout bounds a control plane's start (default 3m).
	ReadyTimeout time.Duration
	// DeleteTimeout bounds the wait for a deleted guest cluster's pods to
	// go (default 3m; the delivery is retried after it).
	DeleteTimeout time.Duration
	// ResyncInterval is how often every Ready guest cluster's control plane
	// is checked and restarted when it is gone (default 30s; 0 disables).
	ResyncInterval time.Duration
	// Workers is how many events are handled at once (default 4).
	Workers int
	// AckWait is the consumers' ack wait (default 60s; long handlers are
	// kept alive by the bus).
	AckWait time.Duration
}

// DefaultConfig returns the defaults described on Config.
func DefaultConfig() Config {
	return Config{
		Binary:         defaultBinary(),
		ReadyTimeout:   3 * time.Minute,
		DeleteTimeout:  3 * time.Minute,
		ResyncInterval: 30 * time.Second,
		Workers:        4,
		AckWait:        60 * time.Second,
	}
}

func defaultBinary() string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "podvisor-guest")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "podvisor-guest"
}

// ConfigFrom reads the PODVISOR_GUESTCLUSTER_* settings of src over the
// defaults.
func ConfigFrom(src config.Source) (Config, error) {
	return config.Load(src, DefaultConfig(), func(r *config.Reader, c *Config) {
		r.String("PODVISOR_NATS_URL", &c.NATSURL)
		r.String("PODVISOR_NATS_CA", &c.NATSCA)
		r.String("PODVISOR_GUESTCLUSTER_DIR", &c.Dir)
		r.String("PODVISOR_GUESTCLUSTER_BINARY", &c.Binary)
		r.String("PODVISOR_GUESTCLUSTER_NATS_URL", &c.NATSURL)
		r.String("PODVISOR_GUESTCLUSTER_NATS_CA", &c.NATSCA)
		r.String("PODVISOR_GUESTCLUSTER_AUTHORITY", &c.Authority)
		r.Duration("PODVISOR_GUESTCLUSTER_READY_TIMEOUT", &c.ReadyTimeout)
		r.Duration("PODVISOR_GUESTCLUSTER_RESYNC_INTERVAL", &c.ResyncInterval)
	})
}

// Validate checks every field and names each one that is wrong. Dir,
// NATSURL and Authority may be empty: guest clusters are then refused
// with a reason naming the missing setting, and the rest of podvisor runs.
func (c Config) Validate() error {
	var p config.Checks
	p.Must(c.ReadyTimeout >= time.Second, "ReadyTimeout", c.ReadyTimeout, "be at least 1s")
	p.Must(c.DeleteTimeout >= time.Second, "DeleteTimeout", c.DeleteTimeout, "be at least 1s")
	p.Must(c.ResyncInterval >= 0, "ResyncInterval", c.ResyncInterval, "not be negative (0 disables)")
	p.Must(c.Workers >= 1, "Workers", c.Workers, "be at least 1")
	p.Must(c.AckWait >= time.Second, "AckWait", c.AckWait, "be at least 1s")
	return p.Err()
}

// missing names the settings guest clusters need that are not set.
func (c Config) missing() error {
	var errs []error
	if c.Dir == "" {
		errs = append(errs, errors.New("PODVISOR_GUESTCLUSTER_DIR is not set (where control planes keep their state)"))
	}
	if c.NATSURL == "" {
		errs = append(errs, errors.New("PODVISOR_GUESTCLUSTER_NATS_URL is not set (how a guest cluster's node reaches NATS)"))
	}
	if c.Authority == "" {
		errs = append(errs, errors.New("PODVISOR_GUESTCLUSTER_AUTHORITY is not set (the NATS authority that signs guest cluster identities)"))
	}
	return errors.Join(errs...)
}
