package qemutest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

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

	cfg, err := configdisk.Bytes(guestinfo)
	must(t, err)
	// A whole MiB, as a datastore disk would be, so that the kernel's
	// partition probes find nothing to complain about.
	must(t, os.WriteFile(d.Config, append(cfg, make([]byte, 1<<20-len(cfg))...), 0o644))
	return d
}

// Machine is a running QEMU.
type Machine struct {
	// Exited receives QEMU's end.
	Exited <-chan error
	// Console is the first serial port's file: the kernel's console.
	Console string
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
	console := filepath.Join(dir, "console.log")
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
	}
	qemu := exec.CommandContext(ctx, "qemu-system-x86_64", append(args, channel...)...)
	var out bytes.Buffer
	qemu.Stdout, qemu.Stderr = &out, &out
	must(t, qemu.Start())
	exited := make(chan error, 1)
	go func() { exited <- qemu.Wait() }()
	t.Cleanup(func() {
		_ = qemu.Process.Kill()
		<-exited
		if t.Failed() {
			b, _ := os.ReadFile(console)
			t.Logf("qemu: %s\nconsole:\n%s", out.String(), b)
		}
	})
	return &Machine{Exited: exited, Console: console}
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
