package guest

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/podvisor/podvisor/agent/forkthread"
	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/shared/sim/segment"
)

// Config says how guests run.
type Config struct {
	// Agent is the program a guest runs as PID 1 (podvm-agent), started
	// with --boot-config <file>.
	Agent string
	// ChannelDir holds the host agents' sockets (<host>.sock); guests'
	// channels are forwarded there.
	ChannelDir string
	// Dir holds one directory per guest (boot config, console log, the
	// agent's state dir, the channel socket). The manager owns it: Close
	// removes it. Unix socket paths are limited to 107 bytes: keep it short.
	Dir string
	// StopGrace is how long a powered-off guest has between SIGTERM and
	// SIGKILL (default 5s).
	StopGrace time.Duration
	// Runtime is passed to the agent as BootConfig.Runtime (empty: the
	// agent picks runc or crun from PATH).
	Runtime string
	// Logger receives the manager's logs; nil discards them.
	Logger *slog.Logger
	// Fabric, when set, gives each VM's NICs a port (see package
	// segment); nil leaves guests with only their loopback.
	Fabric *segment.Fabric
	// SerialRootCAs are the roots a simulated host checks a TLS network
	// serial port's concentrator with (ssl:// and telnets:// ports); nil
	// refuses them.
	SerialRootCAs *x509.CertPool
}

// errClosed is what a power-on of a closed manager gets.
var errClosed = errors.New("guests: closed")

// DefaultStopGrace is Config.StopGrace's default.
const DefaultStopGrace = 5 * time.Second

// maxSocketPath is the longest unix socket path Linux accepts.
const maxSocketPath = 107

// launcher runs the step between the hypervisor's clone and the agent's
// exec that Go cannot run in a child: join the VM's cgroups (so that every
// process of the guest is counted from its first instruction). It then
// execs the agent, which stays PID 1. The agent's first act as PID 1 is to
// make every mount of its namespace private (a guest's mounts must never
// reach the host's namespace, as a VM's never do), before it mounts
// anything, so the launcher does not: a `mount --make-rprivate /` here was
// one more process per guest start, parsing the host's mount table.
//
// Before the exec it waits for the hypervisor's word on fd 3: the VM's
// NICs are created in the guest's network namespace once that namespace
// exists, and a VM's devices are all there when its guest starts.
const launcher = `agent=$0 boot=$1; shift
for f do echo 0 > "$f" || exit 125; done
read -r go <&3 && [ "$go" = go ] || exit 125
exec 3<&-
exec "$agent" --boot-config "$boot"`

// nativeLauncher boots a native VM's guest: the same first steps as
// launcher, and every mount made private (this launcher mounts the root
// itself), then the boot disk becomes the root (with /proc, a /run
// holding the guestinfo files, and a /dev of the few devices a minimal
// init uses plus the VM's data disks as block devices sdb, sdc, ...; devs
// lists them as name:major:minor) and its /sbin/init is exec'd, staying
// PID 1. chroot rather
// than pivot_root: the guest's mount namespace is its own, and nothing
// outside the root is reachable from it.
const nativeLauncher = `root=$0 disk=$1 info=$2 devs=$3; shift 3
for f do echo 0 > "$f" || exit 125; done
mount --make-rprivate / || exit 125
read -r go <&3 && [ "$go" = go ] || exit 125
exec 3<&-
mount -o loop "$disk" "$root" || exit 125
mkdir -p "$root/proc" "$root/run" "$root/dev" "$root/tmp" || exit 125
mount -t proc proc "$root/proc" || exit 125
mount -t tmpfs -o mode=0755 run "$root/run" || exit 125
mkdir -p "$root` + GuestinfoDir + `" && cp -R "$info/." "$root` + GuestinfoDir + `/" || exit 125
mount -t tmpfs -o mode=0755 dev "$root/dev" || exit 125
for d in null zero random urandom; do touch "$root/dev/$d" && mount --bind "/dev/$d" "$root/dev/$d" || exit 125; done
for d in $devs; do n=${d%%:*} mm=${d#*:}; mknod "$root/dev/$n" b "${mm%:*}" "${mm#*:}" || exit 125; done
cd "$root" && exec chroot . /sbin/init`

