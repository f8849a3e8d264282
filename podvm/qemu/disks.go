package qemu

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/podvisor/podvisor/agent/configdisk"
	"github.com/podvisor/podvisor/podvm/build"
)

// ChainID is the chain of the busybox image disk MakeImageDisk makes.
const ChainID = "sha256:0b1b9b3c2b0a5f0f4e1d2c3b4a5968778695a4b3c2d1e0f9e8d7c6b5a4938271"

// Tools are the executables that booting the image needs: QEMU, and what
// its build and the image disk's run.
var Tools = []string{"qemu-system-x86_64", "mkfs.erofs", "mformat", "mcopy", "syslinux", "runc", "busybox"}

// BIOS is the firmware QEMU boots the disk with (Debian's seabios).
const BIOS = "/usr/share/seabios/bios-256k.bin"

// Missing says what of Tools and BIOS is not here, "" when nothing is.
func Missing() string {
	var missing []string
	for _, tool := range Tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if _, err := os.Stat(BIOS); err != nil {
		missing = append(missing, "seabios ("+BIOS+")")
	}
	if len(missing) == 0 {
		return ""
	}
	return strings.Join(missing, ", ") + " not found"
}

// Disks are a pod VM's disks.
type Disks struct {
	// Boot is the boot image the tree builds (make podvm-image).
	Boot *build.Result
	// Ephemeral is disk 0's flat extent (scsi0:0), blank: the agent formats
	// it. Image is an image chain disk (scsi0:1, ChainID): busybox as a
	// one-layer image, an erofs filesystem as the image cache makes them.
	// Config is the configuration disk holding the guestinfo.
	Ephemeral, Image, Config string
}

// MakeDisks builds the boot image and a pod VM's disks in dir, the
// configuration disk holding guestinfo.
func MakeDisks(dir string, guestinfo map[string]string) (Disks, error) {
	boot, err := BuildBootImage(dir)
	if err != nil {
		return Disks{}, err
	}
	image := filepath.Join(dir, "layer-flat.vmdk")
	if err := MakeImageDisk(image, filepath.Join(dir, "layer")); err != nil {
		return Disks{}, err
	}
	return Disks{Boot: boot, Image: image}.For(dir, guestinfo)
}

// BuildBootImage builds the first stage and the agent from the source tree
// (in the repository's workspace: the go command builds them) and the boot
// image from them into dir, as make podvm-image does.
func BuildBootImage(dir string) (*build.Result, error) {
	init, agent, err := build.GoBinaries(filepath.Join(dir, "bin"))
	if err != nil {
		return nil, err
	}
	return build.Build(build.Config{Init: init, Agent: agent}, filepath.Join(dir, "image"))
}

// MakeImageDisk writes the image chain disk of ChainID to path: busybox
// (this machine's /bin/busybox, static) as a one-layer image, laid out in
// the directory layer first.
func MakeImageDisk(path, layer string) error {
	for _, sub := range []string{"bin", "etc", "proc", "dev", "tmp"} {
		if err := os.MkdirAll(filepath.Join(layer, sub), 0o755); err != nil {
			return err
		}
	}
	b, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(layer, "bin/busybox"), b, 0o755); err != nil {
		return err
	}
	if err := os.Symlink("busybox", filepath.Join(layer, "bin/sh")); err != nil && !os.IsExist(err) {
		return err
	}
	if err := run("mkfs.erofs", "-T0", "--all-root", path, layer); err != nil {
		return err
	}
	return padToSector(path)
}

// For returns the disks of another VM of the same image: d's boot and
// image disks (read-only to every VM: QEMU opens the boot disk with a
// snapshot of its own), and a blank ephemeral disk and a configuration
// disk holding guestinfo, made in dir.
func (d Disks) For(dir string, guestinfo map[string]string) (Disks, error) {
	d.Ephemeral, d.Config = filepath.Join(dir, "ephemeral-flat.vmdk"), filepath.Join(dir, "config.img")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Disks{}, err
	}
	if err := os.WriteFile(d.Ephemeral, nil, 0o644); err != nil {
		return Disks{}, err
	}
	if err := os.Truncate(d.Ephemeral, 256<<20); err != nil {
		return Disks{}, err
	}
	if err := writeConfig(d.Config, guestinfo); err != nil {
		return Disks{}, err
	}
	return d, nil
}

// writeConfig writes a configuration disk holding guestinfo.
func writeConfig(path string, guestinfo map[string]string) error {
	cfg, err := configdisk.Bytes(guestinfo)
	if err != nil {
		return err
	}
	if len(cfg) > 1<<20 {
		return fmt.Errorf("configuration disk: %d bytes of guestinfo, over its MiB", len(cfg))
	}
	// A whole MiB, as a datastore disk would be, so that the kernel's
	// partition probes find nothing to complain about.
	return os.WriteFile(path, append(cfg, make([]byte, 1<<20-len(cfg))...), 0o644)
}

func run(name string, args ...string) error {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

func padToSector(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if r := st.Size() % 512; r != 0 {
		return os.Truncate(p, st.Size()+512-r)
	}
	return nil
}
