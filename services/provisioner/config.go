package provisioner

import (
	"fmt"
	"strings"
	"time"

	"github.com/podvisor/podvisor/services/provisioner/nativevm"
	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/podvisor/podvisor/shared/config"
)

// Config tunes the provisioner. The zero value is not valid; start from
// DefaultConfig (or ConfigFromEnv) and change what you need.
type Config struct {
	// Workers is how many pods are handled at once (different pods; one pod
	// is always handled by one worker at a time).
	Workers int
	// PodWorkers is how many events of the pods' stream are handled at once
	// (PODVISOR_PROVISIONER_POD_WORKERS, default 64); Workers applies to the
	// other streams (migrations). A pod's handler spends nearly all its
	// time waiting: KV round trips (each write synced to disk by the
	// server) and vSphere tasks (create, power on), so with 8 at once the
	// provisioner moved pods at the rate 8 waits allow, whatever the CPU
	// left, and was the pipeline's queue (docs/bench.md). Pods do not
	// serialise on each other: one pod's events take its own lock, records
	// are compare-and-set per pod, and each create has its own lease.
	PodWorkers int
	// AckWait is how long JetStream waits before it redelivers an event
	// whose handler went silent (a crashed process). Running handlers are
	// kept alive by the bus, so this is not a limit on vSphere tasks.
	AckWait time.Duration
	// MaxAttempts is how many deliveries a transient vSphere failure gets
	// before the pod is declared Failed with the last error as the reason.
	MaxAttempts int
	// BackOff is the delay before each retry (the last entry repeats).
	BackOff []time.Duration
	// StepTimeout bounds one vSphere step (find, create, power on, destroy).
	StepTimeout time.Duration
	// ResyncInterval is the drift-repair period: records are compared with
	// vCenter and orphan VMs, missing VMs and wrong power states repaired.
	// Zero disables the periodic repair (Resync can still be called).
	ResyncInterval time.Duration
	// FolderRoot is the VM folder (below the datacenter's VM folder) that
	// holds one folder per namespace.
	FolderRoot string
	// FolderShards, when above zero, spreads a namespace's VMs over that
	// many sub-folders (<root>/<ns>/shard-N, N from a hash of the uid):
	// vCenter serializes creates into one folder, shards let them overlap.
	FolderShards int
	// Datastore, when set, holds every pod VM's files instead of the
	// datastore of the pod's image disks.
	Datastore string
	// GuestID is the vSphere guest OS identifier of pod VMs.
	GuestID string
	// BootDisk is the datastore path of the pod VM boot image's disk, as
	// `podvisor install` uploads it and prints it ("[DS]
	// podvisor/boot-<digest12>/podvm.vmdk"): every pod VM gets it on SATA
	// 0:0, shared read-only, and boots from it (podvm.Spec.BootDisk).
	// Against a real vCenter a pod VM without it powers on with no
	// operating system; empty is right only for the simulated datacenter,
	// whose guests run the agent without booting. A new boot image is a
	// new path, so templates of the old one are replaced.
	BootDisk string
	// EphemeralDiskMiB is the capacity of each pod VM's disk 0 (thin: the
	// datastore holds only what the containers write).
	EphemeralDiskMiB int64
	// EphemeralTemplate creates each disk 0 as a child of the datastore's
	// pre-formatted ext4 template (built once per datastore and capacity,
	// podvm/ephemeral.go), so that a guest finds it formatted; false
	// creates it blank and the guest's agent formats it (mkfs.ext4 in
	// every pod's start).
	EphemeralTemplate bool
	// GuestTimeout is how long a powered-on pod VM's guest may stay silent
	// (no pod.containers.reported) before drift repair reports it on the
	// pod and power-cycles the VM. Zero disables the repair: what a
	// datacenter without guests needs.
	GuestTimeout time.Duration
	// GuestRepairs is how many power cycles a silent guest gets before its
	// VM is destroyed and created again.
	GuestRepairs int
	// AwaitGuestStop makes a delete wait for the pod's containers to stop
	// before the VM is powered off: until the guest reports every container
	// terminated, or at most terminationGracePeriodSeconds + GuestStopSlack
	// after the delete was requested. Off, the VM is powered off at once:
	// what a datacenter without guests needs.
	AwaitGuestStop bool
	// GuestStopSlack is how long past the grace period a delete waits for a
	// guest that does not report its containers stopped (silent, frozen or
	// absent) before the VM is powered off anyway.
	GuestStopSlack time.Duration
	// KeyFile is the Secret file holding the key-encryption key of pods'
	// encrypted ephemeral disks (package diskkeys). Empty: pods asking for
	// one fail with EncryptionUnavailable.
	KeyFile string
	// ChannelURI, when set, is where pod VMs' agents reach their host
	// side: each pod VM gets a network serial port whose host connects to
	// this address (a host agent's concentrator, tcp://host:port), its
	// agent talks on that port (the guest's second serial port; the first
	// is its console, written to console.log beside the VM's files), and
	// its spec carries the pod's channel token. Pods asking for an
	// encrypted ephemeral disk then fail (EncryptionUnavailable): such a
	// line cannot prove a key request comes from the VM. Empty: the agent
	// reaches its host over vsock, or the simulated hypervisor's socket.
	ChannelURI string
	// ChannelKeyFile is the Secret file of the key channel tokens are made
	// with (the concentrator's key); required with ChannelURI.
	ChannelKeyFile string
	// TemplatesWarm is how many pod VM templates each host keeps warm for
	// forking pod VMs (InstantClone, package templates); 0, the default,
	// creates every pod VM.
	TemplatesWarm int
	// TemplateAgent identifies the pod VM agent build; templates of
	// another agent are replaced. Unset, pod VMs that boot the image
	// (BootDisk) take the boot disk's path, which names the image's
	// digest: a new image is a new agent.
	TemplateAgent string
	// ForkEarly forks a pod VM as soon as its pod is placed and its images
	// are ready, before its network is attached, when its shape has a
	// template ready (forkearly.go); off, a pod VM is forked (or created)
	// once the network is attached. Default off: idle, on the simulated
	// datacenter, it measured slower than forking after the network
	// (docs/bench.md) and one fork in a bench of six never ran; it matters
	// only with TemplatesWarm.
	ForkEarly bool
	// NativeVM configures the native VM controller (its defaults apply to
	// the zero value).
	NativeVM nativevm.Config
}

