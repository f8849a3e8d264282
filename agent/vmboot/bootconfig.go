package vmboot

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/source"
)

// Guestinfo keys the first stage reads besides the spec. Both are optional.
const (
	// GuestinfoChannel overrides the channel address ("serial:/dev/ttyS1").
	GuestinfoChannel = guestchannel.GuestinfoChannel
	// GuestinfoVMUUID is the VM's instance uuid as the provisioner knows it.
	GuestinfoVMUUID = "guestinfo.podvisor.vmuuid"
)

// VsockPort is the port the host agent listens on for its pod VMs' vsock
// connections; the host's CID is 2 (VMADDR_CID_HOST).
const VsockPort = 7040

// Paths in the image and in the booted VM.
const (
	StateDir   = "/run/podvisor"
	BootConfig = "/run/podvisor/boot.json"
	Runtime    = "/usr/sbin/runc"
)

// Env is what the first stage found about its VM.
type Env struct {
	// Source holds the guestinfo.
	Source source.Source
	// HasVsock is true when a vsock transport to the host exists (VMware's
	// VMCI PCI device is bound to its driver).
	HasVsock bool
	// DMIUUID is the BIOS uuid (/sys/class/dmi/id/product_uuid), used when
	// guestinfo gives no instance uuid.
	DMIUUID string
	// Sys and Dev are /sys and /dev (a test's trees otherwise).
	Sys, Dev string
	// DiskTimeout bounds the wait for the spec's disks.
	DiskTimeout time.Duration
}

// Compose reads the spec from guestinfo and builds the agent's BootConfig:
// the channel (guestinfo override, else vsock to the host when present,
// else the second serial port), every spec disk's device and the VM uuid.
func Compose(env Env) (*guestchannel.BootConfig, error) {
	raw, err := env.Source.Get(guestchannel.GuestinfoSpec)
	if err != nil {
		return nil, fmt.Errorf("pod spec: %w", err)
	}
	spec, err := guestchannel.UnmarshalSpec([]byte(raw))
	if err != nil {
		return nil, fmt.Errorf("pod spec from %s: %w", env.Source.Name(), err)
	}
	channel, err := optional(env.Source, GuestinfoChannel)
	if err != nil {
		return nil, err
	}
	if channel == "" {
		channel = "serial:/dev/ttyS1"
		if env.HasVsock {
			channel = fmt.Sprintf("vsock:2:%d", VsockPort)
		}
	}
	uuid, err := optional(env.Source, GuestinfoVMUUID)
	if err != nil {
		return nil, err
	}
	if uuid == "" {
		uuid = strings.ToLower(strings.TrimSpace(env.DMIUUID))
	}
	units := make([]string, 0, len(spec.Disks))
	for _, d := range spec.Disks {
		units = append(units, d.Unit)
	}
	devices, err := WaitUnits(env.Sys, env.Dev, units, env.DiskTimeout)
	if err != nil {
		return nil, err
	}
	return &guestchannel.BootConfig{
		Channel:  channel,
		Devices:  devices,
		StateDir: StateDir,
		Runtime:  Runtime,
		Spec:     []byte(raw),
		VMUUID:   uuid,
	}, nil
}

func optional(s source.Source, key string) (string, error) {
	v, err := s.Get(key)
	if errors.Is(err, source.ErrNotFound) {
		return "", nil
	}
	return v, err
}

// ReadDMIUUID reads the BIOS uuid, empty when absent.
func ReadDMIUUID(sys string) string {
	b, _ := os.ReadFile(sys + "/class/dmi/id/product_uuid")
	return string(b)
}
