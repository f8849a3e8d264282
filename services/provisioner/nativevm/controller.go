package nativevm

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25"
	"golang.org/x/sync/singleflight"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/deps"
	"github.com/podvisor/podvisor/shared/pki"
	"github.com/podvisor/podvisor/shared/record"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// Name is the controller's service name on the bus: it runs inside the
// provisioner and shares its identity (consumers provisioner-VMS).
const Name = "provisioner"

// Source is the CloudEvent source of what the controller publishes.
const Source = events.SourcePrefix + Name

// Config says where native VMs and image disks live.
type Config struct {
	// FolderRoot is the VM folder (below the datacenter's VM folder) of
	// native VMs, one subfolder per namespace. It is not the pod VMs'
	// folder, whose drift repair treats unknown VMs as orphans.
	FolderRoot string
	// ImageRoot is the datastore directory of image boot disks.
	ImageRoot string
	// WorkDir is where image root filesystems are unpacked and formatted
	// before the upload (default os.TempDir()).
	WorkDir string
	// BootDiskSlackMiB is free room added to an image's size on its boot
	// disk, for what the guest writes (default 64).
	BootDiskSlackMiB int64
	// InsecureRegistries are registries reached over plain HTTP
	// (PODVISOR_INSECURE_REGISTRIES); others over HTTPS, verified.
	InsecureRegistries []string
	// RegistryCAFile is a PEM bundle of CAs trusted beside the system's
	// roots for registry certificates (PODVISOR_REGISTRY_CA).
	RegistryCAFile string
	// Workers bounds concurrent handlers (default 4).
	Workers int
	// AckWait and MaxDeliver of the consumer (defaults 2m, 8).
	AckWait    time.Duration
	MaxDeliver int
}

// Defaults.
const (
	DefaultFolderRoot = "podvisor-vms"
	DefaultImageRoot  = "podvisor-vmimages"
)

func (c *Config) defaults() {
	if c.FolderRoot == "" {
		c.FolderRoot = DefaultFolderRoot
	}
	if c.ImageRoot == "" {
		c.ImageRoot = DefaultImageRoot
	}
	if c.WorkDir == "" {
		c.WorkDir = os.TempDir()
	}
	if c.BootDiskSlackMiB <= 0 {
		c.BootDiskSlackMiB = 64
	}
	if c.Workers <= 0 {
		c.Workers = 4
	}
	if c.AckWait <= 0 {
		c.AckWait = 2 * time.Minute
	}
	if c.MaxDeliver <= 0 {
		c.MaxDeliver = 8
	}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	var errs []error
	if strings.ContainsAny(c.FolderRoot, "*?\\") || strings.Trim(c.FolderRoot, "/") == "" {
		errs = append(errs, fmt.Errorf("FolderRoot %q: want a folder path such as %s", c.FolderRoot, DefaultFolderRoot))
	}
	if strings.ContainsAny(c.ImageRoot, "[]*?\\") || strings.Trim(c.ImageRoot, "/") == "" {
		errs = append(errs, fmt.Errorf("ImageRoot %q: want a datastore directory such as %s", c.ImageRoot, DefaultImageRoot))
	}
	return errors.Join(errs...)
}

// Controller is the native VM controller.
type Controller struct {
	cfg     Config
	bus     *bus.Bus
	out     *bus.Emitter
	vs      *vsphere.Session
	vc      *vim25.Client
	dc      *object.Datacenter
	log     *slog.Logger
	vms     *record.Store[events.VMRecord]
	classes *record.Store[events.VMClassRecord]
	images  *record.Store[events.VMImageRecord]
	locks   bus.KeyLocks
	// builds joins concurrent requests for one image disk (bootdisk.go).
	builds singleflight.Group
	now    func() time.Time
	// pull carries registry requests, verifying certificates against
	// the system's roots and Config.RegistryCAFile.
	pull http.RoundTripper
}

// Deps are the connections the controller works through (package deps;
// the provisioner's own): the bus and the vCenter session, both required.
type Deps = deps.Deps

// New opens the controller's buckets (the topology must be declared).
func New(ctx context.Context, cfg Config, d Deps) (*Controller, error) {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("nativevm: %w", err)
	}
	if err := d.Require(deps.NeedBus("VMs are declared, recorded and announced on it"),
		deps.NeedVSphere("VMs are made in vCenter")); err != nil {
		return nil, fmt.Errorf("nativevm: %w", err)
	}
	b, vs, log := d.Bus, d.VSphere, d.Log()
	roots, err := pki.SystemPoolWith(cfg.RegistryCAFile)
	if err != nil {
		return nil, fmt.Errorf("nativevm: RegistryCAFile: %w", err)
	}
	pull := remote.DefaultTransport.(*http.Transport).Clone()
	pull.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	c := &Controller{cfg: cfg, bus: b, out: b.Emitter(Source), vs: vs, vc: vs.Vim(), dc: vs.Datacenter,
		log: log.With("controller", "nativevm"), now: time.Now, pull: pull}
	kv, err := b.KV(ctx, events.BucketVMs)
	if err != nil {
		return nil, fmt.Errorf("nativevm: bucket %s (is the topology declared?): %w", events.BucketVMs, err)
	}
	c.vms = record.New[events.VMRecord](kv, "vm")
	if kv, err = b.KV(ctx, events.BucketVMClasses); err != nil {
		return nil, fmt.Errorf("nativevm: bucket %s: %w", events.BucketVMClasses, err)
	}
	c.classes = record.New[events.VMClassRecord](kv, "vm class")
	if kv, err = b.KV(ctx, events.BucketVMImages); err != nil {
		return nil, fmt.Errorf("nativevm: bucket %s: %w", events.BucketVMImages, err)
	}
	c.images = record.New[events.VMImageRecord](kv, "vm image")
	return c, nil
}

// Run consumes the vm.* events the controller handles until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	r := bus.NewRouter(Name, c.log)
	bus.Handle(r, c.onClassDeclared)
	bus.Handle(r, c.onClassDeleteRequested)
	bus.Handle(r, c.onImageDeclared)
	bus.Handle(r, c.onImageDeleteRequested)
	bus.Handle(r, c.onDeclared).OnFailure(c.declareFailed)
	bus.Handle(r, c.onScheduled).OnFailure(func(ctx context.Context, m *bus.Message, e *events.VMScheduled, _ error) error {
		return c.createGaveUp(ctx, m, e.VMRef)
	})
	bus.Handle(r, c.onUnschedulable)
	bus.Handle(r, c.onNetworkAttached).OnFailure(func(ctx context.Context, m *bus.Message, e *events.VMNetworkAttached, _ error) error {
		return c.createGaveUp(ctx, m, e.VMRef)
	})
	bus.Handle(r, c.onNetworkFailed)
	bus.Handle(r, c.onDeleteRequested)
	bus.Handle(r, c.onAdmitted).OnFailure(c.migrateFailed)
	bus.Handle(r, c.onEvicted)
	c.log.Info("native VM controller running", "folder", c.cfg.FolderRoot, "images", c.cfg.ImageRoot)
	return r.Run(ctx, c.bus, bus.ConsumerConfig{Workers: c.cfg.Workers, AckWait: c.cfg.AckWait, MaxDeliver: c.cfg.MaxDeliver, Logger: c.log}, nil)
}
