package qemu

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/podvisor/podvisor/agent/forkthread"
)

// Machine is a running QEMU.
type Machine struct {
	// Exited receives QEMU's end.
	Exited <-chan error
	// Console is the first serial port's file: the kernel's console.
	Console string
	// Disks are the machine's.
	Disks Disks
	// Forked is how the fork that made this machine went (nil: a booted
	// machine).
	Forked *ForkTimes
	// monitor is the socket of QEMU's human monitor.
	monitor string
	// memory is the file a booted machine's RAM is mapped from, shared:
	// its guest's writes go to the file, which Fork's children map
	// privately. A child's RAM is private, so it has none and forks no
	// children of its own.
	memory string
	qemu   *exec.Cmd
	out    *syncBuffer
	done   chan struct{} // closed at QEMU's end, whoever received it on Exited
	close  sync.Once
}

// ForkTimes are the steps of a fork (Machine.Fork), in order.
type ForkTimes struct {
	// Stopped is the parent stopped and its ephemeral disk copied.
	Stopped time.Duration
	// Saved is the parent's devices' state saved (its RAM left out).
	Saved time.Duration
	// Loaded is the child's QEMU started, the state loaded and the child
	// continued.
	Loaded time.Duration
	// StateBytes is the saved state's size: the devices' state and the
	// firmware's small RAM blocks, a few hundred KiB.
	StateBytes int64
}

// Total is the fork's time from the parent's stop to the child's
// continuing.
func (f ForkTimes) Total() time.Duration { return f.Stopped + f.Saved + f.Loaded }

// memorySize is a pod VM's RAM, as QEMU's -m and its memory backend's size;
// memoryBytes is the same in bytes.
const (
	memorySize  = "512M"
	memoryBytes = 512 << 20
)

// maxStateBytes is the largest saved state a fork takes for its devices':
// one as large as the memory means the RAM was copied, not shared.
const maxStateBytes = 64 << 20

// memoryBackend is the QEMU arguments that put the machine's RAM on the
// file at path: shared (MAP_SHARED, a booted machine's) or private
// (MAP_PRIVATE, a child's: it reads the file's pages and its writes are
// copies of them, its own).
func memoryBackend(path string, shared bool) []string {
	share := "off"
	if shared {
		share = "on"
	}
	return []string{"-object", "memory-backend-file,id=mem,size=" + memorySize + ",mem-path=" + path + ",share=" + share,
		"-machine", "memory-backend=mem"}
}

// memoryFile makes the file a booted machine's RAM is mapped from, on
// /dev/shm where it has room for all of it (tmpfs: the guest's writes
// never go to a disk), else in dir: a guest writing past what /dev/shm
// holds would fault QEMU (SIGBUS), and dir goes with the run that made it.
func memoryFile(dir string) (string, error) {
	if shmFits("/dev/shm", memoryBytes) {
		dir = "/dev/shm"
	}
	f, err := os.CreateTemp(dir, "podvm-qemu-*.ram")
	if err != nil {
		return "", err
	}
	return f.Name(), f.Close()
}

// Boot starts QEMU (TCG, 1 vCPU, 512 MiB) on the disks as vSphere attaches
// a pod VM's: the boot disk on IDE, a paravirtual SCSI controller with the
// ephemeral disk at unit 0, the image disk read-only at unit 1 and the
// configuration disk at unit 15. The first serial port is the console, a
// file in dir; the second, the guest channel, is what channel says (QEMU
// arguments: a -serial option and whatever it refers to). The machine's
// RAM is a file it shares, for Fork. QEMU is killed when ctx ends or at
// Close, which also removes the RAM's file.
func Boot(ctx context.Context, dir string, d Disks, channel ...string) (*Machine, error) {
	mem, err := memoryFile(dir)
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	m, err := start(ctx, dir, d, append(memoryBackend(mem, true), channel...))
	if err != nil {
		_ = os.Remove(mem)
		return nil, fmt.Errorf("boot: %w", err)
	}
	m.memory = mem
	return m, nil
}

