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
	bc := &guestchannel.BootConfig{
		Channel:  channel,
		Devices:  devices,
		StateDir: StateDir,
		Runtime:  Runtime,
		Spec:     []byte(raw),
		VMUUID:   uuid,
	}
	if w, ok := env.Source.(source.Watched); ok {
		bc.Watch = w.Watch()
	}
	return bc, nil
}

// ErrSpecRefused marks Reread's errors about the spec the source holds
// (none, one that does not decode or validate, one naming a disk the VM
// lacks), as against the source's own (not read): the source was read,
// and whatever this VM now is, it is not a pod this agent can run.
var ErrSpecRefused = errors.New("the spec read again is refused")

// refused is an error of the spec read again (ErrSpecRefused); it reads
// as the error it holds.
type refused struct{ err error }

func (r refused) Error() string        { return r.err.Error() }
func (r refused) Unwrap() error        { return r.err }
func (r refused) Is(target error) bool { return target == ErrSpecRefused }

// Reread reads the spec and the VM uuid again from the source prev.Watch
// names and returns prev with them: what a template's agent does to find
// that its VM was forked (a child's spec, of another pod) and what a spec
// waiting for its network is followed by. The channel, devices and state
// directory stay prev's: a child has its template's hardware, so every
// disk unit of the spec must be one prev found (an error says which is
// not). The uuid, when the source gives none, is not the BIOS's (a
// forked child resumes its parent's memory, where the kernel read the
// parent's) but empty. An error about the spec itself, once the source
// was read, is ErrSpecRefused.
func Reread(prev guestchannel.BootConfig) (*guestchannel.BootConfig, *guestchannel.PodSpec, error) {
	src, err := source.Reopen(prev.Watch)
	if err != nil {
		return nil, nil, err
	}
	raw, err := src.Get(guestchannel.GuestinfoSpec)
	if errors.Is(err, source.ErrNotFound) {
		return nil, nil, refused{fmt.Errorf("pod spec: %w", err)}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("pod spec: %w", err)
	}
	spec, err := guestchannel.UnmarshalSpec([]byte(raw))
	if err != nil {
		return nil, nil, refused{fmt.Errorf("pod spec from %s: %w", src.Name(), err)}
	}
	for _, d := range spec.Disks {
		if _, ok := prev.Devices[d.Unit]; !ok {
			return nil, nil, refused{fmt.Errorf("pod spec from %s: disk unit %s is not one of this VM's", src.Name(), d.Unit)}
		}
	}
	uuid, err := optional(src, GuestinfoVMUUID)
	if err != nil {
		return nil, nil, err
	}
	next := prev
	next.Spec, next.VMUUID = []byte(raw), uuid
	return &next, spec, nil
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
