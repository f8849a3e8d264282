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
}

// Boot starts QEMU (TCG, 1 vCPU, 512 MiB) on the disks as vSphere attaches
// a pod VM's: the boot disk on IDE, a paravirtual SCSI controller with the
// ephemeral disk at unit 0, the image disk read-only at unit 1 and the
// configuration disk at unit 15. The first serial port is the console; the
// second, the guest channel, is what channel says (QEMU arguments: a
// -serial option and whatever it refers to). QEMU is killed when the test
// ends, and the console logged if the test failed.
func Boot(t *testing.T, ctx context.Context, dir string, d Disks, channel ...string) *Machine {
	t.Helper()
	return start(t, ctx, dir, d, channel)
}

// start runs QEMU on d with the extra arguments, its monitor on a socket
// in dir.
func start(t *testing.T, ctx context.Context, dir string, d Disks, extra []string) *Machine {
	t.Helper()
	console := filepath.Join(dir, "console.log")
	monitor := filepath.Join(dir, "monitor.sock")
	args := []string{"-accel", "tcg", "-m", "512", "-smp", "1", "-nodefaults", "-display", "none", "-no-reboot",
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

// Fork makes a child of m as vSphere's instant clone does, with what QEMU
// has: m's vCPUs are stopped, its read/write disk copied for the child
// (the image and boot disks are shared, read-only), its memory and devices
// saved, and m runs on; then a second QEMU resumes the saved machine on
// the copy and on a configuration disk of its own holding guestinfo (an
// instant clone's InstantCloneSpec.Config): the child's guest goes on
// from the parent's memory, page cache included, and finds what is its
// own only by reading its configuration again. extra are the child's
// further arguments (its channel).
func (m *Machine) Fork(t *testing.T, ctx context.Context, dir string, guestinfo map[string]string, extra ...string) *Machine {
	t.Helper()
	m.hmp(t, "stop")
	child := m.Disks
	child.Ephemeral = filepath.Join(dir, "ephemeral-flat.vmdk")
	child.Config = filepath.Join(dir, "config.img")
	run(t, "cp", "--sparse=always", "--reflink=auto", m.Disks.Ephemeral, child.Ephemeral)
	writeConfig(t, child.Config, guestinfo)
	state := filepath.Join(dir, "state")
	m.hmp(t, `migrate "exec:cat > `+state+`"`)
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
	m.hmp(t, "cont")
	c := start(t, ctx, dir, child, append([]string{"-incoming", "exec:cat " + state}, extra...))
	// The saved machine was paused (for the disk's copy to match its
	// memory), and QEMU resumes a machine in the state it was saved in:
	// once loaded, the child is continued by hand.
	for {
		if c.monitorUp() && !strings.Contains(c.hmp(t, "info status"), "inmigrate") {
			break
		}
		select {
		case err := <-c.Exited:
			t.Fatalf("the child's QEMU exited while loading the parent's state: %v", err)
		case <-ctx.Done():
			t.Fatalf("loading the parent's state: %v", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	c.hmp(t, "cont")
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
