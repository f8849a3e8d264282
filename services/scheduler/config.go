package scheduler

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/services/scheduler/plugins"
	"github.com/podvisor/podvisor/services/scheduler/plugins/datastoreavailable"
	"github.com/podvisor/podvisor/shared/config"
)

// Config is the scheduler's configuration. The zero value is not valid;
// start from DefaultConfig or ConfigFromEnv.
type Config struct {
	// Strategy is "spread" (default: LeastAllocated, headroom on every host)
	// or "binpack" (MostAllocated, fill hosts before opening new ones).
	Strategy string
	// Profile, when set, replaces the default profile of Strategy entirely
	// (plugins, weights, search bound, overcommit).
	Profile *framework.Profile
	// PercentageOfHostsToScore bounds the search (0 = adaptive, 100 =
	// every host); see framework.Profile.
	PercentageOfHostsToScore int
	// CPUOvercommit is the CPU overcommit ratio (1.0 = none). Memory is
	// never overcommitted.
	CPUOvercommit float64
	// MaxPodsPerHost caps pod VMs per host (0 = no cap).
	MaxPodsPerHost int
	// RequiredDatastores are datastores a host must mount to take a pod:
	// on a real vCenter, the datastore of the pod VM boot disk
	// (PODVISOR_PROVISIONER_BOOT_DISK), which every pod VM attaches. It
	// applies to a custom Profile too, which must then run the
	// DatastoreAvailable filter.
	RequiredDatastores []string
	// BatchSize is how many pods one scheduling pass places before their
	// reservations are written (grouped per host).
	BatchSize int
	// Workers is how many pod events are handled at once; it must be large
	// enough to fill batches.
	Workers int
	// ResyncInterval is how often the whole vCenter inventory is read again
	// (a watch can lag or miss updates).
	ResyncInterval time.Duration
	// InventoryPoll, when above zero, replaces the vCenter watch with a
	// full read of the hosts at this interval. A real vCenter serves a
	// property-collector watch incrementally and the watch is the better
	// choice there (the default, 0); the vCenter simulator re-reads every
	// watched host on every change anywhere in its inventory, so under a
	// burst of pod VMs a watch of 64 hosts costs more than everything else
	// together, and `podvisor up` polls it every second instead.
	InventoryPoll time.Duration
	// RetryInitial and RetryMax bound the backoff of an unschedulable pod's
	// retries; relevant changes (pod deleted, host recovered or
	// uncordoned, network ready) retry at once whatever the backoff.
	RetryInitial time.Duration
	RetryMax     time.Duration
	// PendingRescan is how often the unschedulable pods recorded in KV
	// `pods` are read again, to take up those another replica held when
	// it stopped.
	PendingRescan time.Duration
	// HostRecordInterval is how often changed host records (allocation
	// totals) are written to KV `hosts`. The records are for people and
	// tools to read (the ledger is what placement decides on); under a
	// burst every host's totals change between two flushes, so the
	// interval bounds the writes, each a message the server syncs to disk.
	HostRecordInterval time.Duration
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Strategy:           framework.StrategySpread,
		CPUOvercommit:      1.0,
		BatchSize:          256,
		Workers:            512,
		ResyncInterval:     30 * time.Second,
		RetryInitial:       time.Second,
		RetryMax:           time.Minute,
		PendingRescan:      15 * time.Second,
		HostRecordInterval: 2 * time.Second,
	}
}

// Environment variables read by ConfigFromEnv.
const (
	EnvStrategy       = "PODVISOR_SCHEDULER_STRATEGY"
	EnvProfileFile    = "PODVISOR_SCHEDULER_PROFILE_FILE"
	EnvPercentage     = "PODVISOR_SCHEDULER_PERCENTAGE_OF_HOSTS"
	EnvCPUOvercommit  = "PODVISOR_SCHEDULER_CPU_OVERCOMMIT"
	EnvMaxPodsPerHost = "PODVISOR_SCHEDULER_MAX_PODS_PER_HOST"
	EnvBatchSize      = "PODVISOR_SCHEDULER_BATCH_SIZE"
	EnvWorkers        = "PODVISOR_SCHEDULER_WORKERS"
	EnvResync         = "PODVISOR_SCHEDULER_RESYNC_INTERVAL"
	EnvInventoryPoll  = "PODVISOR_SCHEDULER_INVENTORY_POLL"
	EnvRetryInitial   = "PODVISOR_SCHEDULER_RETRY_INITIAL"
	EnvRetryMax       = "PODVISOR_SCHEDULER_RETRY_MAX"
	EnvPendingRescan  = "PODVISOR_SCHEDULER_PENDING_RESCAN"
	// EnvRequiredDatastores is a comma list of datastore names.
	EnvRequiredDatastores = "PODVISOR_SCHEDULER_REQUIRED_DATASTORES"
)

