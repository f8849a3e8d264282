package disks

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/internal/reaper"
)

// Mounted is the pod's disks as mounted by Mount.
type Mounted struct {
	// Ephemeral is the mountpoint of disk 0, or, once an encrypted disk is
	// unlocked, its encrypted directory (package diskcrypt): where the pod
	// writes.
	Ephemeral string
	// Images maps an image disk's chainID to its mountpoint.
	Images map[string]string
	// Formatted says that disk 0 held no filesystem and was formatted
	// (mkfs.ext4) by this mount; false when it came formatted (a child of
	// the datastore's pre-formatted template, or a disk of an earlier
	// boot).
	Formatted bool
	mounts    []string // in mount order
}

// Mount mounts the spec's disks under dir: dir/ephemeral and
// dir/image/<n>. devices maps a disk's unit to its device or file.
func Mount(spec *guestchannel.PodSpec, devices map[string]string, dir string) (m *Mounted, err error) {
	m = &Mounted{Images: map[string]string{}}
	defer func() {
		if err != nil {
			_ = m.Unmount()
		}
	}()
	for i, d := range spec.Disks {
		src := devices[d.Unit]
		if src == "" {
			return m, fmt.Errorf("disks[%d] (%s): no device for unit %s", i, d.Role, d.Unit)
		}
		switch d.Role {
		case guestchannel.DiskEphemeral:
			target := filepath.Join(dir, "ephemeral")
			if err := m.mountEphemeral(src, target); err != nil {
				return m, fmt.Errorf("disks[%d] (ephemeral, %s): %w", i, src, err)
			}
			m.Ephemeral = target
		case guestchannel.DiskImage:
			if _, dup := m.Images[d.ChainID]; dup {
				continue
			}
			target := filepath.Join(dir, "image", fmt.Sprint(i))
			fs := d.FS
			if fs == "" {
				fs = "erofs"
			}
			if err := m.mountImage(src, target, fs); err != nil {
				return m, fmt.Errorf("disks[%d] (image %s, %s): %w", i, d.ChainID, src, err)
			}
			m.Images[d.ChainID] = target
		}
	}
	return m, nil
}

func (m *Mounted) mountEphemeral(src, target string) error {
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	has, err := hasExt4(src)
	if err != nil {
		return err
	}
	if !has {
		if err := mkfsExt4(src); err != nil {
			return err
		}
		m.Formatted = true
	}
	return m.mountDevice(src, st.Mode().IsRegular(), target, "ext4", 0)
}

func (m *Mounted) mountImage(src, target, fs string) error {
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if st.Mode().IsRegular() && fs == "erofs" {
		// Linux 6.12+ mounts an erofs image straight from a file.
		if err := m.mount(src, target, fs, unix.MS_RDONLY, ""); err == nil {
			return nil
		}
	}
	return m.mountDevice(src, st.Mode().IsRegular(), target, fs, unix.MS_RDONLY)
}

// mountDevice mounts a block device, or a regular file through a loop
// device of its own.
func (m *Mounted) mountDevice(src string, regular bool, target, fs string, flags uintptr) error {
	if !regular {
		return m.mount(src, target, fs, flags, "")
	}
	loop, err := attachLoop(src, flags&unix.MS_RDONLY != 0)
	if err != nil {
		return err
	}
	// Held open until mounted: autoclear detaches on last close.
	defer loop.Close()
	return m.mount(loop.Name(), target, fs, flags, "")
}

func (m *Mounted) mount(src, target, fs string, flags uintptr, data string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(src, target, fs, flags|unix.MS_NODEV, data); err != nil {
		if flags&unix.MS_RDONLY == 0 {
			return fmt.Errorf("mount %s on %s (%s): %w", src, target, fs, err)
		}
		return fmt.Errorf("mount %s on %s (%s, read-only): %w", src, target, fs, err)
	}
	m.mounts = append(m.mounts, target)
	return nil
}

