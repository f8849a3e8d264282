package migration

import (
	"fmt"
	"time"

	"github.com/podvisor/podvisor/shared/config"
	"github.com/podvisor/podvisor/shared/lease"
)

// Config tunes the migration service. DefaultConfig gives the values used
// in production; ConfigFromEnv reads overrides from the environment.
type Config struct {
	// Limits bound the migrations that run at once (default 2 per source
	// host, 5 per cluster); the rest wait in a queue.
	Limits Limits
	// RelocateTimeout bounds one vMotion task; a task still running then is
	// cancelled and the migration fails with reason Timeout.
	RelocateTimeout time.Duration
	// PrecheckTimeout bounds the checks before relocating.
	PrecheckTimeout time.Duration
	// ReservationTimeout bounds how long a request waits for the scheduler
	// to reserve a target; then it fails with reason NoReservation (a
	// reservation that arrives later is released).
	ReservationTimeout time.Duration
	// DrainTimeout bounds one drain, from cordon to maintenance mode.
	DrainTimeout time.Duration
	// DrainRounds is how many passes a drain makes over the host's pods:
	// pods still being provisioned there in one pass move in the next.
	DrainRounds int
	// Workers, AckWait, MaxAttempts and BackOff configure the consumers.
	Workers     int
	AckWait     time.Duration
	MaxAttempts int
	BackOff     []time.Duration
	// SweepInterval is how often timeouts are checked.
	SweepInterval time.Duration
	// RecordRetention is how long the record of a finished migration stays
	// in KV `migrations` (and in `podvisor get migrations`).
	RecordRetention time.Duration
	// LeaseTTL is the lifetime of the leader lease (see Service.Run): a
	// leader that dies without releasing it is replaced after at most this
	// long. Replicas' clocks must differ by much less than this.
	LeaseTTL time.Duration
}

// DefaultConfig returns the production defaults.
func DefaultConfig() Config {
	return Config{
		Limits:             Limits{PerSourceHost: 2, PerCluster: 5},
		RelocateTimeout:    10 * time.Minute,
		PrecheckTimeout:    30 * time.Second,
		ReservationTimeout: 2 * time.Minute,
		DrainTimeout:       30 * time.Minute,
		DrainRounds:        3,
		Workers:            8,
		AckWait:            30 * time.Second,
		MaxAttempts:        10,
		BackOff:            []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second},
		SweepInterval:      5 * time.Second,
		RecordRetention:    24 * time.Hour,
		LeaseTTL:           lease.DefaultTTL,
	}
}

// Environment variables ConfigFromEnv reads.
const (
	EnvMaxPerHost         = "PODVISOR_MIGRATION_MAX_PER_HOST"
	EnvMaxPerCluster      = "PODVISOR_MIGRATION_MAX_PER_CLUSTER"
	EnvRelocateTimeout    = "PODVISOR_MIGRATION_TIMEOUT"
	EnvReservationTimeout = "PODVISOR_MIGRATION_RESERVATION_TIMEOUT"
	EnvDrainTimeout       = "PODVISOR_DRAIN_TIMEOUT"
	EnvWorkers            = "PODVISOR_MIGRATION_WORKERS"
	EnvRecordRetention    = "PODVISOR_MIGRATION_RETENTION"
	EnvLeaseTTL           = "PODVISOR_MIGRATION_LEASE_TTL"
)

// ConfigFromEnv is ConfigFrom the process environment.
func ConfigFromEnv() (Config, error) { return ConfigFrom(config.Env()) }

// ConfigFrom returns DefaultConfig with src's overrides; a value that does
// not parse is an error naming the variable.
func ConfigFrom(src config.Source) (Config, error) {
	return config.Load(src, DefaultConfig(), func(r *config.Reader, c *Config) {
		r.Int(EnvMaxPerHost, &c.Limits.PerSourceHost)
		r.Int(EnvMaxPerCluster, &c.Limits.PerCluster)
		r.Int(EnvWorkers, &c.Workers)
		r.Duration(EnvRelocateTimeout, &c.RelocateTimeout)
		r.Duration(EnvReservationTimeout, &c.ReservationTimeout)
		r.Duration(EnvDrainTimeout, &c.DrainTimeout)
		r.Duration(EnvRecordRetention, &c.RecordRetention)
		r.Duration(EnvLeaseTTL, &c.LeaseTTL)
	})
}

// Validate reports every invalid field, each naming the field and the
// reason.
func (c Config) Validate() error {
	var p config.Checks
	p.Must(c.Limits.PerSourceHost >= 1, "Limits.PerSourceHost", c.Limits.PerSourceHost, "be at least 1")
	p.Must(c.Limits.PerCluster >= 1, "Limits.PerCluster", c.Limits.PerCluster, "be at least 1")
	p.Must(c.Limits.PerCluster <= 0 || c.Limits.PerSourceHost <= c.Limits.PerCluster, "Limits.PerSourceHost", c.Limits.PerSourceHost,
		fmt.Sprintf("not exceed Limits.PerCluster %d, which it can never reach", c.Limits.PerCluster))
	p.Must(c.RelocateTimeout > 0, "RelocateTimeout", c.RelocateTimeout, "be positive")
	p.Must(c.PrecheckTimeout > 0, "PrecheckTimeout", c.PrecheckTimeout, "be positive")
	p.Must(c.ReservationTimeout > 0, "ReservationTimeout", c.ReservationTimeout, "be positive")
	p.Must(c.DrainTimeout > 0, "DrainTimeout", c.DrainTimeout, "be positive")
	p.Must(c.AckWait > 0, "AckWait", c.AckWait, "be positive")
	p.Must(c.SweepInterval > 0, "SweepInterval", c.SweepInterval, "be positive")
	p.Must(c.RecordRetention > 0, "RecordRetention", c.RecordRetention, "be positive")
	// Renewals come every third of the TTL; below a second a renewal round
	// trip or a pause could lose the lease while the leader is healthy.
	p.Must(c.LeaseTTL >= time.Second, "LeaseTTL", c.LeaseTTL, "be at least 1s")
	p.Must(c.DrainRounds >= 1, "DrainRounds", c.DrainRounds, "be at least 1")
	p.Must(c.Workers >= 1, "Workers", c.Workers, "be at least 1")
	p.Must(c.MaxAttempts == -1 || c.MaxAttempts > len(c.BackOff), "MaxAttempts", c.MaxAttempts,
		fmt.Sprintf("exceed the %d BackOff steps (or be -1 for unlimited)", len(c.BackOff)))
	return p.Err()
}