// Check says why guests cannot run here, or nil: root, the agent binary,
// /bin/sh and mount for the launcher, and the cgroup v1 controllers.
func Check(cfg Config) error {
	if os.Geteuid() != 0 {
		return errors.New("simulated guests need root (namespaces, cgroups, loop devices); run as root")
	}
	if cfg.Agent == "" {
		return errors.New("no guest agent binary given (podvm-agent: build it with `make build`, or pass its path)")
	}
	if fi, err := os.Stat(cfg.Agent); err != nil {
		return fmt.Errorf("guest agent %s: %w (build it with `make build`)", cfg.Agent, err)
	} else if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("guest agent %s is not an executable file", cfg.Agent)
	}
	if _, err := os.Stat("/bin/sh"); err != nil {
		return fmt.Errorf("/bin/sh: %w", err)
	}
	if _, err := exec.LookPath("mount"); err != nil {
		return fmt.Errorf("mount is not on PATH: %w", err)
	}
	if cfg.ChannelDir == "" {
		return errors.New("no channel directory given (where host agents listen)")
	}
	if cfg.Dir == "" {
		return errors.New("no guest directory given")
	}
	if _, err := discoverCgroups(); err != nil {
		return err
	}
	return nil
}

// Disk is one virtual disk as the guest gets it.
type Disk struct {
	// Unit is the disk's address, "scsi0:0".
	Unit string
	// Path is the disk's flat extent file on the simulated datastore.
	Path string
	// CapacityBytes is the disk's configured size.
	CapacityBytes int64
	// ReadOnly disks (independent-nonpersistent image disks) are left as
	// they are; a read/write disk's extent is extended (sparse) to its
	// capacity, as a hypervisor presents a zero-filled device of that size.
	ReadOnly bool
	// Parent is the flat extent of the disk this one is a child of (a
	// delta disk over a shared base, such as a pre-formatted template), or
	// "". A read/write child whose own extent was never written starts
	// with its parent's content, as a hypervisor reads a delta disk's
	// unwritten blocks from its parent.
	Parent string
}

// NIC is one virtual network card as the guest gets it.
type NIC struct {
	// Segment is the port group the card is backed by (its key), "" for a
	// card on no distributed port group (never plugged).
	Segment string
	// MAC is the card's address.
	MAC string
}

// VM is what the hypervisor knows of a VM when it powers it on.
type VM struct {
	// Key identifies the VM in the simulator (its managed object id,
	// "vm-42"); it names the guest's directory and cgroup.
	Key  string
	Name string
	UUID string
	// Host is the host the VM runs on.
	Host     string
	NumCPU   int32
	MemoryMB int64
	Disks    []Disk
	// NICs in device order: the guest sees them as eth0, eth1, ….
	NICs []NIC
	// Spec is the guestinfo.podvisor.spec value.
	Spec string
	// ForkOf is the key of the VM this one was instant-cloned from: its
	// read/write disks are copy-on-write clones of that VM's, made while
	// its guest was paused, so this guest starts on a prepared filesystem.
	ForkOf string
	// Standby is the key of a standby guest (ClaimStandby) this VM's
	// guest takes over at power-on instead of booting.
	Standby string
	// SerialURI is the address of the VM's network serial port (a serial
	// port backed by a URI, direction client: the host connects to it; or
	// the port's proxy, telnet:// or telnets://, which the host connects
	// it to with the VMware telnet extension); the guest's agent talks to
	// its host side on that port instead of the hypervisor's socket.
	SerialURI string
	// SerialService is the service URI of a port behind a proxy, which
	// the host passes on to the proxy.
	SerialService string
	// Native, when set, makes this a native VM's guest: it boots its
	// operating system from a disk instead of running the pod VM agent.
	Native *Native
}

