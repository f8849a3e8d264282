package imagecache

import (
	"cmp"
	"fmt"
	"strings"
	"time"

	"github.com/podvisor/podvisor/services/imagecache/layerfs"
	"github.com/podvisor/podvisor/services/imagecache/oci"
	"github.com/podvisor/podvisor/shared/bytesize"
	"github.com/podvisor/podvisor/shared/config"
)

// Config tunes the image cache. The zero value is valid: Validate fills the
// defaults (call it, or let New do it). A field whose zero stands for its
// default and that may also mean none (ReserveBytes, GCBudgetBytes,
// GCGrace, ResolveTTL) takes a negative value for none; in the
// environment, where unset and 0 differ, 0 says none.
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
	// 1 GiB; negative: none); a pull or a copy that would eat into it fails
	// with DatastoreFull.
	ReserveBytes int64
	// GCBudgetBytes is how much image data a datastore may hold before the
	// garbage collector evicts unreferenced chains (default 20 GiB;
	// negative: none, so every unreferenced chain past its grace goes).
	GCBudgetBytes int64
	// GCGrace is how long a chain must be unreferenced before eviction
	// (default 10m; negative: none): a pod being deployed right now is not
	// robbed.
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
	// RegistryTimeouts bound each registry request: connect, TLS
	// handshake, response header, and each pause of a body (zero fields:
	// oci's defaults, 10s, 10s, 30s and 30s).
	RegistryTimeouts oci.Timeouts
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
	p.Must(c.GCInterval >= 10*time.Millisecond, "GCInterval", c.GCInterval, "be at least 10ms")
	p.Must(c.CheckInterval >= 10*time.Millisecond, "CheckInterval", c.CheckInterval, "be at least 10ms")
	p.Must(c.MaxDeliver >= 2, "MaxDeliver", c.MaxDeliver, "be at least 2 (a transient failure needs a second try)")
	p.Must(len(c.BackOff) < c.MaxDeliver, "MaxDeliver", c.MaxDeliver, fmt.Sprintf("exceed the %d BackOff delays", len(c.BackOff)))
	for i, d := range c.BackOff {
		p.Must(d > 0, fmt.Sprintf("BackOff[%d]", i), d, "be positive")
	}
	p.Must(c.DiskCompression == "" || c.DiskCompression == "lz4" || c.DiskCompression == "lz4hc", "DiskCompression", c.DiskCompression, "be none, lz4 or lz4hc")
	// A cap of 0 stands for its default. No cap can be lifted: a hostile
	// registry always meets one.
	for _, lim := range []struct {
		field string
		value int64
	}{
		{"Limits.MaxManifestBytes", c.Limits.MaxManifestBytes},
		{"Limits.MaxLayers", int64(c.Limits.MaxLayers)},
		{"Limits.MaxLayerBytes", c.Limits.MaxLayerBytes},
		{"Limits.MaxUncompressedBytes", c.Limits.MaxUncompressedBytes},
		{"Limits.MaxRatio", int64(c.Limits.MaxRatio)},
		{"Limits.RatioFloor", c.Limits.RatioFloor},
		{"MaxLayerEntries", int64(c.MaxLayerEntries)},
	} {
		p.Must(lim.value >= 0, lim.field, lim.value, "not be negative (0: the default)")
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
//	PODVISOR_IMAGE_RESERVE          ReserveBytes (bytes, or with Ki/Mi/Gi/Ti; 0: none)
//	PODVISOR_IMAGE_GC_BUDGET        GCBudgetBytes (bytes, or with Ki/Mi/Gi/Ti; 0: none)
//	PODVISOR_IMAGE_GC_GRACE         GCGrace (Go duration; 0: none)
//	PODVISOR_IMAGE_GC_INTERVAL      GCInterval (Go duration)
//	PODVISOR_IMAGE_RESOLVE_TTL      ResolveTTL (Go duration; 0 or negative: never reuse)
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
// Unset variables keep the defaults; the result is validated. A variable
// set to 0 is never taken for unset: it means none where the list says so,
// and is refused elsewhere (naming the variable), since the zero of its
// field would silently stand for the default.
func ConfigFromEnv() (Config, error) { return ConfigFrom(config.Env()) }

// ConfigFrom is ConfigFromEnv over any source of settings.
func ConfigFrom(src config.Source) (Config, error) {
	c, err := config.Load(src, Config{}, func(r *config.Reader, c *Config) {
		r.Int("PODVISOR_IMAGECACHE_WORKERS", &c.Workers)
		refuseZero(r, "PODVISOR_IMAGECACHE_WORKERS", DefaultWorkers)
		r.List("PODVISOR_IMAGE_DATASTORES", &c.Datastores)
		r.List("PODVISOR_INSECURE_REGISTRIES", &c.InsecureRegistries)
		r.Duration("PODVISOR_IMAGE_LEASE_TTL", &c.LeaseTTL)
		refuseZero(r, "PODVISOR_IMAGE_LEASE_TTL", DefaultLeaseTTL)
		r.Bytes("PODVISOR_IMAGE_RESERVE", &c.ReserveBytes)
		zeroMeansNone(r, "PODVISOR_IMAGE_RESERVE", &c.ReserveBytes)
		r.Bytes("PODVISOR_IMAGE_GC_BUDGET", &c.GCBudgetBytes)
		zeroMeansNone(r, "PODVISOR_IMAGE_GC_BUDGET", &c.GCBudgetBytes)
		r.Duration("PODVISOR_IMAGE_GC_GRACE", &c.GCGrace)
		zeroMeansNone(r, "PODVISOR_IMAGE_GC_GRACE", &c.GCGrace)
		r.Duration("PODVISOR_IMAGE_GC_INTERVAL", &c.GCInterval)
		refuseZero(r, "PODVISOR_IMAGE_GC_INTERVAL", DefaultGCInterval)
		r.Duration("PODVISOR_IMAGE_RESOLVE_TTL", &c.ResolveTTL)
		zeroMeansNone(r, "PODVISOR_IMAGE_RESOLVE_TTL", &c.ResolveTTL)
		r.String("PODVISOR_REGISTRY_AUTH_FILE", &c.RegistryAuthFile)
		r.String("PODVISOR_REGISTRY_CA", &c.RegistryCAFile)
		r.List("PODVISOR_REGISTRY_REDIRECT_HOSTS", &c.RedirectHosts)
		r.String("PODVISOR_IMAGE_PLATFORM", &c.Platform)
		r.Bytes("PODVISOR_IMAGE_MAX_MANIFEST", &c.Limits.MaxManifestBytes)
		refuseZero(r, "PODVISOR_IMAGE_MAX_MANIFEST", bytesize.IEC(oci.DefaultMaxManifestBytes))
		r.Int("PODVISOR_IMAGE_MAX_LAYERS", &c.Limits.MaxLayers)
		refuseZero(r, "PODVISOR_IMAGE_MAX_LAYERS", oci.DefaultMaxLayers)
		r.Bytes("PODVISOR_IMAGE_MAX_LAYER_SIZE", &c.Limits.MaxLayerBytes)
		refuseZero(r, "PODVISOR_IMAGE_MAX_LAYER_SIZE", bytesize.IEC(oci.DefaultMaxLayerBytes))
		r.Bytes("PODVISOR_IMAGE_MAX_UNCOMPRESSED", &c.Limits.MaxUncompressedBytes)
		refuseZero(r, "PODVISOR_IMAGE_MAX_UNCOMPRESSED", bytesize.IEC(oci.DefaultMaxUncompressedBytes))
		r.Int("PODVISOR_IMAGE_MAX_RATIO", &c.Limits.MaxRatio)
		refuseZero(r, "PODVISOR_IMAGE_MAX_RATIO", oci.DefaultMaxRatio)
		r.Int("PODVISOR_IMAGE_MAX_ENTRIES", &c.MaxLayerEntries)
		refuseZero(r, "PODVISOR_IMAGE_MAX_ENTRIES", layerfs.DefaultMaxEntries)
		r.String("PODVISOR_IMAGE_STAGING_DIR", &c.StagingDir)
		r.String("PODVISOR_IMAGE_DISK_COMPRESSION", &c.DiskCompression)
	})
	// The zero Config stands for the defaults (see Validate), filled here
	// so that callers see the values in force.
	return c.withDefaults(), err
}

// setToZero reports whether setting name is set to a value that reads as
// zero (0, 0s, 0Gi).
func setToZero(r *config.Reader, name string) bool {
	v, ok := r.Lookup(name)
	if !ok {
		return false
	}
	if n, err := bytesize.Parse(v); err == nil {
		return n == 0
	}
	d, err := time.ParseDuration(v)
	return err == nil && d == 0
}

// zeroMeansNone turns a setting of 0 into the field's none (negative):
// the field's own zero stands for its default.
func zeroMeansNone[T int64 | time.Duration](r *config.Reader, name string, dst *T) {
	if setToZero(r, name) {
		*dst = -1
	}
}

// refuseZero refuses a setting of 0 for a field where 0 means nothing
// (no workers, no lease, a cap of nothing): the field's zero would turn it
// into the default without a word.
func refuseZero(r *config.Reader, name string, def any) {
	if setToZero(r, name) {
		v, _ := r.Lookup(name)
		r.Fail(name, v, fmt.Sprintf("more than 0 (leave it unset for the default, %v)", def))
	}
}

// Values in force of the fields whose negative means none.

func (c Config) reserve() int64         { return max(c.ReserveBytes, 0) }
func (c Config) gcBudget() int64        { return max(c.GCBudgetBytes, 0) }
func (c Config) gcGrace() time.Duration { return max(c.GCGrace, 0) }
