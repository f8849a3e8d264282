package imagecache

import (
	"cmp"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/podvisor/podvisor/services/imagecache/oci"
	"github.com/podvisor/podvisor/shared/config"
)

// Config tunes the image cache. The zero value is valid: Validate fills the
// defaults (call it, or let New do it).
type Config struct {
	// Workers is how many pods are prepared at once (default 8). Pods of the
	// same image share one pull whatever the number.
	Workers int
	// Datastores restricts image disks to these datastores, in order of
	// preference. Empty means every datastore, preferring those mounted on
	// the most hosts (a shared datastore serves a pod wherever it lands).
	Datastores []string
	// InsecureRegistries are spoken to in plain HTTP; every other registry
	// in HTTPS with its certificate verified (a loopback registry that
	// does not speak TLS at all is the one exception: a development
	// registry on this machine).
	InsecureRegistries []string
	// RegistryCAFile is a PEM bundle of CAs trusted beside the system's
	// roots for registry certificates (a private registry's CA; `podvisor
	// up` sets its own).
	RegistryCAFile string
	// LeaseTTL is how long a pull lease lives without renewal (default 30s):
	// how long a crashed replica's pull blocks others.
	LeaseTTL time.Duration
	// PrepareTimeout bounds preparing one pod's images (default 10m).
	PrepareTimeout time.Duration
	// ReserveBytes is free space left untouched on every datastore (default
	// 1 GiB); a pull that would eat into it fails with DatastoreFull.
	ReserveBytes int64
	// GCBudgetBytes is how much image data a datastore may hold before the
	// garbage collector evicts unreferenced chains (default 20 GiB).
	GCBudgetBytes int64
	// GCGrace is how long a chain must be unreferenced before eviction
	// (default 10m): a pod being deployed right now is not robbed.
	GCGrace time.Duration
	// GCInterval is how often the collector runs (default 1m).
	GCInterval time.Duration
	// CheckInterval is how often the service checks that Redis still holds
	// its metadata and rebuilds it from the datastores if not (default 15s).
	CheckInterval time.Duration
	// MaxDeliver is how many times a pod event is tried before a transient
	// failure (registry unreachable) becomes pod.images.failed (default 8).
	MaxDeliver int
	// ResolveTTL is how long a tag's resolution (tag → manifest) is reused
	// before the registry is asked again (default 10s; negative: ask for
	// every pod). A burst of pods of one image then costs one registry
	// request, not one per pod; a tag moved in the registry is seen within
	// the TTL.
	ResolveTTL time.Duration
	// RegistryAuthFile is a docker config file (config.json) with the
	// credentials of private registries.
	RegistryAuthFile string
	// RedirectHosts are the hosts registries may redirect to (blob stores,
	// CDNs; "*" for any). Redirects within a registry's host always work.
	RedirectHosts []string
	// Platform selects the image of an index (default linux/amd64).
	Platform string
	// Limits cap manifests, layer counts, layer sizes and compression
	// ratios (zero fields: oci's defaults).
	Limits oci.Limits
	// MaxLayerEntries caps the tar entries of one layer (default 1,000,000).
	MaxLayerEntries int
	// StagingDir holds layers while they become filesystem images (default
	// the system's temporary directory). It needs room for the largest layer
	// uncompressed: once for uncompressed disks (the image is written
	// there straight from the stream), twice for compressed ones (staged
	// tree, then the image).
	StagingDir string
	// DiskCompression compresses the data of the image disks' filesystems:
	// "none" (default), "lz4" or "lz4hc".
	DiskCompression string
	// BackOff is the delay before each redelivery (the last entry repeats;
	// default 1s 2s 5s 10s 30s): with the defaults a registry may be away
	// for about two minutes before pods fail.
	BackOff []time.Duration
}

// Defaults.
const (
	DefaultWorkers        = 8
	DefaultLeaseTTL       = 30 * time.Second
	DefaultPrepareTimeout = 10 * time.Minute
	DefaultReserveBytes   = 1 << 30
	DefaultGCBudgetBytes  = 20 << 30
	DefaultGCGrace        = 10 * time.Minute
	DefaultGCInterval     = time.Minute
	DefaultCheckInterval  = 15 * time.Second
	DefaultMaxDeliver     = 8
	DefaultResolveTTL     = 10 * time.Second
)