// ConfigFromEnv is ConfigFrom the process environment.
func ConfigFromEnv() (Config, error) { return ConfigFrom(config.Env()) }

// ConfigFrom reads the defaults overridden by src. The profile file is JSON
// in the shape of framework.Profile.
func ConfigFrom(src config.Source) (Config, error) {
	return config.Load(src, DefaultConfig(), func(r *config.Reader, c *Config) {
		r.String(EnvStrategy, &c.Strategy)
		r.Int(EnvPercentage, &c.PercentageOfHostsToScore)
		r.Int(EnvMaxPodsPerHost, &c.MaxPodsPerHost)
		r.Int(EnvBatchSize, &c.BatchSize)
		r.Int(EnvWorkers, &c.Workers)
		r.Duration(EnvResync, &c.ResyncInterval)
		r.Duration(EnvInventoryPoll, &c.InventoryPoll)
		r.Duration(EnvRetryInitial, &c.RetryInitial)
		r.Duration(EnvRetryMax, &c.RetryMax)
		r.Duration(EnvPendingRescan, &c.PendingRescan)
		r.Float(EnvCPUOvercommit, &c.CPUOvercommit)
		r.List(EnvRequiredDatastores, &c.RequiredDatastores)
		r.Parse(EnvProfileFile, func(path string) error {
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			var p framework.Profile
			if err := json.Unmarshal(data, &p); err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			c.Profile = &p
			return nil
		})
	})
}

// Validate reports every problem, each naming its field.
func (c Config) Validate() error {
	var p config.Checks
	p.Must(c.Profile != nil || c.Strategy == framework.StrategySpread || c.Strategy == framework.StrategyBinpack, "Strategy", c.Strategy,
		fmt.Sprintf("be %q or %q", framework.StrategySpread, framework.StrategyBinpack))
	prof := c.profile()
	if err := prof.Validate(plugins.NewRegistry()); err != nil {
		p.Add(fmt.Errorf("Profile: %w", err))
	}
	// The profile's own list counts too: a profile file may name the
	// datastores itself.
	p.Must(len(prof.RequiredDatastores) == 0 || slices.Contains(prof.Filters, datastoreavailable.Name), "RequiredDatastores", prof.RequiredDatastores,
		fmt.Sprintf("be enforced: the profile %s does not run the %s filter", prof.Name, datastoreavailable.Name))
	for _, ds := range prof.RequiredDatastores {
		p.Must(ds != "", "RequiredDatastores", prof.RequiredDatastores, "name no empty datastore")
	}
	p.Must(c.BatchSize >= 1, "BatchSize", c.BatchSize, "be at least 1")
	p.Must(c.Workers >= 1, "Workers", c.Workers, "be at least 1")
	p.Must(c.ResyncInterval >= time.Second, "ResyncInterval", c.ResyncInterval, "be at least 1s")
	p.Must(c.InventoryPoll == 0 || c.InventoryPoll >= 100*time.Millisecond, "InventoryPoll", c.InventoryPoll, "be 0 (watch) or at least 100ms")
	p.Must(c.RetryInitial > 0, "RetryInitial", c.RetryInitial, "be positive")
	p.Must(c.RetryMax >= c.RetryInitial, "RetryMax", c.RetryMax, fmt.Sprintf("be at least RetryInitial %s", c.RetryInitial))
	p.Must(c.PendingRescan >= 100*time.Millisecond, "PendingRescan", c.PendingRescan, "be at least 100ms")
	p.Must(c.HostRecordInterval > 0, "HostRecordInterval", c.HostRecordInterval, "be positive")
	return p.Err()
}

// profile is the effective profile.
func (c Config) profile() framework.Profile {
	if c.Profile != nil {
		p := *c.Profile
		req := slices.Clone(p.RequiredDatastores)
		for _, ds := range c.RequiredDatastores {
			if !slices.Contains(req, ds) {
				req = append(req, ds)
			}
		}
		p.RequiredDatastores = req
		return p
	}
	p := plugins.DefaultProfile(c.Strategy)
	p.PercentageOfHostsToScore = c.PercentageOfHostsToScore
	p.CPUOvercommit = c.CPUOvercommit
	p.MaxPodsPerHost = c.MaxPodsPerHost
	p.RequiredDatastores = slices.Clone(c.RequiredDatastores)
	return p
}
