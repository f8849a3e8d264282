// Package bundle writes the OCI bundle of one container instance: a
// runtime-spec config.json whose root is the container's overlay, built from
// the pod spec with Kubernetes' rules (process arguments from the image's
// Entrypoint/Cmd and the manifest's Command/Args, environment, working
// directory, user), the namespaces of a pod VM's container (its own pid,
// mount, ipc and uts; the guest's network namespace, which every container
// of the pod shares), cgroup limits from the container's resources, the
// mounts runc's default spec has, and the pod's emptyDir volumes.
package bundle

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/podvisor/podvisor/agent/guestchannel"
)

// Params is what the agent knows about one container instance beyond its
// spec.
type Params struct {
	// Rootfs is the mounted overlay.
	Rootfs string
	// Hostname is the container's UTS name (the pod's name).
	Hostname string
	// CgroupsPath is the container's cgroup.
	CgroupsPath string
	// Volumes maps a pod volume's name to its directory in the guest.
	Volumes map[string]string
	// ResolvConf, when set, is a file in the guest bind-mounted read-only
	// as the container's /etc/resolv.conf (as the kubelet does).
	ResolvConf string
	// CPUCapacityMilli is the CPU the pod VM has (0: not known). A CPU
	// limit above it is capped to it: it could not give more anyway, as a
	// node's container limited above the node's CPUs gets no more, and a
	// cgroup v1 hierarchy refuses a child's quota above its parent's (the
	// VM's cgroup where the VM is a simulated guest).
	CPUCapacityMilli int64
}

// OCIVersion is the ociVersion the bundles declare: every field they use
// exists in runtime-spec 1.0.2, and crun 1.8 (Debian 12) refuses a version
// it does not know, such as the 1.3.0 of the types' module.
const OCIVersion = "1.0.2"

// DefaultPath is the PATH of a container whose image sets none (the value
// container runtimes use).
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Args resolves the process arguments as Kubernetes does: Command replaces
// the image's Entrypoint (and then the image's Cmd is ignored), Args
// replaces the image's Cmd.
func Args(c *guestchannel.Container) ([]string, error) {
	var args []string
	switch {
	case len(c.Command) > 0:
		args = append(append(args, c.Command...), c.Args...)
	case len(c.Args) > 0:
		args = append(append(args, c.Entrypoint...), c.Args...)
	default:
		args = append(append(args, c.Entrypoint...), c.Cmd...)
	}
	if len(args) == 0 {
		return nil, fmt.Errorf("container %s: command: neither the manifest nor the image says what to run", c.Name)
	}
	return args, nil
}

// ConfigError is a container whose settings cannot be made into a runtime
// spec with its image (a user the image does not know, runAsNonRoot for a
// container that would run as root): the kubelet's
// CreateContainerConfigError. No process was started, so it is no crash
// and no restart.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// Spec builds the runtime spec of c.
func Spec(c *guestchannel.Container, p Params) (*specs.Spec, error) {
	args, err := Args(c)
	if err != nil {
		return nil, err
	}
	user, err := resolveUser(c, p.Rootfs)
	if err != nil {
		return nil, &ConfigError{fmt.Errorf("container %s: user: %w", c.Name, err)}
	}
	if c.RunAsNonRoot && user.UID == 0 {
		return nil, &ConfigError{fmt.Errorf("container %s: securityContext.runAsNonRoot: it would run as root (uid 0, the image's user %q); set securityContext.runAsUser to a non-zero uid", c.Name, c.User)}
	}
	env := []string{}
	seen := map[string]bool{}
	for _, e := range c.Env {
		if e.Name == "" || strings.Contains(e.Name, "=") {
			return nil, fmt.Errorf("container %s: env: %q is not a variable name", c.Name, e.Name)
		}
		env = append(env, e.Name+"="+e.Value)
		seen[e.Name] = true
	}
	if !seen["PATH"] {
		env = append(env, "PATH="+DefaultPath)
	}
	if !seen["HOSTNAME"] {
		env = append(env, "HOSTNAME="+p.Hostname)
	}
	cwd := c.WorkingDir
	if cwd == "" {
		cwd = "/"
	}
	if !filepath.IsAbs(cwd) {
		return nil, fmt.Errorf("container %s: workingDir: %q is not absolute", c.Name, cwd)
	}
	caps := defaultCapabilities()
	s := &specs.Spec{
		Version: OCIVersion,
		Process: &specs.Process{
			Args: args,
			Env:  env,
			Cwd:  cwd,
			User: user,
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
			Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			// Containers in pod VMs never gain privileges (admission
			// refuses allowPrivilegeEscalation: true): setuid programs
			// run with their caller's.
			NoNewPrivileges: true,
		},
		Root:     &specs.Root{Path: p.Rootfs, Readonly: c.ReadOnlyRootFilesystem},
		Hostname: p.Hostname,
		Mounts:   defaultMounts(),
		Linux: &specs.Linux{
			CgroupsPath: p.CgroupsPath,
			Resources:   resources(&c.Resources, p.CPUCapacityMilli),
			// No network namespace: the pod's containers share the guest's.
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.MountNamespace},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
			},
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
				"/proc/scsi",
			},
			ReadonlyPaths: []string{
				"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
			},
		},
	}
	for i, vm := range c.VolumeMounts {
		src, ok := p.Volumes[vm.Name]
		if !ok {
			return nil, fmt.Errorf("container %s: volumeMounts[%d]: volume %q is not mounted in the guest", c.Name, i, vm.Name)
		}
		if !filepath.IsAbs(vm.MountPath) {
			return nil, fmt.Errorf("container %s: volumeMounts[%d].mountPath: %q is not absolute", c.Name, i, vm.MountPath)
		}
		opts := []string{"rbind", "rprivate"}
		if vm.ReadOnly {
			opts = append(opts, "ro")
		} else {
			opts = append(opts, "rw")
		}
		s.Mounts = append(s.Mounts, specs.Mount{Destination: vm.MountPath, Type: "bind", Source: src, Options: opts})
	}
	if p.ResolvConf != "" {
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: p.ResolvConf, Options: []string{"rbind", "rprivate", "ro"}})
	}
	return s, nil
}