// Native is how a native VM's guest boots: the launcher mounts the boot
// disk's filesystem read/write as the guest's root and execs its
// /sbin/init as PID 1, as a VM's bootloader and kernel would. The VM's
// guestinfo.* values (cloud-init's VMware datasource reads
// guestinfo.userdata and guestinfo.metadata) are files in the guest's
// /run/vmware/guestinfo/<key>: what `vmware-rpctool "info-get <key>"`
// answers over the backdoor of a real VM, where simulated guests have no
// backdoor.
type Native struct {
	// BootDisk is the flat extent file of the boot disk (a filesystem a
	// stock kernel mounts: ext4 or erofs).
	BootDisk string
	// Guestinfo maps guestinfo.* keys to their values.
	Guestinfo map[string]string
}

// GuestinfoDir is where a native guest finds its guestinfo values.
const GuestinfoDir = "/run/vmware/guestinfo"

// Manager runs the guests of one simulated datacenter.
type Manager struct {
	cfg Config
	log *slog.Logger
	cg  *cgroups

	mu     sync.Mutex
	guests map[string]*guest
	frozen map[string]bool // hosts whose guests are frozen
	// starting holds the VMs whose guest boots now, outside mu (see
	// PowerOn); the channel is closed once the boot has ended either way.
	starting map[string]chan struct{}
	// starts counts the boots under way, so Close waits for them.
	starts sync.WaitGroup
	// awaiting counts the calls waiting for a boot (awaitStartLocked),
	// under mu: tests wait on it rather than on time.
	awaiting int
	// releaseDynMods undoes favorDynMods (dynmods.go) at Close.
	releaseDynMods func()
	// unmountDir unmounts the tmpfs on Config.Dir (rundir.go) at Close.
	unmountDir func()
	// slots bounds the boots under way at once.
	slots chan struct{}
	// standbys are the guests booted ahead of their VM (standby.go), by
	// their own key.
	standbys map[string]*guest
	closed   bool

	// beforeBoot, set by tests only, runs at the start of each boot.
	beforeBoot func(VM)

	// segMu guards carried: read while a guest boots outside mu.
	segMu sync.Mutex
	// carried is, per host, the segments (port group keys) the host
	// carries: a NIC is plugged only while its VM's host carries its port
	// group.
	carried map[string]map[string]bool

	// bases holds the content of the parent disks of delta disks
	// (delta.go).
	bases bases

	// published are the guests' ports published on this machine and the
	// balancers in front of several guests (forward.go), closed with the
	// manager.
	published map[forwarder]struct{}
	// reached are, by VM key, the addresses of this machine reachable
	// from inside each boot of its guest (forward.go).
	reached map[string][]*Reached
}

// parallelStarts is how many guests boot at once. A boot mostly waits
// (the clone of the guest's namespaces, the launcher's exec, the cgroup
// and veth set-up in the kernel), so a burst of power-ons goes faster
// with several under way; the bound keeps a burst of hundreds from
// forking them all at the same moment.
const parallelStarts = 8

type guest struct {
	vm      VM
	dir     string
	cmd     *exec.Cmd
	exited  chan struct{}
	cgroup  *vmCgroup
	channel guestChannel
	ports   []*segment.Port
	frozen  bool
	// standby is set while the guest is a standby: booted for a VM to
	// come (standby.go).
	standby *standbyState
	// resumed: the guest is a standby a VM took over (standby.go).
	resumed bool
	// updates is the write end of the agent's updates descriptor
	// (BootConfig.Updates, updatesFD in the guest), nil for a native
	// guest.
	updates   *os.File
	updatesFD string
	// reachedLn are the guest's listeners of its VM's Reached addresses
	// (forward.go), under the manager's lock.
	reachedLn map[*Reached]net.Listener
	// disks are a native guest's data disks (disks.go), nil for a pod
	// VM's guest.
	disks *dataDisks
}

var managers atomic.Int64

