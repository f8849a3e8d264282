package guest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/podvisor/podvisor/agent/guestchannel"
)

// Standby guests: what an instant clone's child resumes from.
//
// On vSphere the child of an instant clone resumes the parent's running
// guest: its kernel booted, its agent started, its disks mounted. A
// simulated guest cannot be copied while it runs (this kernel has no
// working checkpoint/restore, and a Go agent cannot fork itself), so the
// hypervisor boots that state ahead of time instead: a standby is a guest
// booted from copies of a parent VM's disks, its agent past init with the
// disks mounted and the runtime found, waiting (BootConfig.Takeover) for
// the VM that will own it. An instant clone claims the parent's standby,
// moves its disk copies to the child's names (the mounts stay: they are
// the same files) and powers the child on: the child's guest is the
// standby, handed the child's own configuration — its spec, its VM uuid,
// its channel, its cards (plugged into the standby's network namespace
// before the agent hears of them) — and its cgroup renamed and sized as
// the child's. The agent checks that the disks it mounted are the child's
// very files and otherwise mounts the child's afresh.
//
// A standby waits at a low CPU weight (standbyShares) so that booting the
// next one takes little from the guests running; the child gets the
// default weight back.

// takeoverFD is the descriptor a standby's agent reads its owner's boot
// configuration from: launch's extra files start at fd 4 (fd 3 is the
// launcher's gate).
const takeoverFD = "fd:4"

// standbyShares is a standby's cpu.shares until it is taken over
// (1024 is the default of every other guest).
const (
	standbyShares = 128
	defaultShares = 1024
)

var standbys atomic.Int64

// standbyState is what a standby keeps until a VM takes it over.
type standbyState struct {
	parent  string
	claimed bool
	// prepared says its agent was seen holding its disks (guest.prepared).
	prepared bool
	// takeover is the write end of the agent's takeover descriptor.
	takeover *os.File
}

// StartStandby boots a standby guest for VMs instant-cloned from parent
// (a VM key). vm is the parent as its guest sees it, each read/write
// disk's Path replaced by a copy that belongs to the standby from now on
// (removed with it unless claimed). It returns the standby's key.
func (m *Manager) StartStandby(parent string, vm VM) (string, error) {
	if vm.Native != nil || vm.Spec == "" {
		return "", errors.New("only a pod VM's guest (its agent) can stand by")
	}
	r, w, err := os.Pipe()
	if err != nil {
		return "", err
	}
	defer r.Close() // the agent has its own copy
	vm.Key = "sb-" + strconv.FormatInt(standbys.Add(1), 10)
	vm.Name = "standby of " + vm.Name
	vm.NICs, vm.ForkOf, vm.Standby = nil, "", ""
	// The boot runs outside the manager's lock, as PowerOn's does: it
	// takes milliseconds (a process in new namespaces), and the lock is
	// what every running guest's reconfigure, power-on and takeover waits
	// for (measured: the network of a pod forked before it reached its
	// guest 15-40 ms after the reconfigure while its template's next
	// standby booted under the lock). The key is new: nothing else boots
	// or lists it meanwhile.
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		w.Close()
		return "", errClosed
	}
	m.starts.Add(1)
	m.mu.Unlock()
	defer m.starts.Done()
	m.slots <- struct{}{}
	g, err := m.start(vm, r) // at standbyShares from the start
	<-m.slots
	if err != nil {
		w.Close()
		return "", fmt.Errorf("standby of %s: %w", parent, err)
	}
	g.standby = &standbyState{parent: parent, takeover: w}
	m.mu.Lock()
	closed := m.closed
	_, parentRuns := m.guests[parent]
	if !closed && parentRuns {
		m.standbys[vm.Key] = g
	}
	m.mu.Unlock()
	switch {
	case closed:
		// Closed while booting: Close waits for this boot, which stops
		// its own guest.
		m.dropStandbys([]*guest{g})
		return "", errClosed
	case !parentRuns:
		// The parent stopped while its standby booted: nothing will
		// claim it.
		m.dropStandbys([]*guest{g})
		return "", fmt.Errorf("standby of %s: the parent's guest stopped while it booted", parent)
	}
	return vm.Key, nil
}

// Standby is a claimed standby guest.
type Standby struct {
	// Key names it for VM.Standby.
	Key string
	// Disks are the disks it booted from; the read/write ones are the
	// caller's to move to the owning VM's names (or to remove).
	Disks []Disk
}

// ClaimStandby takes a running, prepared standby of parent for a VM
// being made from it; ok is false when parent has none (or its standby
// is still preparing). The caller powers the VM on with VM.Standby set to
// its key, or drops it (DropStandby).
func (m *Manager) ClaimStandby(parent string) (Standby, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for key, g := range m.standbys {
		if g.standby.parent != parent || g.standby.claimed || !g.prepared() {
			continue
		}
		select {
		case <-g.exited:
			continue // its agent failed: dropped with its parent
		default:
		}
		g.standby.claimed = true
		return Standby{Key: key, Disks: append([]Disk(nil), g.vm.Disks...)}, true
	}
	return Standby{}, false
}

