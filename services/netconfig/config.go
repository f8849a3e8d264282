package netconfig

import (
	"fmt"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/config"
)

// Config tunes the network-config service. The zero value is not valid;
// start from DefaultConfig or ConfigFromEnv.
type Config struct {
	// PushParallelism bounds how many hosts a network version is pushed to
	// at once (PODVISOR_NETCONFIG_PUSH_PARALLELISM, default 8).
	PushParallelism int
	// ProbeWindow is how long after a change the management connectivity of
	// the changed hosts is watched before the version counts as good
	// (PODVISOR_NETCONFIG_PROBE_WINDOW, default 5s). vSphere's own DVS
	// rollback waits 30 s on a host; a few seconds suffices for vCenter to
	// notice a host it can no longer reach.
	ProbeWindow time.Duration
	// ProbeInterval is how often the probe reads connection states within
	// the window (default 100ms).
	ProbeInterval time.Duration
	// HistoryLimit is how many versions of a network are kept for restore
	// (default events.NetworkHistoryLimit).
	HistoryLimit int
	// Workers is the number of events handled at once per stream (default 8).
	Workers int
	// AttachWorkers is the number of pod events (pod.scheduled: attaches)
	// handled at once (PODVISOR_NETCONFIG_ATTACH_WORKERS, default 64). An
	// attach spends nearly all its time waiting for KV round trips, each
	// write synced to disk by the server, and almost none on CPU (0.08 s of
	// 5.2 s of a 300-pod bench's profile): with 8 at once, attaches ran at
	// 77-107 pods/s whatever the CPU left, the pipeline's slowest stage.
	// Attaches of one network proceed in parallel (a shared lock; an
	// address is a KV Create; the fence write is shared by the allocations
	// in flight), so more at once means more per fence write, not contention.
	AttachWorkers int
	// MaxDeliver and BackOff bound the retries of one event (0 and nil:
	// the bus defaults); when they run out, a failed attach ends in
	// pod.network.failed.
	MaxDeliver int
	BackOff    []time.Duration
	// AckWait is the consumers' ack wait (default 60s; handlers that push to
	// many hosts report progress).
	AckWait time.Duration
	// ResyncInterval is how often every network is re-pushed to repair drift
	// (hosts that left a switch, port groups edited by hand)
	// (PODVISOR_NETCONFIG_RESYNC_INTERVAL, default 5m; 0 disables).
	ResyncInterval time.Duration
	// AllHostsSwitch is the distributed switch that carries networks scoped
	// to every host (PODVISOR_NETCONFIG_SWITCH, default pv-dvs, the switch
	// `podvisor up` creates with every host as a member). Networks with a
	// narrower scope get a switch of their own scope, pv-dvs-<hash>.
	AllHostsSwitch string
	// SwitchMTU is the maximum MTU given to switches network-config creates;
	// a network with a larger MTU raises it (default 1500).
	SwitchMTU int
	// ManagementInterval is how often the hosts' management ports are read
	// to learn their last good configuration and repair a host cut off by
	// its own port (mgmtrepair.go) (PODVISOR_NETCONFIG_MANAGEMENT_INTERVAL,
	// default 5s; 0 disables).
	ManagementInterval time.Duration
	// OrphanSweepInterval is how often the addresses whose owner (pod, VM
	// or network service) is gone are looked for; one missing in two
	// sweeps this far apart is released (orphans.go)
	// (PODVISOR_NETCONFIG_ORPHAN_SWEEP_INTERVAL, default 1m; 0 disables).
	OrphanSweepInterval time.Duration
}

// DefaultConfig returns the defaults described on Config.
func DefaultConfig() Config {
	return Config{
		PushParallelism: 8,
		ProbeWindow:     5 * time.Second,
		ProbeInterval:   100 * time.Millisecond,
		HistoryLimit:    events.NetworkHistoryLimit,
		Workers:         8,
		AttachWorkers:   64,
		AckWait:         60 * time.Second,
		ResyncInterval:  5 * time.Minute,
		AllHostsSwitch:  "pv-dvs",
		SwitchMTU:       events.DefaultMTU,

		ManagementInterval:  5 * time.Second,
		OrphanSweepInterval: time.Minute,
	}
}

// ConfigFromEnv is ConfigFrom the process environment.
func ConfigFromEnv() (Config, error) { return ConfigFrom(config.Env()) }

// ConfigFrom reads the PODVISOR_NETCONFIG_* settings of src over the
// defaults.
func ConfigFrom(src config.Source) (Config, error) {
	return config.Load(src, DefaultConfig(), func(r *config.Reader, c *Config) {
		r.Int("PODVISOR_NETCONFIG_PUSH_PARALLELISM", &c.PushParallelism)
		r.Duration("PODVISOR_NETCONFIG_PROBE_WINDOW", &c.ProbeWindow)
		r.Int("PODVISOR_NETCONFIG_ATTACH_WORKERS", &c.AttachWorkers)
		r.Duration("PODVISOR_NETCONFIG_RESYNC_INTERVAL", &c.ResyncInterval)
		r.String("PODVISOR_NETCONFIG_SWITCH", &c.AllHostsSwitch)
		r.Duration("PODVISOR_NETCONFIG_MANAGEMENT_INTERVAL", &c.ManagementInterval)
		r.Duration("PODVISOR_NETCONFIG_ORPHAN_SWEEP_INTERVAL", &c.OrphanSweepInterval)
	})
}

// Validate checks every field and names each one that is wrong.
func (c Config) Validate() error {
	var p config.Checks
	p.Must(1 <= c.PushParallelism && c.PushParallelism <= 256, "PushParallelism", c.PushParallelism, "be between 1 and 256")
	p.Must(c.ProbeWindow >= 0, "ProbeWindow", c.ProbeWindow, "not be negative")
	p.Must(c.ProbeInterval > 0, "ProbeInterval", c.ProbeInterval, "be positive")
	p.Must(c.HistoryLimit >= 2, "HistoryLimit", c.HistoryLimit, "be at least 2 so a rollback target survives")
	p.Must(c.Workers >= 1, "Workers", c.Workers, "be at least 1")
	p.Must(1 <= c.AttachWorkers && c.AttachWorkers <= 1024, "AttachWorkers", c.AttachWorkers, "be between 1 and 1024")
	p.Must(c.AckWait >= time.Second, "AckWait", c.AckWait, "be at least 1s")
	p.Must(c.ResyncInterval >= 0, "ResyncInterval", c.ResyncInterval, "not be negative (0 disables)")
	p.Must(c.ManagementInterval >= 0, "ManagementInterval", c.ManagementInterval, "not be negative (0 disables)")
	p.Must(c.OrphanSweepInterval >= 0, "OrphanSweepInterval", c.OrphanSweepInterval, "not be negative (0 disables)")
	p.Required(c.AllHostsSwitch != "", "AllHostsSwitch", "the switch of networks scoped to every host")
	p.Must(events.MinMTU <= c.SwitchMTU && c.SwitchMTU <= events.MaxMTU, "SwitchMTU", c.SwitchMTU, fmt.Sprintf("be between %d and %d", events.MinMTU, events.MaxMTU))
	return p.Err()
}