// New checks the environment (see Check) and prepares the cgroup that
// holds every guest of this manager.
func New(cfg Config) (*Manager, error) {
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = DefaultStopGrace
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := Check(cfg); err != nil {
		return nil, err
	}
	for _, d := range []string{cfg.Dir, cfg.ChannelDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("guests: %w", err)
		}
	}
	if n := len(filepath.Join(cfg.Dir, "vm-00000", "channel.sock")); n > maxSocketPath {
		return nil, fmt.Errorf("guests: directory %s is too long for unix sockets (%d bytes, limit %d)", cfg.Dir, n, maxSocketPath)
	}
	if err := os.MkdirAll(consolesOf(cfg.Dir), 0o750); err != nil {
		return nil, fmt.Errorf("guests: %w", err)
	}
	unmountDir, err := mountRunDir(cfg.Dir)
	if err != nil {
		_ = os.Remove(consolesOf(cfg.Dir))
		return nil, fmt.Errorf("guests: %w", err)
	}
	name := fmt.Sprintf("podvisor-guests-%d-%d", os.Getpid(), managers.Add(1))
	cg, err := newCgroups(name)
	if err != nil {
		unmountDir()
		_ = os.Remove(consolesOf(cfg.Dir))
		return nil, fmt.Errorf("guests: %w", err)
	}
	return &Manager{cfg: cfg, log: cfg.Logger, cg: cg, unmountDir: unmountDir, guests: map[string]*guest{}, frozen: map[string]bool{},
		starting: map[string]chan struct{}{}, slots: make(chan struct{}, parallelStarts),
		carried: map[string]map[string]bool{}, standbys: map[string]*guest{},
		releaseDynMods: favorDynMods(cfg.Logger)}, nil
}

// CgroupBase is the cgroup (same path in every v1 hierarchy) under which
// each guest gets its VM's cgroup, <base>/<vm key>.
func (m *Manager) CgroupBase() string { return m.cg.base }

// PowerOn starts a VM's guest: disks extended to their capacity, a boot
// config, the VM's cgroup, the channel, and the agent as PID 1 of new
// mount, pid, uts, ipc and net namespaces. A VM whose guest runs already
// is left alone; a VM whose guest is booting waits for that boot. It
// returns once the guest runs (see BeginPowerOn).
//
// Guests of different VMs boot in parallel (up to parallelStarts at once):
// the boot runs outside the manager's lock, and the guest is listed (and
// its NICs plugged and frozen as its host is) under the lock once it
// runs. Taking over a standby (VM.Standby) stays under the lock: it forks
// nothing.
func (m *Manager) PowerOn(vm VM) error { return <-m.BeginPowerOn(vm) }

// BeginPowerOn starts a VM's guest as PowerOn does, but returns as soon as
// the boot is under way, as a hypervisor's power-on ends when the VM runs
// and not when its guest has booted; the channel says how the boot ended.
// Until it has, what else is done to the VM's guest (PowerOff, Destroy,
// Move, Reconfigure, Pause, Guest) waits for it, so the order of a VM's
// operations is the order of the calls. A standby taken over, or a guest
// that runs already, is done before it returns.
func (m *Manager) BeginPowerOn(vm VM) <-chan error {
	res := make(chan error, 1)
	m.mu.Lock()
	if err := m.awaitStartLocked(vm.Key); err != nil {
		m.mu.Unlock()
		res <- err
		return res
	}
	if _, ok := m.guests[vm.Key]; ok {
		m.mu.Unlock()
		res <- nil
		return res
	}
	if g, ok := m.adoptStandbyLocked(vm); ok {
		m.listLocked(g)
		m.mu.Unlock()
		res <- nil
		return res
	}
	done := make(chan struct{})
	m.starting[vm.Key] = done
	m.starts.Add(1)
	m.mu.Unlock()
	go func() {
		defer m.starts.Done()
		res <- m.boot(vm, done)
	}()
	return res
}