// HasStandby says whether parent has a standby, claimed or not.
func (m *Manager) HasStandby(parent string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, g := range m.standbys {
		if g.standby.parent == parent {
			return true
		}
	}
	return false
}

// Standby describes parent's unclaimed standby once it is prepared (what
// ClaimStandby would take).
func (m *Manager) Standby(parent string) (Info, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, g := range m.standbys {
		if g.standby.parent == parent && !g.standby.claimed && g.prepared() {
			return m.infoLocked(g), true
		}
	}
	return Info{}, false
}

// prepared reports whether a standby's agent holds its read/write disks:
// each one is the backing file of a loop device mounted in the guest (the
// agent opens its disks by name, attaches and mounts them, and only then
// waits to be taken over). Until then a claim, which moves the disk files
// to the owning VM's names, would pull them from under the agent: it
// fails, and the VM boots after all.
//
// It reads the guest's mount table and the loop devices it names, not
// every loop device of the machine: /sys/block holds one entry per loop
// device ever made (hundreds on a machine that runs many guests), and a
// scan of them all took 20–110 ms under the manager's lock on each claim,
// on the instant clone's critical path. Once prepared, a standby stays so
// until it is claimed (its agent holds the disks until it is taken over,
// and one that exits is dropped), so the answer is kept. The caller holds
// m.mu.
func (g *guest) prepared() bool {
	if g.standby != nil && g.standby.prepared {
		return true
	}
	want := map[string]bool{}
	for _, d := range g.vm.Disks {
		if !d.ReadOnly {
			want[d.Path] = true
		}
	}
	if len(want) > 0 {
		for _, f := range loopBackingFiles(g.cmd.Process.Pid) {
			delete(want, f)
		}
	}
	ok := len(want) == 0
	if ok && g.standby != nil {
		g.standby.prepared = true
	}
	return ok
}

// loopBackingFiles returns the backing files of the loop devices whose
// filesystems are mounted in the mount namespace of process pid: each
// mount's device number (mountinfo's third field) leads to its block
// device in /sys/dev/block, which has a loop/backing_file when it is a
// loop device.
func loopBackingFiles(pid int) []string {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "mountinfo"))
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || seen[f[2]] || strings.HasPrefix(f[2], "0:") {
			continue // no line, seen, or no block device (tmpfs, proc, overlay)
		}
		seen[f[2]] = true
		if b, err := os.ReadFile(filepath.Join("/sys/dev/block", f[2], "loop", "backing_file")); err == nil {
			out = append(out, strings.TrimSpace(string(b)))
		}
	}
	return out
}

// DropStandby stops a claimed standby that no VM took over and removes
// its directory; its disks are the caller's.
func (m *Manager) DropStandby(key string) {
	m.mu.Lock()
	g, ok := m.standbys[key]
	delete(m.standbys, key)
	m.mu.Unlock()
	if ok {
		m.discard(g, false)
	}
}

// standbysOf takes out of the pool the standbys of parent ("": all). The
// caller holds m.mu and drops them after unlocking.
func (m *Manager) standbysOf(parent string) []*guest {
	var out []*guest
	for key, g := range m.standbys {
		if parent == "" || g.standby.parent == parent {
			out = append(out, g)
			delete(m.standbys, key)
		}
	}
	return out
}

func (m *Manager) dropStandbys(gs []*guest) {
	for _, g := range gs {
		m.discard(g, !g.standby.claimed)
	}
}

// discard stops a standby that no VM took over, removes its directory
// and, when it still owns them, its read/write disk copies.
func (m *Manager) discard(g *guest, disks bool) {
	g.standby.takeover.Close() // an agent still waiting gets EOF and a bad config
	if err := m.stop(g); err != nil {
		m.log.Warn("stop standby", "vm", g.vm.Name, "err", err)
	}
	_ = os.RemoveAll(g.dir)
	_ = m.removeConsole(filepath.Base(g.dir))
	if disks {
		for _, d := range g.vm.Disks {
			if !d.ReadOnly {
				_ = os.Remove(d.Path)
			}
		}
	}
}

// adoptStandbyLocked starts vm's guest by taking over its standby when it
// names one that still runs; ok is false when the caller must boot it
// (no standby named, gone, or not taken over). The caller holds m.mu.
func (m *Manager) adoptStandbyLocked(vm VM) (_ *guest, ok bool) {
	if vm.Standby == "" {
		return nil, false
	}
	g, ok := m.standbys[vm.Standby]
	delete(m.standbys, vm.Standby)
	if !ok {
		m.log.Warn("standby gone: booting", "vm", vm.Name, "standby", vm.Standby)
		return nil, false
	}
	if err := m.adopt(g, vm); err != nil {
		// Stopped before the boot: its cgroup may carry the VM's name.
		m.log.Warn("standby not taken over: booting", "vm", vm.Name, "standby", vm.Standby, "err", err)
		m.discard(g, false)
		return nil, false
	}
	return g, true
}