// Unmount unmounts every disk, last mounted first. A loop device goes with
// its filesystem (autoclear).
func (m *Mounted) Unmount() error {
	var errs []error
	for i := len(m.mounts) - 1; i >= 0; i-- {
		if err := Unmount(m.mounts[i]); err != nil {
			errs = append(errs, err)
		}
	}
	m.mounts = nil
	return errors.Join(errs...)
}

// Unmount unmounts target, retrying a busy filesystem for a few seconds
// (a container's last process may still be closing its files) before
// detaching it lazily.
func Unmount(target string) error {
	deadline := time.Now().Add(3 * time.Second)
	for {
		err := unix.Unmount(target, 0)
		switch {
		case err == nil || err == unix.EINVAL || err == unix.ENOENT:
			return nil
		case err == unix.EBUSY && time.Now().Before(deadline):
			time.Sleep(50 * time.Millisecond)
		case err == unix.EBUSY:
			if err := unix.Unmount(target, unix.MNT_DETACH); err != nil {
				return fmt.Errorf("unmount %s: %w", target, err)
			}
			return nil
		default:
			return fmt.Errorf("unmount %s: %w", target, err)
		}
	}
}

// hasExt4 reports whether the device or file holds an ext2/3/4 superblock
// (magic 0xEF53 at byte 1080).
func hasExt4(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	b := make([]byte, 2)
	if _, err := f.ReadAt(b, 1080); err != nil {
		return false, nil // shorter than a superblock: empty
	}
	return b[0] == 0x53 && b[1] == 0xEF, nil
}

func mkfsExt4(path string) error {
	bin, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return fmt.Errorf("format the ephemeral disk: %w (the guest needs e2fsprogs)", err)
	}
	// The "encrypt" feature lets a pod that asks for an encrypted
	// ephemeral disk keep its files under an fscrypt policy (package
	// diskcrypt); it costs nothing to a pod that does not. A pod's start
	// waits for the format, so it writes as little as it can: inode
	// tables and journal are initialised lazily (the kernel zeroes them
	// in the background once mounted), and no blocks are reserved for
	// growing the filesystem online (resize_inode: 4 MiB of the 4.2 MiB
	// an 8 GiB disk's format writes), since a pod VM's disk 0 keeps the
	// size it was created with. The journal stays: container logs on
	// disk 0 must survive a guest's crash.
	cmd := exec.Command(bin, "-q", "-F", "-L", "podvisor-eph", "-O", "encrypt,^resize_inode",
		"-E", "lazy_itable_init=1,lazy_journal_init=1", path)
	out, st, err := reaper.Output(cmd)
	if err != nil {
		return fmt.Errorf("mkfs.ext4 %s: %w", path, err)
	}
	if st.ExitCode() != 0 {
		return fmt.Errorf("mkfs.ext4 %s: exit %d: %s", path, st.ExitCode(), strings.TrimSpace(string(out)))
	}
	return nil
}

// attachLoop binds file to a free loop device with autoclear and returns the
// open device; the caller closes it once the device is mounted (closing an
// unmounted autoclear device detaches it).
func attachLoop(file string, readOnly bool) (*os.File, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(file, flag, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("loop devices: %w", err)
	}
	defer ctl.Close()
	for attempt := 0; attempt < 20; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("find a free loop device: %w", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		lf, err := os.OpenFile(dev, flag, 0)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", dev, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(f.Fd())}
		cfg.Info.Flags = unix.LO_FLAGS_AUTOCLEAR
		if readOnly {
			cfg.Info.Flags |= unix.LO_FLAGS_READ_ONLY
		}
		copy(cfg.Info.File_name[:], file)
		err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
		if err == unix.EBUSY {
			lf.Close()
			continue // taken by someone else between GET_FREE and CONFIGURE
		}
		if err != nil {
			lf.Close()
			return nil, fmt.Errorf("configure %s for %s: %w", dev, file, err)
		}
		return lf, nil
	}
	return nil, fmt.Errorf("attach %s: every free loop device was taken first", file)
}