// boot runs a fresh boot of vm's guest that BeginPowerOn registered as
// starting (done), then lists the guest.
func (m *Manager) boot(vm VM, done chan struct{}) error {
	m.slots <- struct{}{}
	g, err := m.start(vm, nil)
	<-m.slots

	m.mu.Lock()
	delete(m.starting, vm.Key)
	close(done)
	closed := m.closed
	if err == nil && !closed {
		m.listLocked(g)
	}
	m.mu.Unlock()
	if err != nil {
		return fmt.Errorf("guest of %s: %w", vm.Name, err)
	}
	if closed {
		// Closed while booting: Close waits for this boot, which stops its
		// own guest.
		if err := m.stop(g); err != nil {
			m.log.Warn("stop a guest booted while closing", "vm", vm.Name, "err", err)
		}
		return errClosed
	}
	return nil
}

// awaitStartLocked waits, releasing m.mu meanwhile, until no boot of the
// VM's guest is under way. It fails once the manager is closed.
func (m *Manager) awaitStartLocked(key string) error {
	for {
		if m.closed {
			return errClosed
		}
		done, ok := m.starting[key]
		if !ok {
			return nil
		}
		m.awaiting++
		m.mu.Unlock()
		<-done
		m.mu.Lock()
		m.awaiting--
	}
}

// listLocked makes a started guest the VM's: listed, its NICs plugged as
// its host carries their segments now (SetSegments may have changed them
// while it booted), frozen while its host is down. The caller holds m.mu.
func (m *Manager) listLocked(g *guest) {
	m.guests[g.vm.Key] = g
	m.plugLocked(g)
	m.openReachedLocked(g)
	if m.frozen[g.vm.Host] && !g.frozen {
		// Powered on while its host is down: it does not run until the host
		// comes back.
		m.freezeLocked(g, true)
	}
}

func (m *Manager) start(vm VM, takeover *os.File) (_ *guest, err error) {
	if m.beforeBoot != nil {
		m.beforeBoot(vm)
	}
	dir := filepath.Join(m.cfg.Dir, vm.Key)
	// A fresh boot: nothing of an earlier boot's state survives power-off.
	if err := m.removeDir(vm.Key); err != nil {
		return nil, err
	}
	stateDir := filepath.Join(dir, "state")
	if err := os.MkdirAll(stateDir, 0o750); err != nil {
		return nil, err
	}
	devices := map[string]string{}
	for _, d := range vm.Disks {
		if !d.ReadOnly {
			if err := m.bases.materialize(d.Path, d.Parent); err != nil {
				return nil, fmt.Errorf("disk %s: %w", d.Unit, err)
			}
			if err := extend(d.Path, d.CapacityBytes); err != nil {
				return nil, fmt.Errorf("disk %s: %w", d.Unit, err)
			}
		}
		devices[d.Unit] = d.Path
	}
	cg, err := m.cg.create(vm.Key, vm.NumCPU, vm.MemoryMB<<20)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = cg.remove()
		}
	}()
	if takeover != nil {
		// A standby boots at a low CPU weight from its first instruction:
		// it is booted while the instant clone that claimed the one before
		// it starts its containers, and must take little from them.
		if err := cg.write("cpu", "cpu.shares", strconv.Itoa(standbyShares)); err != nil {
			m.log.Warn("standby CPU weight", "vm", vm.Name, "err", err)
		}
	}
	// Every guest has a channel, an agent or not: it is how Move,
	// FreezeHost and power-off treat every guest alike. A VM with a
	// network serial port reaches its host side through it; any other
	// through the hypervisor's socket (vsock on a real host).
	sock := filepath.Join(dir, "channel.sock")
	addr := "unix:" + sock
	var ch guestChannel
	if vm.SerialURI != "" && vm.Native == nil {
		// A standby's line stays cut until a VM takes it over (adopt): it
		// is no VM's port yet, and connected it would be one more silent
		// line at the host agents' concentrator, asked for a hello it
		// cannot give.
		var line *serialLine
		line, err = openSerialLine(vm.SerialURI, portIdentity(vm), m.cfg.SerialRootCAs, takeover != nil, m.log.With("vm", vm.Name))
		if err == nil {
			ch, addr = line, "serial:"+line.device()
		}
	} else {
		ch, err = openChannel(sock, m.cfg.ChannelDir, vm.Host, m.log.With("vm", vm.Name))
	}
	if err != nil {
		return nil, fmt.Errorf("channel: %w", err)
	}
	defer func() {
		if err != nil {
			ch.close()
		}
	}()
	if vm.Native != nil {
		return m.startNative(vm, dir, cg, ch)
	}
	boot := guestchannel.BootConfig{
		Channel:      addr,
		Devices:      devices,
		StateDir:     stateDir,
		Runtime:      m.cfg.Runtime,
		CgroupParent: cg.path,
		VMUUID:       vm.UUID,
	}
	if vm.Spec != "" {
		boot.Spec = json.RawMessage(vm.Spec)
	}
	// The updates descriptor: where a reconfigure of the running VM
	// writes its spec again (Reconfigure).
	updatesR, updatesW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer updatesR.Close() // the agent has its own copy
	defer func() {
		if err != nil {
			updatesW.Close()
		}
	}()
	extra := []*os.File{updatesR}
	if takeover != nil {
		boot.Takeover, extra = takeoverFD, []*os.File{takeover, updatesR}
	}
	boot.Updates = fmt.Sprintf("fd:%d", 3+len(extra))
	data, err := json.MarshalIndent(boot, "", "  ")
	if err != nil {
		return nil, err
	}
	bootPath := filepath.Join(dir, "boot.json")
	if err := os.WriteFile(bootPath, data, 0o600); err != nil {
		return nil, err
	}
	args := append([]string{"-c", launcher, m.cfg.Agent, bootPath}, cg.procsFiles()...)
	g, err := m.launch(vm, dir, cg, ch, args, extra...)
	if err != nil {
		return nil, err
	}
	g.updates, g.updatesFD = updatesW, boot.Updates
	return g, nil
}

