// Package bootconfig finds out what the environment tells the agent at
// start: its guestchannel.BootConfig and the pod spec it must run.
//
// A simulated guest receives both in one JSON file (FileSource). A pod VM on
// vSphere will derive the boot configuration from its hardware and read the
// spec from guestinfo through the VMware backdoor; a VM without either will
// find both on a configuration disk. Each is a Source, so the agent's main
// does not change when a new one arrives.
package bootconfig

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
)

// Source yields the boot configuration and the pod spec.
type Source interface {
	// Load returns a validated configuration and spec.
	Load(ctx context.Context) (*Config, error)
}

// Config is a loaded boot configuration with its spec and defaults applied.
type Config struct {
	Boot guestchannel.BootConfig
	Spec *guestchannel.PodSpec
}

// Defaults for fields left zero in the boot configuration (Kubernetes'
// values for the back-off).
const (
	DefaultRestartBackoff    = 10 * time.Second
	DefaultMaxRestartBackoff = 5 * time.Minute
	DefaultLogMaxBytes       = 10 << 20
	DefaultVolumeCheck       = 10 * time.Second
)

// VolumeCheck is how often sized emptyDir volumes are measured.
func (c *Config) VolumeCheck() time.Duration {
	return millisOr(c.Boot.VolumeCheckMillis, DefaultVolumeCheck)
}

// RestartBackoff is the first restart delay.
func (c *Config) RestartBackoff() time.Duration {
	return millisOr(c.Boot.RestartBackoffMillis, DefaultRestartBackoff)
}

// MaxRestartBackoff caps the restart delay.
func (c *Config) MaxRestartBackoff() time.Duration {
	return millisOr(c.Boot.MaxRestartBackoffMillis, DefaultMaxRestartBackoff)
}

// LogMaxBytes is the rotation size of a log file.
func (c *Config) LogMaxBytes() int64 {
	if c.Boot.LogMaxBytes > 0 {
		return c.Boot.LogMaxBytes
	}
	return DefaultLogMaxBytes
}

func millisOr(ms int64, def time.Duration) time.Duration {
	if ms > 0 {
		return time.Duration(ms) * time.Millisecond
	}
	return def
}

// FileSource reads a BootConfig JSON file whose Spec field holds the pod
// spec (what a simulated hypervisor writes for its guest).
type FileSource struct {
	Path string
}

// Load reads and validates the file.
func (f FileSource) Load(context.Context) (*Config, error) {
	data, err := os.ReadFile(f.Path)
	if err != nil {
		return nil, fmt.Errorf("boot config: %w", err)
	}
	return Parse(data)
}

// Parse decodes a BootConfig with an embedded spec and validates both.
func Parse(data []byte) (*Config, error) {
	var c Config
	if err := json.Unmarshal(data, &c.Boot); err != nil {
		return nil, fmt.Errorf("boot config: %w", err)
	}
	if err := c.Boot.Validate(); err != nil {
		return nil, fmt.Errorf("boot config: %w", err)
	}
	if len(c.Boot.Spec) == 0 {
		return nil, fmt.Errorf("boot config: spec: required (no other source of the pod spec in this guest)")
	}
	raw := []byte(c.Boot.Spec)
	var asString string
	if json.Unmarshal(raw, &asString) == nil {
		raw = []byte(asString) // the guestinfo value verbatim: a JSON string holding the spec
	}
	spec, err := guestchannel.UnmarshalSpec(raw)
	if err != nil {
		return nil, fmt.Errorf("boot config: %w", err)
	}
	for i, d := range spec.Disks {
		if c.Boot.Devices[d.Unit] == "" {
			return nil, fmt.Errorf("boot config: devices: spec disks[%d] unit %s has no device", i, d.Unit)
		}
	}
	c.Spec = spec
	return &c, nil
}