// DefaultConfig returns the defaults: 8 workers (64 for the pods' stream), 8 attempts with backoff
// from 1 s to 30 s, 5-minute steps, a resync every minute, folder podvisor.
func DefaultConfig() Config {
	return Config{
		Workers:        8,
		PodWorkers:     64,
		AckWait:        30 * time.Second,
		MaxAttempts:    8,
		BackOff:        []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second},
		StepTimeout:    5 * time.Minute,
		ResyncInterval: time.Minute,
		FolderRoot:     "podvisor",
		GuestID:        "otherLinux64Guest",
		// 8 GiB like a small node's ephemeral storage.
		EphemeralDiskMiB:  8 << 10,
		EphemeralTemplate: true,
		GuestTimeout:      0,
		GuestRepairs:      2,
		AwaitGuestStop:    true,
		GuestStopSlack:    10 * time.Second,
		ForkEarly:         false,
	}
}

// Environment variables read by ConfigFromEnv.
const (
	EnvWorkers        = "PODVISOR_PROVISIONER_WORKERS"
	EnvPodWorkers     = "PODVISOR_PROVISIONER_POD_WORKERS"
	EnvMaxAttempts    = "PODVISOR_PROVISIONER_MAX_ATTEMPTS"
	EnvStepTimeout    = "PODVISOR_PROVISIONER_STEP_TIMEOUT"
	EnvResyncInterval = "PODVISOR_PROVISIONER_RESYNC_INTERVAL"
	EnvFolderRoot     = "PODVISOR_PROVISIONER_FOLDER"
	EnvFolderShards   = "PODVISOR_PROVISIONER_FOLDER_SHARDS"
	EnvDatastore      = "PODVISOR_PROVISIONER_DATASTORE"
	EnvBootDisk       = "PODVISOR_PROVISIONER_BOOT_DISK"
	EnvEphemeralDisk  = "PODVISOR_PROVISIONER_EPHEMERAL_DISK_MIB"
	EnvEphemeralTmpl  = "PODVISOR_PROVISIONER_EPHEMERAL_TEMPLATE"
	EnvGuestTimeout   = "PODVISOR_PROVISIONER_GUEST_TIMEOUT"
	EnvGuestRepairs   = "PODVISOR_PROVISIONER_GUEST_REPAIRS"
	EnvAwaitGuestStop = "PODVISOR_PROVISIONER_AWAIT_GUEST_STOP"
	EnvGuestStopSlack = "PODVISOR_PROVISIONER_GUEST_STOP_SLACK"
	EnvKeyFile        = "PODVISOR_PROVISIONER_KEY_FILE"
	EnvTemplatesWarm  = "PODVISOR_PROVISIONER_TEMPLATES_WARM"
	EnvTemplateAgent  = "PODVISOR_PROVISIONER_TEMPLATE_AGENT"
	EnvForkEarly      = "PODVISOR_PROVISIONER_FORK_EARLY"
	EnvChannelURI     = "PODVISOR_PROVISIONER_CHANNEL_URI"
	EnvChannelKeyFile = "PODVISOR_PROVISIONER_CHANNEL_KEY_FILE"
)