// startNative boots a native VM's guest (see Native).
func (m *Manager) startNative(vm VM, dir string, cg *vmCgroup, ch guestChannel) (*guest, error) {
	info := filepath.Join(dir, "guestinfo")
	root := filepath.Join(dir, "root")
	for _, d := range []string{info, root} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	for k, v := range vm.Native.Guestinfo {
		if strings.ContainsAny(k, "/\x00") || k == "." || k == ".." {
			continue
		}
		if err := os.WriteFile(filepath.Join(info, k), []byte(v), 0o600); err != nil {
			return nil, err
		}
	}
	disks, devs, err := attachDataDisks(vm)
	if err != nil {
		return nil, err
	}
	args := append([]string{"-c", nativeLauncher, root, vm.Native.BootDisk, info, strings.Join(devs, " ")}, cg.procsFiles()...)
	g, err := m.launch(vm, dir, cg, ch, args)
	if err != nil {
		disks.release(m.log)
		return nil, err
	}
	g.disks = disks
	// A guest whose init exits lets its disks go then, not at power-off.
	go func() {
		<-g.exited
		disks.release(m.log)
	}()
	return g, nil
}

// launch runs the launcher with args in the guest's new namespaces, plugs
// its NICs and lets it go on. The extra files are the guest's from fd 4.
func (m *Manager) launch(vm VM, dir string, cg *vmCgroup, ch guestChannel, args []string, extra ...*os.File) (*guest, error) {
	console, err := m.openConsole(dir)
	if err != nil {
		return nil, err
	}
	defer console.Close() // the child has its own copy
	cmd := exec.Command("/bin/sh", args...)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=/root"}
	cmd.Stdout, cmd.Stderr = console, console
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC | syscall.CLONE_NEWNET,
		// The guest dies with the process that runs the simulator.
		Pdeathsig: syscall.SIGKILL,
	}
	gate, release, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer release.Close()
	cmd.ExtraFiles = append([]*os.File{gate}, extra...)
	err = forkthread.Start(cmd) // Pdeathsig follows the forking thread, not the process
	gate.Close()
	if err != nil {
		return nil, fmt.Errorf("start agent: %w", err)
	}
	g := &guest{vm: vm, dir: dir, cmd: cmd, exited: make(chan struct{}), cgroup: cg, channel: ch}
	go func() {
		err := cmd.Wait()
		m.log.Info("guest stopped", "vm", vm.Name, "result", fmt.Sprint(err))
		close(g.exited)
	}()
	if err := m.addPorts(g); err != nil {
		_ = cmd.Process.Kill()
		<-g.exited
		m.removePorts(g)
		return nil, err
	}
	if _, err := release.Write([]byte("go\n")); err != nil {
		_ = cmd.Process.Kill()
		<-g.exited
		m.removePorts(g)
		return nil, fmt.Errorf("release the guest's launcher: %w", err)
	}
	m.log.Info("guest started", "vm", vm.Name, "host", vm.Host, "pid", cmd.Process.Pid, "cgroup", cg.path, "forkOf", vm.ForkOf)
	return g, nil
}