func (c Config) withDefaults() Config {
	c.Workers = cmp.Or(c.Workers, DefaultWorkers)
	c.LeaseTTL = cmp.Or(c.LeaseTTL, DefaultLeaseTTL)
	c.PrepareTimeout = cmp.Or(c.PrepareTimeout, DefaultPrepareTimeout)
	c.ReserveBytes = cmp.Or(c.ReserveBytes, DefaultReserveBytes)
	c.GCBudgetBytes = cmp.Or(c.GCBudgetBytes, DefaultGCBudgetBytes)
	c.GCGrace = cmp.Or(c.GCGrace, DefaultGCGrace)
	c.GCInterval = cmp.Or(c.GCInterval, DefaultGCInterval)
	c.CheckInterval = cmp.Or(c.CheckInterval, DefaultCheckInterval)
	c.MaxDeliver = cmp.Or(c.MaxDeliver, DefaultMaxDeliver)
	c.ResolveTTL = cmp.Or(c.ResolveTTL, DefaultResolveTTL)
	if c.DiskCompression == "none" {
		c.DiskCompression = ""
	}
	if c.BackOff == nil {
		c.BackOff = []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second}
	}
	return c
}

// Validate reports every invalid field (after defaults), each naming the
// field and the reason.
func (c Config) Validate() error {
	c = c.withDefaults()
	var p config.Checks
	p.Must(1 <= c.Workers && c.Workers <= 256, "Workers", c.Workers, "be between 1 and 256")
	seen := map[string]bool{}
	for i, ds := range c.Datastores {
		field := fmt.Sprintf("Datastores[%d]", i)
		p.Must(strings.TrimSpace(ds) != "", field, ds, "name a datastore")
		p.Must(!strings.ContainsAny(ds, "[]@\n"), field, ds, "not contain '[', ']', '@' or newlines")
		p.Must(ds == "" || !seen[ds], field, ds, "not be listed twice")
		seen[ds] = true
	}
	p.Must(c.LeaseTTL >= 100*time.Millisecond, "LeaseTTL", c.LeaseTTL, "be at least 100ms")
	p.Must(c.PrepareTimeout >= time.Second, "PrepareTimeout", c.PrepareTimeout, "be at least 1s")
	p.Must(c.ReserveBytes >= 0, "ReserveBytes", c.ReserveBytes, "not be negative")
	p.Must(c.GCBudgetBytes >= 0, "GCBudgetBytes", c.GCBudgetBytes, "not be negative")
	p.Must(c.GCGrace >= 0, "GCGrace", c.GCGrace, "not be negative")
	p.Must(c.GCInterval >= 10*time.Millisecond, "GCInterval", c.GCInterval, "be at least 10ms")
	p.Must(c.CheckInterval >= 10*time.Millisecond, "CheckInterval", c.CheckInterval, "be at least 10ms")
	p.Must(c.MaxDeliver >= 2, "MaxDeliver", c.MaxDeliver, "be at least 2 (a transient failure needs a second try)")
	p.Must(len(c.BackOff) < c.MaxDeliver, "MaxDeliver", c.MaxDeliver, fmt.Sprintf("exceed the %d BackOff delays", len(c.BackOff)))
	for i, d := range c.BackOff {
		p.Must(d > 0, fmt.Sprintf("BackOff[%d]", i), d, "be positive")
	}
	p.Must(c.DiskCompression == "" || c.DiskCompression == "lz4" || c.DiskCompression == "lz4hc", "DiskCompression", c.DiskCompression, "be none, lz4 or lz4hc")
	if l := c.Limits; l.MaxLayers < 0 || l.MaxRatio < 0 || l.MaxManifestBytes < 0 || l.MaxLayerBytes < 0 || l.MaxUncompressedBytes < 0 || c.MaxLayerEntries < 0 {
		p.Add(errors.New("Limits: caps must not be negative"))
	}
	if err := p.Err(); err != nil {
		return fmt.Errorf("imagecache config: %w", err)
	}
	return nil
}