// adopt hands a standby to vm: its cgroup renamed and sized as the VM's,
// its channel routed to the VM's host (a network serial port connected
// from there), the VM's cards in its network namespace, then the VM's boot
// configuration on the takeover descriptor.
func (m *Manager) adopt(g *guest, vm VM) error {
	select {
	case <-g.exited:
		return errors.New("its agent has stopped")
	default:
	}
	if vm.SerialURI != g.vm.SerialURI {
		// The standby's channel is its parent's kind, made at its boot: a
		// serial device connecting to the parent's address, or the
		// hypervisor's socket.
		return fmt.Errorf("the VM's network serial port %q is not the standby's %q", vm.SerialURI, g.vm.SerialURI)
	}
	for _, d := range vm.Disks {
		if !d.ReadOnly {
			if err := extend(d.Path, d.CapacityBytes); err != nil {
				return fmt.Errorf("disk %s: %w", d.Unit, err)
			}
		}
	}
	if err := g.cgroup.rename(vm.Key); err != nil {
		return err
	}
	if err := g.cgroup.size(vm.NumCPU, vm.MemoryMB<<20); err != nil {
		return err
	}
	if err := g.cgroup.write("cpu", "cpu.shares", strconv.Itoa(defaultShares)); err != nil {
		return err
	}
	sb := g.standby
	g.vm, g.standby, g.resumed = vm, nil, true
	if line, ok := g.channel.(*serialLine); ok {
		// The port is the child's now: its host names the child to a
		// proxy.
		line.setIdentity(portIdentity(vm))
	}
	g.channel.route(vm.Host)
	// The agent talks on the channel the standby was booted with: its
	// serial device, whose line the VM's host connects from now on (as a
	// power-on does, before the agent runs: the concentrator's resync
	// waits in the device), or the hypervisor's socket.
	channel := "unix:" + filepath.Join(g.dir, "channel.sock")
	if line, ok := g.channel.(*serialLine); ok {
		channel = "serial:" + line.device()
		line.setCut(false)
	}
	if err := m.addPorts(g); err != nil {
		return err
	}
	devices := map[string]string{}
	for _, d := range vm.Disks {
		devices[d.Unit] = d.Path
	}
	boot := guestchannel.BootConfig{
		Channel:      channel,
		Devices:      devices,
		StateDir:     filepath.Join(g.dir, "state"),
		Runtime:      m.cfg.Runtime,
		CgroupParent: g.cgroup.path,
		VMUUID:       vm.UUID,
		Spec:         json.RawMessage(vm.Spec),
		Updates:      g.updatesFD,
	}
	data, err := json.MarshalIndent(boot, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(g.dir, "boot.json"), data, 0o600); err != nil {
		return err
	}
	// The VM's directory name leads to the guest's.
	if err := os.Symlink(filepath.Base(g.dir), filepath.Join(m.cfg.Dir, vm.Key)); err != nil {
		return err
	}
	_, werr := sb.takeover.Write(data)
	if err := errors.Join(werr, sb.takeover.Close()); err != nil {
		return fmt.Errorf("hand over to the standby's agent: %w", err)
	}
	if m.frozen[vm.Host] {
		m.freezeLocked(g, true)
	}
	m.log.Info("guest started from a standby", "vm", vm.Name, "host", vm.Host, "pid", g.cmd.Process.Pid, "cgroup", g.cgroup.path, "forkOf", vm.ForkOf)
	return nil
}

// removeDir removes a VM's guest directory, and the standby's directory it
// leads to when the guest was a standby.
func (m *Manager) removeDir(key string) error {
	dir := filepath.Join(m.cfg.Dir, key)
	var errs []error
	if target, err := os.Readlink(dir); err == nil {
		errs = append(errs, os.RemoveAll(filepath.Join(m.cfg.Dir, filepath.Base(target))), m.removeConsole(filepath.Base(target)))
	}
	return errors.Join(append(errs, os.RemoveAll(dir), m.removeConsole(key))...)
}

// rename moves the VM's cgroup to <base>/<key> in every hierarchy, its
// processes with it.
func (v *vmCgroup) rename(key string) error {
	to := v.cg.base + "/" + key
	for i, h := range v.cg.hier {
		if err := os.Rename(h.dir(v.path), h.dir(to)); err != nil {
			for _, done := range v.cg.hier[:i] {
				_ = os.Rename(done.dir(to), done.dir(v.path))
			}
			return fmt.Errorf("rename cgroup %s to %s: %w", v.path, to, err)
		}
	}
	v.path = to
	return nil
}