// extend makes a read/write disk's extent file its capacity, sparse; it
// never shrinks one.
func extend(path string, capacity int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() < capacity {
		return f.Truncate(capacity)
	}
	return nil
}

// PowerOff stops a VM's guest as a hard power-off does, but gives the agent
// a moment: SIGTERM, StopGrace, then SIGKILL of the whole guest. It returns
// once no process of the guest is left and its cgroup and channel are
// gone. The guest's directory stays until Destroy.
func (m *Manager) PowerOff(key string) error {
	m.mu.Lock()
	// A guest still booting is stopped once it runs (closed: Close stops
	// it).
	_ = m.awaitStartLocked(key)
	g, ok := m.guests[key]
	if ok {
		delete(m.guests, key)
	}
	// Standbys of this VM go with it: they were booted from its disks.
	standbys := m.standbysOf(key)
	m.mu.Unlock()
	m.dropStandbys(standbys)
	if !ok {
		return nil
	}
	return m.stop(g)
}

func (m *Manager) stop(g *guest) error {
	g.channel.close()
	if g.updates != nil {
		g.updates.Close()
	}
	if g.frozen {
		// A frozen process takes no signal, not even SIGKILL.
		if err := g.cgroup.freeze(false); err != nil {
			m.log.Warn("thaw before power-off", "vm", g.vm.Name, "err", err)
		}
	}
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.exited:
	case <-time.After(m.cfg.StopGrace):
		// PID 1 of a pid namespace takes down every process in it.
		_ = g.cmd.Process.Kill()
	}
	errs := []error{g.cgroup.killAll(time.Now().Add(10 * time.Second))}
	<-g.exited
	m.removePorts(g)
	if g.disks != nil {
		// Power-off ends with the loop devices gone, not some time after.
		g.disks.release(m.log)
	}
	errs = append(errs, g.cgroup.remove())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("power off guest of %s: %w", g.vm.Name, err)
	}
	return nil
}

// Destroy removes a VM's guest directory (after powering the guest off if
// it still runs).
func (m *Manager) Destroy(key string) error {
	err := m.PowerOff(key)
	if rmErr := m.removeDir(key); rmErr != nil {
		err = errors.Join(err, rmErr)
	}
	return err
}

// Move routes a guest's channel to another host, as a relocation does; its
// open connections end and the agent dials again.
func (m *Manager) Move(key, host string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	_ = m.awaitStartLocked(key) // a guest booting moves once it runs
	g, ok := m.guests[key]
	if !ok {
		return
	}
	g.vm.Host = host
	g.channel.route(host)
	m.plugLocked(g)
	if g.frozen != m.frozen[host] {
		m.freezeLocked(g, m.frozen[host])
	}
}

// FreezeHost freezes the guests of a failed host and cuts their channels;
// ThawHost undoes it when the host recovers.
func (m *Manager) FreezeHost(host string) { m.setHostFrozen(host, true) }

// ThawHost resumes the guests FreezeHost froze.
func (m *Manager) ThawHost(host string) { m.setHostFrozen(host, false) }