// Write writes spec as dir/config.json.
func Write(dir string, s *specs.Spec) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(s, "", "\t")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600)
}

// cpuPeriod is the CFS period limits are expressed in (Kubernetes' 100 ms).
const cpuPeriod = 100000

func resources(r *guestchannel.Resources, capacityMilli int64) *specs.LinuxResources {
	res := &specs.LinuxResources{}
	if r.MemoryLimitBytes > 0 {
		limit := r.MemoryLimitBytes
		res.Memory = &specs.LinuxMemory{Limit: &limit, Swap: &limit} // swap = limit: no swap
	}
	if r.CPULimitMilli > 0 || r.CPURequestMilli > 0 {
		res.CPU = &specs.LinuxCPU{}
		if r.CPURequestMilli > 0 {
			shares := max(uint64(r.CPURequestMilli)*1024/1000, 2)
			res.CPU.Shares = &shares
		}
		if r.CPULimitMilli > 0 {
			limit := r.CPULimitMilli
			if capacityMilli > 0 {
				limit = min(limit, capacityMilli)
			}
			quota := max(limit*cpuPeriod/1000, 1000)
			period := uint64(cpuPeriod)
			res.CPU.Quota, res.CPU.Period = &quota, &period
		}
	}
	return res
}

// defaultCapabilities is containerd's default set, which Kubernetes
// containers get unless their securityContext says otherwise.
func defaultCapabilities() []string {
	return []string{
		"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
		"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
		"CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
	}
}

// defaultMounts are the mounts of `runc spec`.
func defaultMounts() []specs.Mount {
	return []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
	}
}

// resolveUser applies RunAsUser/RunAsGroup over the image's user, looking
// names up in the image's /etc/passwd and /etc/group.
func resolveUser(c *guestchannel.Container, rootfs string) (specs.User, error) {
	var u specs.User
	name, group, _ := strings.Cut(c.User, ":")
	gidKnown := false
	if name != "" {
		if id, err := strconv.ParseUint(name, 10, 32); err == nil {
			u.UID = uint32(id)
			if pw, ok := lookup(filepath.Join(rootfs, "etc/passwd"), 2, name); ok {
				if gid, err := strconv.ParseUint(pw[3], 10, 32); err == nil {
					u.GID, gidKnown = uint32(gid), true
				}
			}
		} else {
			pw, ok := lookup(filepath.Join(rootfs, "etc/passwd"), 0, name)
			if !ok {
				return u, fmt.Errorf("%q is not in the image's /etc/passwd", name)
			}
			uid, err1 := strconv.ParseUint(pw[2], 10, 32)
			gid, err2 := strconv.ParseUint(pw[3], 10, 32)
			if err := errors.Join(err1, err2); err != nil {
				return u, fmt.Errorf("/etc/passwd entry of %q: %w", name, err)
			}
			u.UID, u.GID, gidKnown = uint32(uid), uint32(gid), true
		}
	}
	if group != "" {
		if id, err := strconv.ParseUint(group, 10, 32); err == nil {
			u.GID = uint32(id)
		} else {
			gr, ok := lookup(filepath.Join(rootfs, "etc/group"), 0, group)
			if !ok {
				return u, fmt.Errorf("group %q is not in the image's /etc/group", group)
			}
			gid, err := strconv.ParseUint(gr[2], 10, 32)
			if err != nil {
				return u, fmt.Errorf("/etc/group entry of %q: %w", group, err)
			}
			u.GID = uint32(gid)
		}
		gidKnown = true
	}
	if c.RunAsUser != nil {
		u.UID = uint32(*c.RunAsUser)
		if !gidKnown && c.RunAsGroup == nil {
			u.GID = 0
		}
	}
	if c.RunAsGroup != nil {
		u.GID = uint32(*c.RunAsGroup)
	}
	return u, nil
}

// lookup finds the line of a passwd/group-style file whose field col is key.
func lookup(file string, col int, key string) ([]string, bool) {
	f, err := os.Open(file)
	if err != nil {
		return nil, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) >= 4 && fields[col] == key {
			return fields, true
		}
	}
	return nil, false
}