// start runs QEMU on d with the extra arguments, its monitor on a socket
// in dir.
func start(ctx context.Context, dir string, d Disks, extra []string) (*Machine, error) {
	console := filepath.Join(dir, "console.log")
	monitor := filepath.Join(dir, "monitor.sock")
	args := []string{"-accel", "tcg", "-m", memorySize, "-smp", "1", "-nodefaults", "-display", "none", "-no-reboot",
		"-drive", "file=" + d.Boot.Flat + ",format=raw,if=ide,snapshot=on",
		"-device", "pvscsi,id=pvscsi0",
		"-drive", "file=" + d.Ephemeral + ",format=raw,if=none,id=eph",
		"-device", "scsi-hd,bus=pvscsi0.0,scsi-id=0,lun=0,drive=eph",
		"-drive", "file=" + d.Image + ",format=raw,if=none,id=layer,readonly=on",
		"-device", "scsi-hd,bus=pvscsi0.0,scsi-id=1,lun=0,drive=layer",
		"-drive", "file=" + d.Config + ",format=raw,if=none,id=cfg,readonly=on",
		"-device", "scsi-hd,bus=pvscsi0.0,scsi-id=15,lun=0,drive=cfg",
		"-serial", "file:" + console,
		"-monitor", "unix:" + monitor + ",server=on,wait=off",
	}
	qemu := exec.CommandContext(ctx, "qemu-system-x86_64", append(args, extra...)...)
	out := &syncBuffer{}
	qemu.Stdout, qemu.Stderr = out, out
	// QEMU dies with the process that started it (a killed bench, a test
	// run past its timeout), not left running on its RAM.
	qemu.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := forkthread.Start(qemu); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	m := &Machine{Exited: exited, Console: console, Disks: d, monitor: monitor, qemu: qemu, out: out, done: make(chan struct{})}
	go func() {
		exited <- qemu.Wait()
		close(m.done)
	}()
	return m, nil
}

// Close kills QEMU, waits for its end and removes a booted machine's RAM
// file (a child's mapping of it, private, goes on without the name).
func (m *Machine) Close() error {
	var err error
	m.close.Do(func() {
		_ = m.qemu.Process.Kill()
		<-m.done
		if m.memory != "" {
			if rerr := os.Remove(m.memory); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				err = rerr
			}
		}
	})
	return err
}

// Output is what QEMU printed so far (its errors, mostly).
func (m *Machine) Output() string { return m.out.String() }

// Fork makes a child of m as vSphere's instant clone of a frozen parent
// (VMFork) does, with what QEMU has. m's vCPUs are stopped for good, its
// read/write disk copied for the child (the image and boot disks are
// shared, read-only) and its devices saved, but not its memory: with the
// migration capability x-ignore-shared, RAM on a shared backend (the file
// Boot put it on) stays out of the saved state. A second QEMU maps that
// file privately, copy-on-write, loads the devices and resumes on the
// disk's copy and on a configuration disk of its own holding guestinfo (an
// instant clone's InstantCloneSpec.Config): the child's guest goes on from
// the parent's memory, page cache included, and finds what is its own only
// by reading its configuration again. m stays frozen, the child's
// template: a write of its guest would reach every page the child has not
// yet copied. extra are the child's further arguments (its channel); its
// files go in dir. The child's Forked holds the steps' times. Close the
// child before m: m's Close removes the RAM's file.
func (m *Machine) Fork(ctx context.Context, dir string, guestinfo map[string]string, extra ...string) (*Machine, error) {
	if m.memory == "" {
		return nil, errors.New("fork: only a booted machine forks (a child's RAM is its own, in no file to share)")
	}
	c, err := m.fork(ctx, dir, guestinfo, extra)
	if err != nil {
		return nil, fmt.Errorf("fork: %w", err)
	}
	return c, nil
}