// ConfigFromEnv is ConfigFrom the process environment.
func ConfigFromEnv() (Config, error) { return ConfigFrom(config.Env()) }

// ConfigFrom returns DefaultConfig with the PODVISOR_PROVISIONER_* settings
// of src applied, and the configuration validated.
func ConfigFrom(src config.Source) (Config, error) {
	cfg, err := config.Load(src, DefaultConfig(), func(r *config.Reader, c *Config) {
		r.Int(EnvWorkers, &c.Workers)
		r.Int(EnvPodWorkers, &c.PodWorkers)
		r.Int(EnvMaxAttempts, &c.MaxAttempts)
		r.Int(EnvFolderShards, &c.FolderShards)
		r.Int(EnvGuestRepairs, &c.GuestRepairs)
		r.Int(EnvTemplatesWarm, &c.TemplatesWarm)
		r.Int64(EnvEphemeralDisk, &c.EphemeralDiskMiB)
		r.Bool(EnvEphemeralTmpl, &c.EphemeralTemplate)
		r.Duration(EnvGuestTimeout, &c.GuestTimeout)
		r.Duration(EnvGuestStopSlack, &c.GuestStopSlack)
		r.Bool(EnvAwaitGuestStop, &c.AwaitGuestStop)
		r.Bool(EnvForkEarly, &c.ForkEarly)
		r.Duration(EnvStepTimeout, &c.StepTimeout)
		r.Duration(EnvResyncInterval, &c.ResyncInterval)
		// Set but empty means "none" for these, unlike the others.
		r.StringOrNone(EnvFolderRoot, &c.FolderRoot)
		r.StringOrNone(EnvDatastore, &c.Datastore)
		r.StringOrNone(EnvBootDisk, &c.BootDisk)
		r.StringOrNone(EnvTemplateAgent, &c.TemplateAgent)
		r.StringOrNone(EnvKeyFile, &c.KeyFile)
		r.StringOrNone(EnvChannelURI, &c.ChannelURI)
		r.StringOrNone(EnvChannelKeyFile, &c.ChannelKeyFile)
		// The registry settings the image cache reads too: native VM images
		// come from the same registries.
		r.List("PODVISOR_INSECURE_REGISTRIES", &c.NativeVM.InsecureRegistries)
		r.String("PODVISOR_REGISTRY_CA", &c.NativeVM.RegistryCAFile)
	})
	if err != nil {
		return cfg, fmt.Errorf("provisioner config: %w", err)
	}
	return cfg, nil
}