func (m *Manager) setHostFrozen(host string, frozen bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if frozen {
		m.frozen[host] = true
	} else {
		delete(m.frozen, host)
	}
	for _, g := range m.guests {
		if g.vm.Host == host && g.frozen != frozen {
			m.freezeLocked(g, frozen)
		}
	}
}

func (m *Manager) freezeLocked(g *guest, frozen bool) {
	g.channel.setCut(frozen)
	if err := g.cgroup.freeze(frozen); err != nil {
		m.log.Warn("guest freezer", "vm", g.vm.Name, "frozen", frozen, "err", err)
		return
	}
	g.frozen = frozen
}

// Pause freezes a running guest (freezer cgroup) until the returned resume
// is called: what a hypervisor does to a VM while it takes a consistent
// copy of its disks (an instant clone's fork point). A guest that is not
// running, or is frozen already (its host failed), is left as it is.
func (m *Manager) Pause(key string) (resume func(), err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	_ = m.awaitStartLocked(key) // a guest booting is paused once it runs
	g, ok := m.guests[key]
	if !ok || g.frozen {
		return func() {}, nil
	}
	if err := g.cgroup.freeze(true); err != nil {
		return nil, fmt.Errorf("pause guest of %s: %w", g.vm.Name, err)
	}
	return func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if !g.frozen {
			if err := g.cgroup.freeze(false); err != nil {
				m.log.Warn("resume guest", "vm", g.vm.Name, "err", err)
			}
		}
	}, nil
}

// Info describes a running guest.
type Info struct {
	VM  VM
	Dir string
	// PID is the guest's PID 1 as this process sees it.
	PID int
	// Cgroup is the VM's cgroup path (the same in every hierarchy);
	// CgroupDirs maps the controllers cpu, memory, pids and freezer to its
	// directory.
	Cgroup     string
	CgroupDirs map[string]string
	Frozen     bool
	// Connections counts the channel connections forwarded now.
	Connections int
	// Resumed says the guest did not boot: it is a standby the VM took
	// over at power-on (an instant clone's child).
	Resumed bool
}

// Guest describes the running guest of a VM; a guest booting is described
// once it runs.
func (m *Manager) Guest(key string) (Info, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	_ = m.awaitStartLocked(key)
	g, ok := m.guests[key]
	if !ok {
		return Info{}, false
	}
	return m.infoLocked(g), true
}

func (m *Manager) infoLocked(g *guest) Info {
	dirs := map[string]string{}
	for _, c := range requiredControllers {
		dirs[c] = g.cgroup.Dir(c)
	}
	return Info{VM: g.vm, Dir: g.dir, PID: g.cmd.Process.Pid, Cgroup: g.cgroup.path, CgroupDirs: dirs,
		Frozen: g.frozen, Connections: g.channel.connections(), Resumed: g.resumed}
}

// Running lists the keys of the VMs whose guest runs.
func (m *Manager) Running() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.guests))
	for k := range m.guests {
		out = append(out, k)
	}
	return out
}

// Close stops every guest, removes the guest directory (Config.Dir) and the
// manager's cgroups. It is safe to call twice.
func (m *Manager) Close() {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	guests := m.guests
	m.guests = map[string]*guest{}
	standbys := m.standbysOf("")
	published := m.published
	m.mu.Unlock()
	for p := range published {
		p.Close()
	}
	m.dropStandbys(standbys)
	var wg sync.WaitGroup
	for key, g := range guests {
		wg.Go(func() {
			if err := m.stop(g); err != nil {
				m.log.Warn("close guest", "vm", g.vm.Name, "err", err)
			}
			_ = os.RemoveAll(filepath.Join(m.cfg.Dir, key))
		})
	}
	wg.Wait()
	// Boots under way stop their own guest when they see the manager
	// closed.
	m.starts.Wait()
	m.unmountDir()
	_ = os.RemoveAll(m.cfg.Dir)
	_ = os.RemoveAll(m.consoles())
	m.cg.close()
	m.releaseDynMods()
}
