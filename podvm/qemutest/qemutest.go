package qemutest

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/configdisk"
	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/podvm/build"
)

// ChainID is the chain of the busybox image disk Disks makes.
const ChainID = "sha256:0b1b9b3c2b0a5f0f4e1d2c3b4a5968778695a4b3c2d1e0f9e8d7c6b5a4938271"

// Require skips the test, or fails it where root tests must run, unless
// QEMU and what the image's build needs are here.
func Require(t *testing.T) {
	t.Helper()
	privtest.RequireTools(t, "qemu-system-x86_64", "mkfs.erofs", "mformat", "mcopy", "syslinux", "runc", "busybox")
	if _, err := os.Stat("/usr/share/seabios/bios-256k.bin"); err != nil {
		privtest.RequireTools(t, "seabios (the BIOS QEMU boots the disk with)")
	}
}

// Disks are a pod VM's disks, made in a test's directory.
type Disks struct {
	// Boot is the boot image the tree builds (make podvm-image).
	Boot *build.Result
	// Ephemeral is disk 0's flat extent (scsi0:0), blank: the agent formats
	// it. Image is an image chain disk (scsi0:1, ChainID): busybox as a
	// one-layer image, an erofs filesystem as the image cache makes them.
	// Config is the configuration disk holding the guestinfo.
	Ephemeral, Image, Config string
}

// MakeDisks builds the boot image and the pod VM's disks in dir, the
// configuration disk holding guestinfo.
func MakeDisks(t *testing.T, dir string, guestinfo map[string]string) Disks {
	t.Helper()
	init, agent, err := build.GoBinaries(filepath.Join(dir, "bin"))
	must(t, err)
	d := Disks{Ephemeral: filepath.Join(dir, "ephemeral-flat.vmdk"), Image: filepath.Join(dir, "layer-flat.vmdk"),
		Config: filepath.Join(dir, "config.img")}
	d.Boot, err = build.Build(build.Config{Init: init, Agent: agent}, filepath.Join(dir, "image"))
	must(t, err)

	layer := filepath.Join(dir, "layer")
	for _, sub := range []string{"bin", "etc", "proc", "dev", "tmp"} {
		must(t, os.MkdirAll(filepath.Join(layer, sub), 0o755))
	}
	b, err := os.ReadFile("/bin/busybox")
	must(t, err)
	must(t, os.WriteFile(filepath.Join(layer, "bin/busybox"), b, 0o755))
	must(t, os.Symlink("busybox", filepath.Join(layer, "bin/sh")))
	run(t, "mkfs.erofs", "-T0", "--all-root", d.Image, layer)
	padToSector(t, d.Image)

	must(t, os.WriteFile(d.Ephemeral, nil, 0o644))
	must(t, os.Truncate(d.Ephemeral, 256<<20))

	writeConfig(t, d.Config, guestinfo)
	return d
}

// writeConfig writes a configuration disk holding guestinfo.
func writeConfig(t *testing.T, path string, guestinfo map[string]string) {
	t.Helper()
	cfg, err := configdisk.Bytes(guestinfo)
	must(t, err)
	// A whole MiB, as a datastore disk would be, so that the kernel's
	// partition probes find nothing to complain about.
	must(t, os.WriteFile(path, append(cfg, make([]byte, 1<<20-len(cfg))...), 0o644))
}

// Machine is a running QEMU.
type Machine struct {
	// Exited receives QEMU's end.
	Exited <-chan error
	// Console is the first serial port's file: the kernel's console.
	Console string
	// Disks are the machine's.
	Disks Disks
	// monitor is the socket of QEMU's human monitor.
	monitor string
	// memory is the file a booted machine's RAM is mapped from, shared:
	// its guest's writes go to the file, which Fork's children map
	// privately. A child's RAM is private, so it has none and forks no
	// children of its own.
	memory string
}

// memorySize is a pod VM's RAM, as QEMU's -m and its memory backend's size.
const memorySize = "512M"

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
// /dev/shm where there is one (tmpfs: the guest's writes never go to a
// disk), and removes it when the test ends.
func memoryFile(t *testing.T, dir string) string {
	t.Helper()
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		dir = "/dev/shm"
	}
	f, err := os.CreateTemp(dir, "qemutest-*.ram")
	must(t, err)
	must(t, f.Close())
	t.Cleanup(func() { _ = os.Remove(f.Name()) })
	return f.Name()
}

// Boot starts QEMU (TCG, 1 vCPU, 512 MiB) on the disks as vSphere attaches
// a pod VM's: the boot disk on IDE, a paravirtual SCSI controller with the
// ephemeral disk at unit 0, the image disk read-only at unit 1 and the
// configuration disk at unit 15. The first serial port is the console; the
// second, the guest channel, is what channel says (QEMU arguments: a
// -serial option and whatever it refers to). The machine's RAM is a file
// it shares, for Fork. QEMU is killed when the test ends, its RAM's file
// removed, and the console logged if the test failed.
func Boot(t *testing.T, ctx context.Context, dir string, d Disks, channel ...string) *Machine {
	t.Helper()
	// Made before QEMU starts, so removed after it is killed.
	mem := memoryFile(t, dir)
	m := start(t, ctx, dir, d, append(memoryBackend(mem, true), channel...))
	m.memory = mem
	return m
}