func (m *Machine) fork(ctx context.Context, dir string, guestinfo map[string]string, extra []string) (*Machine, error) {
	var times ForkTimes
	begun := time.Now()
	if _, err := m.hmp("stop"); err != nil {
		return nil, err
	}
	child := m.Disks
	child.Ephemeral = filepath.Join(dir, "ephemeral-flat.vmdk")
	child.Config = filepath.Join(dir, "config.img")
	if err := run("cp", "--sparse=always", "--reflink=auto", m.Disks.Ephemeral, child.Ephemeral); err != nil {
		return nil, err
	}
	if err := writeConfig(child.Config, guestinfo); err != nil {
		return nil, err
	}
	state := filepath.Join(dir, "state")
	copied := time.Now()
	times.Stopped = copied.Sub(begun)
	if _, err := m.hmp("migrate_set_capability x-ignore-shared on"); err != nil {
		return nil, err
	}
	// Detached (-d): the monitor answers at once, and the loop below
	// watches the migration; a synchronous migrate answers only at the
	// monitor's next check of it, once a second, longer than the save.
	if _, err := m.hmp(`migrate -d "exec:cat > ` + state + `"`); err != nil {
		return nil, err
	}
	for {
		info, err := m.hmp("info migrate")
		if err != nil {
			return nil, err
		}
		if strings.Contains(info, "Migration status: completed") {
			break
		}
		if strings.Contains(info, "Migration status: failed") {
			return nil, fmt.Errorf("saving the parent's state: %s", info)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("saving the parent's state: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	// The RAM left out, what is saved is the devices' state and the
	// firmware's small RAM blocks (a few hundred KiB): a state as large as
	// the memory means the RAM was copied, not shared.
	st, err := os.Stat(state)
	if err != nil {
		return nil, err
	}
	if times.StateBytes = st.Size(); st.Size() > maxStateBytes {
		return nil, fmt.Errorf("the parent's saved state is %d MiB: its RAM was saved, not left in %s", st.Size()>>20, m.memory)
	}
	saved := time.Now()
	times.Saved = saved.Sub(copied)
	// The capability must be on at the child's end too before it loads
	// (the stream's RAM section differs with it): the child starts
	// waiting for an incoming migration and is given it once set.
	c, err := start(ctx, dir, child, append(memoryBackend(m.memory, false), append([]string{"-incoming", "defer"}, extra...)...))
	if err != nil {
		return nil, fmt.Errorf("starting the child: %w", err)
	}
	if err := c.load(ctx, state); err != nil {
		_ = c.Close()
		return nil, err
	}
	times.Loaded = time.Since(saved)
	c.Forked = &times
	return c, nil
}

// load gives a child started with -incoming defer the parent's state and
// continues it.
func (c *Machine) load(ctx context.Context, state string) error {
	for !c.monitorUp() {
		select {
		case err := <-c.Exited:
			return fmt.Errorf("the child's QEMU exited before its monitor opened: %v: %s", err, c.Output())
		case <-ctx.Done():
			return fmt.Errorf("starting the child: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if _, err := c.hmp("migrate_set_capability x-ignore-shared on"); err != nil {
		return err
	}
	if _, err := c.hmp(`migrate_incoming "exec:cat ` + state + `"`); err != nil {
		return err
	}
	// The saved machine was paused (for the disk's copy to match its
	// memory), and QEMU resumes a machine in the state it was saved in:
	// once loaded, the child is continued by hand.
	for {
		status, err := c.hmp("info status")
		if err != nil {
			return err
		}
		if !strings.Contains(status, "inmigrate") {
			break
		}
		select {
		case err := <-c.Exited:
			return fmt.Errorf("the child's QEMU exited while loading the parent's state: %v: %s", err, c.Output())
		case <-ctx.Done():
			return fmt.Errorf("loading the parent's state: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	_, err := c.hmp("cont")
	return err
}

// monitorUp says whether QEMU's monitor socket is there yet.
func (m *Machine) monitorUp() bool {
	_, err := os.Stat(m.monitor)
	return err == nil
}

// hmp runs one command on the machine's monitor and returns its output.
func (m *Machine) hmp(cmd string) (string, error) {
	return hmp(m.monitor, cmd)
}

// hmp runs one command on the human monitor at the unix socket path.
func hmp(path, cmd string) (string, error) {
	c, err := net.Dial("unix", path)
	if err != nil {
		return "", fmt.Errorf("monitor: %w", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	r := bufio.NewReader(c)
	// The monitor greets, then prompts "(qemu) " after each command's
	// output; the command is echoed back first.
	if _, err := readPrompt(r); err != nil {
		return "", fmt.Errorf("monitor: %w", err)
	}
	if _, err := c.Write([]byte(cmd + "\n")); err != nil {
		return "", fmt.Errorf("monitor: %w", err)
	}
	out, err := readPrompt(r)
	if err != nil {
		return "", fmt.Errorf("monitor %q: %w", cmd, err)
	}
	// A command that fails says so on a line of its own, and the monitor
	// goes on: nothing else would tell.
	if i := strings.Index(out, "\nError: "); i >= 0 {
		return out, fmt.Errorf("monitor %q: %s", cmd, strings.TrimSuffix(out[i+1:], prompt))
	}
	return out, nil
}

const prompt = "(qemu) "

func readPrompt(r *bufio.Reader) (string, error) {
	var b strings.Builder
	for !strings.HasSuffix(b.String(), prompt) {
		c, err := r.ReadByte()
		if err != nil {
			return b.String(), err
		}
		b.WriteByte(c)
	}
	return b.String(), nil
}

// syncBuffer is QEMU's output, read while QEMU may still write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
