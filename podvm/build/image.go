package build

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Modules a pod VM loads at boot (dependencies are added from modules.dep;
// crc32c_generic comes first because libcrc32c asks the crypto API for
// crc32c at load, a soft dependency modules.dep does not list):
// the paravirtual SCSI controller and disks, the filesystems of the
// ephemeral disk, the image disks and the containers' roots, loop devices,
// vsock to the host over VMCI, the paravirtual NIC and dm-crypt for an
// encrypted ephemeral disk.
var Modules = []string{
	"crc32c_generic", "vmw_pvscsi", "sd_mod", "ext4", "erofs", "overlay", "loop",
	"vmw_vsock_vmci_transport", "vmxnet3", "dm_crypt",
}

// Config says where the parts of the image come from.
type Config struct {
	// KernelRelease is the kernel's version (uname -r), such as
	// "6.1.0-57-amd64"; Kernel defaults to /boot/vmlinuz-<release> and
	// ModulesDir to /lib/modules/<release>.
	KernelRelease string
	Kernel        string
	ModulesDir    string
	// Init is the podvm-init binary, Agent the podvm-agent binary (both
	// static).
	Init, Agent string
	// Runtime (runc), Busybox (static) and Mkfs (mkfs.ext4) are copied with
	// their shared libraries.
	Runtime, Busybox, Mkfs string
	// LibDirs are searched for shared libraries.
	LibDirs []string
	// SyslinuxMBR and SyslinuxDir hold syslinux's BIOS boot code.
	SyslinuxMBR string
	// Cmdline is the kernel command line.
	Cmdline string
}

// Defaults fills what a Debian machine with linux-image-amd64, runc,
// busybox-static, e2fsprogs and syslinux has.
func (c *Config) Defaults() error {
	if c.KernelRelease == "" {
		matches, _ := filepath.Glob("/boot/vmlinuz-*")
		if len(matches) == 0 {
			return errors.New("kernel: no /boot/vmlinuz-* (apt-get install linux-image-amd64)")
		}
		c.KernelRelease = strings.TrimPrefix(filepath.Base(matches[len(matches)-1]), "vmlinuz-")
	}
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&c.Kernel, "/boot/vmlinuz-"+c.KernelRelease)
	def(&c.ModulesDir, "/lib/modules/"+c.KernelRelease)
	def(&c.Runtime, "/usr/sbin/runc")
	def(&c.Busybox, "/bin/busybox")
	def(&c.Mkfs, "/usr/sbin/mkfs.ext4")
	def(&c.SyslinuxMBR, "/usr/lib/syslinux/mbr/mbr.bin")
	def(&c.Cmdline, "console=ttyS0 quiet panic=-1")
	if len(c.LibDirs) == 0 {
		c.LibDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib"}
	}
	var errs []error
	for name, p := range map[string]string{"kernel": c.Kernel, "modules": c.ModulesDir, "init": c.Init, "agent": c.Agent,
		"runtime": c.Runtime, "busybox": c.Busybox, "mkfs": c.Mkfs, "syslinux mbr": c.SyslinuxMBR} {
		if p == "" {
			errs = append(errs, fmt.Errorf("%s: path required", name))
		} else if _, err := os.Stat(p); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// Tree lays out the initramfs.
func (c *Config) Tree() (Tree, error) {
	t := Tree{}
	t.File("/init", c.Init, 0o755)
	t.File("/sbin/podvm-agent", c.Agent, 0o755)
	if err := t.Executable("/usr/sbin/runc", c.Runtime, c.LibDirs); err != nil {
		return nil, err
	}
	if err := t.Executable("/usr/sbin/mkfs.ext4", c.Mkfs, c.LibDirs); err != nil {
		return nil, err
	}
	t.File("/bin/busybox", c.Busybox, 0o755)
	for _, applet := range []string{"sh", "ls", "cat", "mount", "umount", "dmesg", "ps", "mkdir", "rm", "poweroff"} {
		t.Symlink("/bin/"+applet, "busybox")
	}
	order, err := ModuleOrder(c.ModulesDir, Modules)
	if err != nil {
		return nil, err
	}
	guestModDir := "/lib/modules/" + c.KernelRelease
	for _, m := range order {
		t.File(filepath.Join(guestModDir, m), filepath.Join(c.ModulesDir, m), 0o644)
	}
	t.Content("/etc/podvisor/modules", []byte(strings.Join(order, "\n")+"\n"), 0o644)
	for _, d := range []string{"/proc", "/sys", "/dev", "/run", "/tmp", "/etc", "/var/lib"} {
		t.Dir(d)
	}
	return t, nil
}

// Disk geometry: one partition from 1 MiB, FAT, the whole disk 64 MiB.
const (
	partStart = 1 << 20
	DiskSize  = 64 << 20
)

// BootDisk writes the bootable raw disk: an MBR with syslinux's boot code
// and one active FAT partition holding the kernel, the initramfs and the
// boot loader's configuration. mtools and syslinux write the partition
// without mounting it.
func (c *Config) BootDisk(out, initramfs string) error {
	mbr, err := os.ReadFile(c.SyslinuxMBR)
	if err != nil {
		return err
	}
	if len(mbr) > 440 {
		return fmt.Errorf("%s: %d bytes of boot code, at most 440 fit", c.SyslinuxMBR, len(mbr))
	}
	disk := make([]byte, 512)
	copy(disk, mbr)
	binary.LittleEndian.PutUint32(disk[440:], 0x70647669) // disk signature "ivdp"
	part := disk[446:462]
	part[0] = 0x80 // active
	part[4] = 0x0e // FAT16, LBA
	binary.LittleEndian.PutUint32(part[8:], partStart/512)
	binary.LittleEndian.PutUint32(part[12:], (DiskSize-partStart)/512)
	part[1], part[2], part[3] = 0xfe, 0xff, 0xff // CHS: beyond, use LBA
	part[5], part[6], part[7] = 0xfe, 0xff, 0xff
	disk[510], disk[511] = 0x55, 0xaa
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	_, err = f.Write(disk)
	if err == nil {
		err = f.Truncate(DiskSize)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("boot disk %s: %w", out, err)
	}

	cfg := filepath.Join(filepath.Dir(out), "syslinux.cfg")
	if err := os.WriteFile(cfg, []byte("DEFAULT podvm\nPROMPT 0\nTIMEOUT 0\nLABEL podvm\n  KERNEL vmlinuz\n  INITRD initrd.img\n  APPEND "+c.Cmdline+"\n"), 0o644); err != nil {
		return err
	}
	defer os.Remove(cfg)
	// mcopy -m keeps each file's time: give the files made by this build a
	// fixed one.
	fixed := time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, p := range []string{cfg, initramfs} {
		if err := os.Chtimes(p, fixed, fixed); err != nil {
			return err
		}
	}
	img := fmt.Sprintf("%s@@%d", out, partStart)
	sectors := (DiskSize - partStart) / 512
	steps := [][]string{
		// -N: a fixed volume serial, for reproducible bytes.
		{"mformat", "-i", img, "-T", fmt.Sprint(sectors), "-h", "64", "-s", "32", "-H", fmt.Sprint(partStart / 512), "-N", "70647669", "-v", "PODVM", "::"},
		{"mcopy", "-i", img, "-m", c.Kernel, "::vmlinuz"},
		{"mcopy", "-i", img, "-m", initramfs, "::initrd.img"},
		{"mcopy", "-i", img, "-m", cfg, "::syslinux.cfg"},
		{"syslinux", "--offset", fmt.Sprint(partStart), "--install", out},
	}
	for _, s := range steps {
		cmd := exec.Command(s[0], s[1:]...)
		// SOURCE_DATE_EPOCH: mtools stamps the FAT entries with it (1980-01-01,
		// the first FAT date) instead of the time of the build.
		cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1", "SOURCE_DATE_EPOCH=315532800")
		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stderr, &stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("boot disk: %s: %w: %s", strings.Join(s, " "), err, strings.TrimSpace(stderr.String()))
		}
	}
	return nil
}