// start runs QEMU on d with the extra arguments, its monitor on a socket
// in dir.
func start(t *testing.T, ctx context.Context, dir string, d Disks, extra []string) *Machine {
	t.Helper()
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
	var out bytes.Buffer
	qemu.Stdout, qemu.Stderr = &out, &out
	must(t, qemu.Start())
	exited := make(chan error, 1)
	done := make(chan struct{}) // closed at QEMU's end, whoever received it on exited
	go func() {
		exited <- qemu.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		_ = qemu.Process.Kill()
		<-done
		if t.Failed() {
			b, _ := os.ReadFile(console)
			t.Logf("qemu: %s\nconsole:\n%s", out.String(), b)
		}
	})
	return &Machine{Exited: exited, Console: console, Disks: d, monitor: monitor}
}

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
// yet copied. extra are the child's further arguments (its channel).
func (m *Machine) Fork(t *testing.T, ctx context.Context, dir string, guestinfo map[string]string, extra ...string) *Machine {
	t.Helper()
	if m.memory == "" {
		t.Fatal("fork: only a booted machine forks (a child's RAM is its own, in no file to share)")
	}
	begun := time.Now()
	m.hmp(t, "stop")
	child := m.Disks
	child.Ephemeral = filepath.Join(dir, "ephemeral-flat.vmdk")
	child.Config = filepath.Join(dir, "config.img")
	run(t, "cp", "--sparse=always", "--reflink=auto", m.Disks.Ephemeral, child.Ephemeral)
	writeConfig(t, child.Config, guestinfo)
	state := filepath.Join(dir, "state")
	copied := time.Now()
	m.hmp(t, "migrate_set_capability x-ignore-shared on")
	// Detached (-d): the monitor answers at once, and the loop below
	// watches the migration; a synchronous migrate answers only at the
	// monitor's next check of it, once a second, longer than the save.
	m.hmp(t, `migrate -d "exec:cat > `+state+`"`)
	for {
		info := m.hmp(t, "info migrate")
		if strings.Contains(info, "Migration status: completed") {
			break
		}
		if strings.Contains(info, "Migration status: failed") {
			t.Fatalf("saving the parent's state: %s", info)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("saving the parent's state: %v", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	// The RAM left out, what is saved is the devices' state and the
	// firmware's small RAM blocks (a few hundred KiB): a state as large as
	// the memory means the RAM was copied, not shared.
	st, err := os.Stat(state)
	must(t, err)
	if st.Size() > 64<<20 {
		t.Fatalf("the parent's saved state is %d MiB: its RAM was saved, not left in %s", st.Size()>>20, m.memory)
	}
	saved := time.Now()
	// The capability must be on at the child's end too before it loads
	// (the stream's RAM section differs with it): the child starts
	// waiting for an incoming migration and is given it once set.
	c := start(t, ctx, dir, child, append(memoryBackend(m.memory, false), append([]string{"-incoming", "defer"}, extra...)...))
	for !c.monitorUp() {
		select {
		case err := <-c.Exited:
			t.Fatalf("the child's QEMU exited before its monitor opened: %v", err)
		case <-ctx.Done():
			t.Fatalf("starting the child: %v", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	c.hmp(t, "migrate_set_capability x-ignore-shared on")
	c.hmp(t, `migrate_incoming "exec:cat `+state+`"`)
	// The saved machine was paused (for the disk's copy to match its
	// memory), and QEMU resumes a machine in the state it was saved in:
	// once loaded, the child is continued by hand.
	for strings.Contains(c.hmp(t, "info status"), "inmigrate") {
		select {
		case err := <-c.Exited:
			t.Fatalf("the child's QEMU exited while loading the parent's state: %v", err)
		case <-ctx.Done():
			t.Fatalf("loading the parent's state: %v", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	c.hmp(t, "cont")
	t.Logf("fork: parent stopped and its disk copied %.2f s, its state saved %.2f s (%d KiB, its RAM left in %s), "+
		"the child started and loaded %.2f s", copied.Sub(begun).Seconds(), saved.Sub(copied).Seconds(), st.Size()>>10,
		m.memory, time.Since(saved).Seconds())
	return c
}

// monitorUp says whether QEMU's monitor socket is there yet.
func (m *Machine) monitorUp() bool {
	_, err := os.Stat(m.monitor)
	return err == nil
}

// hmp runs one command on the machine's monitor and returns its output.
func (m *Machine) hmp(t *testing.T, cmd string) string {
	t.Helper()
	c, err := net.Dial("unix", m.monitor)
	must(t, err)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	r := bufio.NewReader(c)
	// The monitor greets, then prompts "(qemu) " after each command's
	// output; the command is echoed back first.
	if _, err := readPrompt(r); err != nil {
		t.Fatalf("monitor: %v", err)
	}
	if _, err := c.Write([]byte(cmd + "\n")); err != nil {
		t.Fatalf("monitor: %v", err)
	}
	out, err := readPrompt(r)
	if err != nil {
		t.Fatalf("monitor %q: %v", cmd, err)
	}
	// A command that fails says so on a line of its own, and the monitor
	// goes on: nothing else would tell.
	if strings.Contains(out, "\nError: ") {
		t.Fatalf("monitor %q: %s", cmd, out[strings.Index(out, "\nError: ")+1:])
	}
	return out
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

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

func padToSector(t *testing.T, p string) {
	t.Helper()
	st, err := os.Stat(p)
	must(t, err)
	if r := st.Size() % 512; r != 0 {
		must(t, os.Truncate(p, st.Size()+512-r))
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