// ConfigFromEnv reads the configuration from the environment:
//
//	PODVISOR_IMAGECACHE_WORKERS     Workers
//	PODVISOR_IMAGE_DATASTORES       Datastores, comma-separated
//	PODVISOR_INSECURE_REGISTRIES    InsecureRegistries, comma-separated host[:port]
//	PODVISOR_IMAGE_LEASE_TTL        LeaseTTL (Go duration)
//	PODVISOR_IMAGE_RESERVE          ReserveBytes (bytes, or with Ki/Mi/Gi/Ti)
//	PODVISOR_IMAGE_GC_BUDGET        GCBudgetBytes (bytes, or with Ki/Mi/Gi/Ti)
//	PODVISOR_IMAGE_GC_GRACE         GCGrace (Go duration)
//	PODVISOR_IMAGE_GC_INTERVAL      GCInterval (Go duration)
//	PODVISOR_IMAGE_RESOLVE_TTL      ResolveTTL (Go duration; negative: never reuse)
//	PODVISOR_REGISTRY_AUTH_FILE     RegistryAuthFile (a docker config.json)
//	PODVISOR_REGISTRY_CA            RegistryCAFile (PEM CA bundle)
//	PODVISOR_REGISTRY_REDIRECT_HOSTS RedirectHosts, comma-separated ("*": any)
//	PODVISOR_IMAGE_PLATFORM         Platform (os/arch[/variant])
//	PODVISOR_IMAGE_MAX_MANIFEST     Limits.MaxManifestBytes (bytes, or with Ki/Mi/Gi/Ti)
//	PODVISOR_IMAGE_MAX_LAYERS       Limits.MaxLayers
//	PODVISOR_IMAGE_MAX_LAYER_SIZE   Limits.MaxLayerBytes (compressed)
//	PODVISOR_IMAGE_MAX_UNCOMPRESSED Limits.MaxUncompressedBytes (per layer)
//	PODVISOR_IMAGE_MAX_RATIO        Limits.MaxRatio
//	PODVISOR_IMAGE_MAX_ENTRIES      MaxLayerEntries
//	PODVISOR_IMAGE_STAGING_DIR      StagingDir
//	PODVISOR_IMAGE_DISK_COMPRESSION DiskCompression (none, lz4, lz4hc)
//
// Unset variables keep the defaults; the result is validated.
func ConfigFromEnv() (Config, error) { return ConfigFrom(config.Env()) }

// ConfigFrom is ConfigFromEnv over any source of settings.
func ConfigFrom(src config.Source) (Config, error) {
	c, err := config.Load(src, Config{}, func(r *config.Reader, c *Config) {
		r.Int("PODVISOR_IMAGECACHE_WORKERS", &c.Workers)
		r.List("PODVISOR_IMAGE_DATASTORES", &c.Datastores)
		r.List("PODVISOR_INSECURE_REGISTRIES", &c.InsecureRegistries)
		r.Duration("PODVISOR_IMAGE_LEASE_TTL", &c.LeaseTTL)
		r.Bytes("PODVISOR_IMAGE_RESERVE", &c.ReserveBytes)
		r.Bytes("PODVISOR_IMAGE_GC_BUDGET", &c.GCBudgetBytes)
		r.Duration("PODVISOR_IMAGE_GC_GRACE", &c.GCGrace)
		r.Duration("PODVISOR_IMAGE_GC_INTERVAL", &c.GCInterval)
		r.Duration("PODVISOR_IMAGE_RESOLVE_TTL", &c.ResolveTTL)
		r.String("PODVISOR_REGISTRY_AUTH_FILE", &c.RegistryAuthFile)
		r.String("PODVISOR_REGISTRY_CA", &c.RegistryCAFile)
		r.List("PODVISOR_REGISTRY_REDIRECT_HOSTS", &c.RedirectHosts)
		r.String("PODVISOR_IMAGE_PLATFORM", &c.Platform)
		r.Bytes("PODVISOR_IMAGE_MAX_MANIFEST", &c.Limits.MaxManifestBytes)
		r.Int("PODVISOR_IMAGE_MAX_LAYERS", &c.Limits.MaxLayers)
		r.Bytes("PODVISOR_IMAGE_MAX_LAYER_SIZE", &c.Limits.MaxLayerBytes)
		r.Bytes("PODVISOR_IMAGE_MAX_UNCOMPRESSED", &c.Limits.MaxUncompressedBytes)
		r.Int("PODVISOR_IMAGE_MAX_RATIO", &c.Limits.MaxRatio)
		r.Int("PODVISOR_IMAGE_MAX_ENTRIES", &c.MaxLayerEntries)
		r.String("PODVISOR_IMAGE_STAGING_DIR", &c.StagingDir)
		r.String("PODVISOR_IMAGE_DISK_COMPRESSION", &c.DiskCompression)
	})
	// The zero Config stands for the defaults (see Validate), filled here
	// so that callers see the values in force.
	return c.withDefaults(), err
}
