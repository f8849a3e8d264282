package guestchannel

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Guestinfo keys. On vSphere the agent reads them through the VMware
// backdoor ("info-get guestinfo.podvisor.spec"); a simulated guest gets the
// same values in its boot configuration; a guest without either finds them
// on a configuration disk.
const (
	// GuestinfoSpec holds the PodSpec as JSON.
	GuestinfoSpec = "guestinfo.podvisor.spec"
	// GuestinfoChannel, when set, is the channel address the booted agent
	// uses (BootConfig.Channel, such as "serial:/dev/ttyS1") instead of the
	// one it would find itself.
	GuestinfoChannel = "guestinfo.podvisor.channel"
)

// SpecVersion is the version of PodSpec in this package.
const SpecVersion = 1

// PodSpec is everything the agent needs to run a pod: the provisioner
// derives it from the pod record (manifest, image chains, network
// attachments) and writes it to the VM's guestinfo.
type PodSpec struct {
	Version   int    `json:"version"`
	UID       string `json:"uid"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Hostname is the guest's UTS name (the pod name).
	Hostname string `json:"hostname"`
	// RestartPolicy is Always, OnFailure or Never.
	RestartPolicy string `json:"restartPolicy"`
	// TerminationGracePeriodSeconds bounds a stop: SIGTERM, then SIGKILL.
	TerminationGracePeriodSeconds int64 `json:"terminationGracePeriodSeconds"`
	// Disks are the VM's disks the agent uses: exactly one DiskEphemeral and
	// one DiskImage per chain link referenced by a container.
	Disks []Disk `json:"disks"`
	// InitContainers run one at a time, in order, each to successful
	// completion, before any of Containers starts.
	InitContainers []Container `json:"initContainers,omitempty"`
	Containers     []Container `json:"containers"`
	// Volumes the containers mount (emptyDir only: a directory on the
	// ephemeral disk).
	Volumes []Volume `json:"volumes,omitempty"`
	// NICs in VM order; the first is the primary network.
	NICs []NIC `json:"nics,omitempty"`
	// Encryption, when set, keeps the ephemeral disk encrypted with a key
	// the agent receives over the channel after boot (see Encryption).
	Encryption *Encryption `json:"encryption,omitempty"`
	// DNS is the resolver configuration of the containers
	// (/etc/resolv.conf); absent leaves the image's own file.
	DNS *DNSConfig `json:"dns,omitempty"`
	// NetworkPending says the VM's cards are not on the pod's networks
	// yet (an instant clone made as soon as the pod was placed, before its
	// network was attached): NICs and DNS are empty. The agent creates the
	// containers and waits for a spec of the same pod without
	// NetworkPending (BootConfig.Updates) before it configures the NICs
	// and starts them. Added to version 1: an agent that predates it
	// would start the containers without the network, so only an agent
	// that knows it (a template's, which the provisioner keys by agent
	// build) is given a spec with it.
	NetworkPending bool `json:"networkPending,omitempty"`
	// ChannelToken is given back in every Hello (ChannelToken there). The
	// provisioner sets it when pod VMs reach their host side through a
	// network serial port (ChannelToken in package guestchannel's
	// token.go says how it is made); empty otherwise.
	ChannelToken string `json:"channelToken,omitempty"`
	// Template says the spec is a pod VM template's (the provisioner's
	// package templates): its VM is instant-cloned, and each child resumes
	// this guest. Where the agent can read its configuration source again
	// (BootConfig.Watch), it watches it for a spec of another pod: the
	// configuration a child is given, which the agent then takes over
	// (stops the template's containers, keeps the disks mounted, greets
	// the host as the child and runs the child's pod). A simulated guest's
	// child resumes a standby instead (BootConfig.Takeover). A template's
	// spec has no Encryption and no NICs (Validate): what its children
	// inherit must be no one's key and no one's address. Added to version
	// 1; an older agent refuses it (specs are decoded strictly), and the
	// provisioner keys templates by agent build.
	Template bool `json:"template,omitempty"`
}

// DNSConfig is what a container's /etc/resolv.conf says.
type DNSConfig struct {
	// Nameservers are IPv4 addresses, at most 3 (the resolver reads no
	// more).
	Nameservers []string `json:"nameservers"`
	// Searches are search domains.
	Searches []string `json:"searches,omitempty"`
}

// ResolvConf renders the configuration as /etc/resolv.conf.
func (d *DNSConfig) ResolvConf() []byte {
	var b strings.Builder
	for _, ns := range d.Nameservers {
		b.WriteString("nameserver " + ns + "\n")
	}
	if len(d.Searches) > 0 {
		b.WriteString("search " + strings.Join(d.Searches, " ") + "\n")
	}
	return []byte(b.String())
}

// Disk roles.
const (
	// DiskEphemeral is disk 0: read/write, created with the VM and destroyed
	// with it. It holds every container's upper and work directories, logs
	// and emptyDir volumes. The agent formats it (ext4) when it holds no
	// filesystem yet.
	DiskEphemeral = "ephemeral"
	// DiskImage is one link of an image chain: a read-only filesystem
	// holding one layer's diff, attached independent-nonpersistent.
	DiskImage = "image"
)

// Disk is one virtual disk as the guest finds it.
type Disk struct {
	// Role is DiskEphemeral or DiskImage.
	Role string `json:"role"`
	// Unit is the disk's address on the VM's virtual hardware, such as
	// "scsi0:0" (controller bus 0, unit 0). The boot configuration maps it
	// to a device path in the guest.
	Unit string `json:"unit"`
	// FS is the filesystem: "ext4" for the ephemeral disk, "erofs" for image
	// disks.
	FS string `json:"fs"`
	// ChainID identifies an image disk (the OCI chainID of its layer
	// prefix); Parent is the chainID of the disk below it, empty for a base
	// layer.
	ChainID string `json:"chainID,omitempty"`
	Parent  string `json:"parent,omitempty"`
	// Path is the disk's datastore path, for people reading the spec.
	Path string `json:"path,omitempty"`
}

// Container is one container of the pod, in the subset of Kubernetes'
// Container the agent acts on.
type Container struct {
	Name string `json:"name"`
	// Image is the reference as written in the manifest; ImageDigest the
	// resolved manifest digest (reported as the container's imageID).
	Image       string `json:"image"`
	ImageDigest string `json:"imageDigest"`
	// Chain lists the chainIDs of the image's disks, top layer first: the
	// overlay's lowerdir order.
	Chain []string `json:"chain"`
	// Entrypoint and Cmd come from the image config; Command and Args from
	// the manifest override them as Kubernetes does.
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	Command    []string `json:"command,omitempty"`
	Args       []string `json:"args,omitempty"`
	// Env is the image's environment overlaid with the manifest's (literal
	// values only).
	Env        []EnvVar `json:"env,omitempty"`
	WorkingDir string   `json:"workingDir,omitempty"`
	// User is the image config's user ("uid[:gid]"), used unless the
	// manifest's securityContext sets RunAsUser/RunAsGroup.
	User       string `json:"user,omitempty"`
	RunAsUser  *int64 `json:"runAsUser,omitempty"`
	RunAsGroup *int64 `json:"runAsGroup,omitempty"`
	// RunAsNonRoot refuses to start the container as uid 0;
	// ReadOnlyRootFilesystem mounts its root read-only (securityContext).
	RunAsNonRoot           bool   `json:"runAsNonRoot,omitempty"`
	ReadOnlyRootFilesystem bool   `json:"readOnlyRootFilesystem,omitempty"`
	Ports                  []Port `json:"ports,omitempty"`
	// Resources: requests and limits. CPU in millicores, memory in bytes; 0
	// means unset. Limits become the container's cgroup limits.
	Resources    Resources     `json:"resources"`
	VolumeMounts []VolumeMount `json:"volumeMounts,omitempty"`
	// Probes run by the agent.
	LivenessProbe  *Probe `json:"livenessProbe,omitempty"`
	ReadinessProbe *Probe `json:"readinessProbe,omitempty"`
	StartupProbe   *Probe `json:"startupProbe,omitempty"`
	// Completed, when set, says the container terminated for good in an
	// earlier boot of this pod (another pod VM, or an earlier boot of
	// this one): the pod's restartPolicy will not run it again (Never:
	// whatever its exit; OnFailure: it exited 0), as the kubelet does not
	// when it re-creates a pod's sandbox. The agent does not start it: it
	// reports it terminated with this state from its first report on,
	// with no restart of this boot, and counts it terminated in the pod's
	// phase. Only for a container (init containers run again in every
	// boot), with a terminated state the policy does not restart. Added
	// to version 1: an agent that predates it refuses a spec with it
	// (unknown field), and a spec is read before any hello (no capability
	// can gate it); the provisioner sets it only for a boot after one of
	// the pod (a pod VM made again, on another host or re-created, or the
	// same VM powered on again in place). Package doc: "Containers
	// completed in an earlier boot".
	Completed *ContainerState `json:"completed,omitempty"`
}

// EnvVar is one environment variable.
type EnvVar struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Port is a container port (informational in the guest: the pod shares the
// VM's network namespace).
type Port struct {
	Name          string `json:"name,omitempty"`
	ContainerPort int32  `json:"containerPort"`
	Protocol      string `json:"protocol,omitempty"`
}

// Resources of a container.
type Resources struct {
	CPURequestMilli    int64 `json:"cpuRequestMilli,omitempty"`
	CPULimitMilli      int64 `json:"cpuLimitMilli,omitempty"`
	MemoryRequestBytes int64 `json:"memoryRequestBytes,omitempty"`
	MemoryLimitBytes   int64 `json:"memoryLimitBytes,omitempty"`
}

// Volume is a pod volume; only emptyDir exists in a pod VM.
type Volume struct {
	Name string `json:"name"`
	// EmptyDir is always set: a directory on the ephemeral disk, created
	// empty at boot. Medium "Memory" makes it a tmpfs.
	EmptyDir *EmptyDir `json:"emptyDir"`
}

// EmptyDir is an emptyDir volume.
type EmptyDir struct {
	Medium         string `json:"medium,omitempty"`
	SizeLimitBytes int64  `json:"sizeLimitBytes,omitempty"`
}

// VolumeMount mounts a volume into a container.
type VolumeMount struct {
	Name      string `json:"name"`
	MountPath string `json:"mountPath"`
	ReadOnly  bool   `json:"readOnly,omitempty"`
}

// Probe is a Kubernetes probe: exactly one of Exec, HTTPGet, TCPSocket.
type Probe struct {
	Exec      *ExecAction      `json:"exec,omitempty"`
	HTTPGet   *HTTPGetAction   `json:"httpGet,omitempty"`
	TCPSocket *TCPSocketAction `json:"tcpSocket,omitempty"`
	// Timing, with Kubernetes' defaults applied by the provisioner.
	InitialDelaySeconds int32 `json:"initialDelaySeconds,omitempty"`
	PeriodSeconds       int32 `json:"periodSeconds"`
	TimeoutSeconds      int32 `json:"timeoutSeconds"`
	SuccessThreshold    int32 `json:"successThreshold"`
	FailureThreshold    int32 `json:"failureThreshold"`
}

// ExecAction runs a command in the container.
type ExecAction struct {
	Command []string `json:"command"`
}

// HTTPGetAction fetches a URL from the pod's network namespace; a status
// from 200 to 399 passes.
type HTTPGetAction struct {
	Path   string `json:"path,omitempty"`
	Port   int32  `json:"port"`
	Host   string `json:"host,omitempty"`
	Scheme string `json:"scheme,omitempty"`
}

// TCPSocketAction passes when a TCP connection opens.
type TCPSocketAction struct {
	Port int32  `json:"port"`
	Host string `json:"host,omitempty"`
}

// NIC is one network interface of the VM, in VM order.
type NIC struct {
	Network string `json:"network"`
	MAC     string `json:"mac,omitempty"`
	IP      string `json:"ip,omitempty"`
	Prefix  int    `json:"prefix,omitempty"`
	Gateway string `json:"gateway,omitempty"`
}

// Validate checks what the agent relies on; the provisioner runs it before
// writing a spec, the agent after reading one.
func (s *PodSpec) Validate() error {
	var errs []error
	bad := func(field, why string) { errs = append(errs, fmt.Errorf("%s: %s", field, why)) }
	if s.Version != SpecVersion {
		bad("version", fmt.Sprintf("%d is not the supported version %d", s.Version, SpecVersion))
	}
	if s.UID == "" {
		bad("uid", "required")
	}
	if len(s.Containers) == 0 {
		bad("containers", "a pod needs at least one container")
	}
	switch s.RestartPolicy {
	case "Always", "OnFailure", "Never":
	default:
		bad("restartPolicy", fmt.Sprintf("%q is not Always, OnFailure or Never", s.RestartPolicy))
	}
	chains := map[string]bool{}
	ephemeral := 0
	units := map[string]bool{}
	for i, d := range s.Disks {
		f := fmt.Sprintf("disks[%d]", i)
		if d.Unit == "" || units[d.Unit] {
			bad(f+".unit", fmt.Sprintf("%q is empty or used twice", d.Unit))
		}
		units[d.Unit] = true
		switch d.Role {
		case DiskEphemeral:
			ephemeral++
		case DiskImage:
			if d.ChainID == "" {
				bad(f+".chainID", "required for an image disk")
			}
			chains[d.ChainID] = true
		default:
			bad(f+".role", fmt.Sprintf("%q is not %s or %s", d.Role, DiskEphemeral, DiskImage))
		}
	}
	if ephemeral != 1 {
		bad("disks", fmt.Sprintf("%d ephemeral disks, want exactly one", ephemeral))
	}
	names := map[string]bool{}
	volumes := map[string]bool{}
	for _, v := range s.Volumes {
		volumes[v.Name] = true
	}
	check := func(field string, cs []Container) {
		for i, c := range cs {
			f := fmt.Sprintf("%s[%d]", field, i)
			if c.Name == "" || names[c.Name] {
				bad(f+".name", fmt.Sprintf("%q is empty or used twice", c.Name))
			}
			names[c.Name] = true
			if len(c.Chain) == 0 {
				bad(f+".chain", "an image needs at least one disk")
			}
			for j, id := range c.Chain {
				if !chains[id] {
					bad(fmt.Sprintf("%s.chain[%d]", f, j), fmt.Sprintf("%s is not among the disks", id))
				}
			}
			for j, m := range c.VolumeMounts {
				if !volumes[m.Name] {
					bad(fmt.Sprintf("%s.volumeMounts[%d].name", f, j), fmt.Sprintf("%q is not a volume of the pod", m.Name))
				}
			}
			if c.Completed != nil {
				if why := s.completedWhy(field, *c.Completed); why != "" {
					bad(f+".completed", why)
				}
			}
		}
	}
	if s.Encryption != nil && s.Encryption.Nonce == "" {
		bad("encryption.nonce", "required (set by the provisioner at create)")
	}
	check("initContainers", s.InitContainers)
	check("containers", s.Containers)
	if s.NetworkPending && (len(s.NICs) > 0 || s.DNS != nil) {
		bad("networkPending", "a spec waiting for its network has no nics or dns yet")
	}
	if s.NetworkPending && len(s.InitContainers) > 0 {
		bad("networkPending", "a pod with init containers is started with its network, never ahead of it")
	}
	if s.Template && s.Encryption != nil {
		// Its key comes for one VM and one boot, and its children resume
		// the template's guest and disk: a template's would be theirs.
		bad("template", "excludes encryption: an encrypted ephemeral disk is keyed per VM, never forked")
	}
	if s.Template && len(s.NICs) > 0 {
		// Each child configures its own cards from its own spec; the
		// template's addresses would be every child's until then.
		bad("template", "excludes nics: a template configures no network, its forked children their own")
	}
	for i, n := range s.NICs {
		for _, e := range n.validate() {
			bad(fmt.Sprintf("nics[%d].%s", i, e[0]), e[1])
		}
	}
	if d := s.DNS; d != nil {
		if len(d.Nameservers) == 0 || len(d.Nameservers) > 3 {
			bad("dns.nameservers", fmt.Sprintf("%d addresses; want 1 to 3", len(d.Nameservers)))
		}
		for i, ns := range d.Nameservers {
			if a, err := netip.ParseAddr(ns); err != nil || !a.Is4() {
				bad(fmt.Sprintf("dns.nameservers[%d]", i), fmt.Sprintf("%q is not an IPv4 address", ns))
			}
		}
		for i, sd := range d.Searches {
			if sd == "" || strings.ContainsAny(sd, " \t\n") {
				bad(fmt.Sprintf("dns.searches[%d]", i), fmt.Sprintf("%q is not a domain", sd))
			}
		}
	}
	return errors.Join(errs...)
}

// completedWhy says why a container of list field (initContainers or
// containers) cannot be Completed with state t, or "".
func (s *PodSpec) completedWhy(field string, t ContainerState) string {
	switch {
	case field != "containers":
		return "init containers run again in every pod VM; only a container is completed"
	case t.Kind != StateTerminated:
		return fmt.Sprintf("state %q is not %s", t.Kind, StateTerminated)
	case !TerminatedForGood(s.RestartPolicy, t.ExitCode):
		return fmt.Sprintf("restartPolicy %s restarts a container that exited %d: it is not completed", s.RestartPolicy, t.ExitCode)
	}
	return ""
}

// TerminatedForGood says whether a container that exited with exitCode
// stays terminated under restartPolicy policy: Never, whatever its exit;
// OnFailure, when it exited 0; Always, never.
func TerminatedForGood(policy string, exitCode int32) bool {
	return policy == "Never" || (policy == "OnFailure" && exitCode == 0)
}

// validate returns the NIC's bad fields with their reasons.
func (n NIC) validate() [][2]string {
	var out [][2]string
	if n.Network == "" {
		out = append(out, [2]string{"network", "required"})
	}
	if n.MAC != "" {
		if _, err := net.ParseMAC(n.MAC); err != nil {
			out = append(out, [2]string{"mac", fmt.Sprintf("%q is not a MAC address", n.MAC)})
		}
	}
	if n.IP == "" {
		if n.Gateway != "" {
			out = append(out, [2]string{"gateway", "needs ip"})
		}
		return out
	}
	ip, err := netip.ParseAddr(n.IP)
	if err != nil {
		return append(out, [2]string{"ip", fmt.Sprintf("%q is not an IP address", n.IP)})
	}
	if n.Prefix < 1 || n.Prefix > ip.BitLen() {
		return append(out, [2]string{"prefix", fmt.Sprintf("%d is not between 1 and %d", n.Prefix, ip.BitLen())})
	}
	if n.Gateway != "" {
		gw, err := netip.ParseAddr(n.Gateway)
		if err != nil {
			out = append(out, [2]string{"gateway", fmt.Sprintf("%q is not an IP address", n.Gateway)})
		} else if p := netip.PrefixFrom(ip, n.Prefix); !p.Masked().Contains(gw) {
			out = append(out, [2]string{"gateway", fmt.Sprintf("%s is outside %s", gw, p.Masked())})
		}
	}
	return out
}

// MarshalSpec encodes a spec for guestinfo.
func MarshalSpec(s *PodSpec) (string, error) {
	if err := s.Validate(); err != nil {
		return "", fmt.Errorf("pod spec: %w", err)
	}
	b, err := json.Marshal(s)
	return string(b), err
}

// UnmarshalSpec decodes and validates a spec read from guestinfo; unknown
// fields are refused so that a spec newer than the agent is not half-read.
func UnmarshalSpec(data []byte) (*PodSpec, error) {
	var s PodSpec
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("pod spec: %w", err)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("pod spec: %w", err)
	}
	return &s, nil
}

// BootConfig is what the environment tells the agent at start: where its
// channel is and how its VM's disks appear as devices. A simulated guest
// gets it as a file from the simulated hypervisor; a pod VM on vSphere
// derives it from its hardware (vsock, /dev/disk/by-path).
type BootConfig struct {
	// Channel is "unix:<path>", "vsock:<cid>:<port>" or "serial:<device>".
	Channel string `json:"channel"`
	// Devices maps a disk's Unit ("scsi0:0") to the guest path of its
	// block device or, in a simulated guest, of its flat extent file (the
	// agent mounts a regular file through a loop device, or file-backed
	// where the filesystem allows).
	Devices map[string]string `json:"devices"`
	// StateDir is where the agent mounts the disks and keeps the runtime's
	// state: /run/podvisor in a real guest, a directory of the simulated
	// guest otherwise.
	StateDir string `json:"stateDir"`
	// Runtime is the OCI runtime binary (runc or crun); empty means crun
	// when it is on PATH (it starts containers faster), else runc.
	Runtime string `json:"runtime,omitempty"`
	// CgroupParent is the cgroup the containers' cgroups are made under:
	// the VM's own cgroup in a simulated guest, so that a container can
	// never get more than the VM. Empty means the root of the guest.
	CgroupParent string `json:"cgroupParent,omitempty"`
	// Spec is the pod spec, as a simulated guest receives its guestinfo.
	// Empty on vSphere, where the agent reads GuestinfoSpec itself.
	Spec json.RawMessage `json:"spec,omitempty"`
	// VMUUID is the VM's instance uuid, reported in Hello.
	VMUUID string `json:"vmUUID,omitempty"`
	// RestartBackoffMillis is the first delay before a crashed container is
	// restarted; it doubles on every restart up to MaxRestartBackoffMillis.
	// 0 means Kubernetes' 10 s and 5 min. Tests set short ones.
	RestartBackoffMillis    int64 `json:"restartBackoffMillis,omitempty"`
	MaxRestartBackoffMillis int64 `json:"maxRestartBackoffMillis,omitempty"`
	// LogMaxBytes is the size at which a container's log file is rotated
	// (one rotated file is kept per instance); 0 means 10 MiB.
	LogMaxBytes int64 `json:"logMaxBytes,omitempty"`
	// VolumeCheckMillis is how often the usage of emptyDir volumes with a
	// sizeLimit on the ephemeral disk is measured (0: every 10 s, as the
	// kubelet's housekeeping). Tests set short ones.
	VolumeCheckMillis int64 `json:"volumeCheckMillis,omitempty"`
	// Takeover, "fd:<n>", makes the guest a standby: booted ahead of the
	// VM that will own it (a simulated hypervisor keeps one for a VM it
	// instant-clones from). The agent prepares the guest from this
	// configuration (init done, disks mounted, runtime found) without
	// starting a pod or dialling the channel, then reads the owning VM's
	// BootConfig (JSON, without Takeover) from file descriptor n up to
	// its end and runs that VM's pod, on the disks already mounted when
	// they are the very same files.
	Takeover string `json:"takeover,omitempty"`
	// Updates, "fd:<n>", is where a simulated hypervisor writes the VM's
	// GuestinfoSpec again, one JSON document a line, each time a
	// reconfigure of the running VM changes it: how a spec with
	// NetworkPending is followed by the one with the pod's network. (On
	// vSphere the agent would read the guestinfo key again instead.)
	Updates string `json:"updates,omitempty"`
	// Watch names the source the spec came from, for the agent to read
	// again: "guestinfo" (the VMware backdoor) or "configdisk:<device>" (a
	// configuration disk, read past the page cache). Set by a booted VM's
	// first stage; empty in a simulated guest, whose updates come on
	// Updates and whose takeover on Takeover. The agent reads it while its
	// spec waits for the pod's network (a spec of the same pod without
	// NetworkPending) and, for a template's spec, for as long as it runs
	// (a spec of another pod: a forked child's).
	Watch string `json:"watch,omitempty"`
}

// BootConfig.Watch values.
const (
	WatchGuestinfo  = "guestinfo"
	WatchConfigDisk = "configdisk:"
)

// TakeoverFD is the file descriptor Takeover names, or -1 when it is
// empty.
func (b *BootConfig) TakeoverFD() (int, error) { return fdOf("takeover", b.Takeover) }

// UpdatesFD is the file descriptor Updates names, or -1 when it is empty.
func (b *BootConfig) UpdatesFD() (int, error) { return fdOf("updates", b.Updates) }

// fdOf reads a "fd:<n>" field.
func fdOf(field, v string) (int, error) {
	if v == "" {
		return -1, nil
	}
	n, err := strconv.Atoi(strings.TrimPrefix(v, "fd:"))
	if !strings.HasPrefix(v, "fd:") || err != nil || n < 3 {
		return -1, fmt.Errorf("%s: %q is not fd:<n> with n ≥ 3", field, v)
	}
	return n, nil
}

// Validate checks a boot configuration before the agent acts on it.
func (b *BootConfig) Validate() error {
	var errs []error
	bad := func(field, why string) { errs = append(errs, fmt.Errorf("%s: %s", field, why)) }
	if b.Channel == "" {
		bad("channel", "required")
	} else if scheme, _, ok := strings.Cut(b.Channel, ":"); !ok || (scheme != "unix" && scheme != "vsock" && scheme != "serial") {
		bad("channel", fmt.Sprintf("%q is not unix:<path>, vsock:<cid>:<port> or serial:<device>", b.Channel))
	}
	if b.StateDir == "" || !strings.HasPrefix(b.StateDir, "/") {
		bad("stateDir", fmt.Sprintf("%q is not an absolute path", b.StateDir))
	}
	if len(b.Devices) == 0 {
		bad("devices", "no disk is mapped to a device")
	}
	if b.CgroupParent != "" && !strings.HasPrefix(b.CgroupParent, "/") {
		bad("cgroupParent", fmt.Sprintf("%q is not an absolute cgroup path", b.CgroupParent))
	}
	if _, err := b.TakeoverFD(); err != nil {
		errs = append(errs, err)
	}
	if _, err := b.UpdatesFD(); err != nil {
		errs = append(errs, err)
	}
	if b.Watch != "" && b.Watch != WatchGuestinfo && !strings.HasPrefix(b.Watch, WatchConfigDisk) {
		bad("watch", fmt.Sprintf("%q is not %s or %s<device>", b.Watch, WatchGuestinfo, WatchConfigDisk))
	}
	if b.Watch != "" && (b.Takeover != "" || b.Updates != "") {
		bad("watch", "a configuration read again excludes takeover and updates, which bring it on descriptors")
	}
	if b.RestartBackoffMillis < 0 || b.MaxRestartBackoffMillis < 0 || b.LogMaxBytes < 0 || b.VolumeCheckMillis < 0 {
		bad("restartBackoffMillis/maxRestartBackoffMillis/logMaxBytes/volumeCheckMillis", "must not be negative")
	}
	return errors.Join(errs...)
}