// templateAgent is the agent identity templates are keyed by
// (TemplateAgent, else the boot image's path).
func (c Config) templateAgent() string {
	if c.TemplateAgent == "" {
		return c.BootDisk
	}
	return c.TemplateAgent
}

// Validate reports every problem, each naming its field.
func (c Config) Validate() error {
	var p config.Checks
	p.Must(c.Workers >= 1, "Workers", c.Workers, "be at least 1")
	p.Must(1 <= c.PodWorkers && c.PodWorkers <= 1024, "PodWorkers", c.PodWorkers, "be between 1 and 1024")
	p.Must(c.AckWait >= 30*time.Millisecond, "AckWait", c.AckWait, "be at least 30ms")
	p.Must(c.MaxAttempts >= 1, "MaxAttempts", c.MaxAttempts, "be at least 1")
	if c.MaxAttempts > 0 && len(c.BackOff) >= c.MaxAttempts {
		p.Add(fmt.Errorf("BackOff: %d entries, must be fewer than MaxAttempts (%d)", len(c.BackOff), c.MaxAttempts))
	}
	for i, d := range c.BackOff {
		if d <= 0 {
			p.Add(fmt.Errorf("BackOff[%d] %s: must be positive", i, d))
		}
	}
	p.Must(c.StepTimeout > 0, "StepTimeout", c.StepTimeout, "be positive")
	p.Must(c.ResyncInterval >= 0, "ResyncInterval", c.ResyncInterval, "not be negative (0 disables drift repair)")
	root := strings.Trim(c.FolderRoot, "/")
	p.Required(root != "", "FolderRoot", "the VM folder that holds pod VMs, such as podvisor")
	if strings.ContainsAny(c.FolderRoot, "*?\\") {
		p.Add(fmt.Errorf("FolderRoot %q: must not contain wildcards or backslashes", c.FolderRoot))
	}
	p.Must(0 <= c.FolderShards && c.FolderShards <= 1024, "FolderShards", c.FolderShards, "be between 0 (no shards) and 1024")
	if strings.ContainsAny(c.Datastore, "[]") {
		p.Add(fmt.Errorf("Datastore %q: a datastore name, without brackets", c.Datastore))
	}
	if c.BootDisk != "" {
		if _, err := podvm.ParseBootDisk(c.BootDisk); err != nil {
			p.Add(fmt.Errorf("BootDisk: %w (podvisor install prints the path of the image it uploads)", err))
		}
	}
	p.Must(c.EphemeralDiskMiB >= 64, "EphemeralDiskMiB", c.EphemeralDiskMiB, "be at least 64 (disk 0 holds every container's writes and logs)")
	p.Must(c.GuestTimeout >= 0, "GuestTimeout", c.GuestTimeout, "not be negative (0 disables the repair of silent guests)")
	p.Must(c.GuestStopSlack >= 0, "GuestStopSlack", c.GuestStopSlack, "not be negative")
	p.Must(0 <= c.TemplatesWarm && c.TemplatesWarm <= 64, "TemplatesWarm", c.TemplatesWarm, "be between 0 (no forking) and 64 templates per host")
	if c.ChannelURI != "" {
		if err := podvm.ParseChannelURI(c.ChannelURI); err != nil {
			p.Add(fmt.Errorf("ChannelURI: %w", err))
		}
		if c.ChannelKeyFile == "" {
			p.Add(fmt.Errorf("ChannelKeyFile: required with ChannelURI (%s: the key the concentrator checks channel tokens with)", EnvChannelKeyFile))
		}
	}
	p.Must(c.GuestRepairs >= 0, "GuestRepairs", c.GuestRepairs, "not be negative")
	p.Required(strings.TrimSpace(c.GuestID) != "", "GuestID", "for example otherLinux64Guest")
	return p.Err()
}
