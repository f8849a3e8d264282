package vmboot

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// OnRootfs reports whether / is the kernel's initial rootfs (the unpacked
// initramfs), which pivot_root cannot leave: runc would fail to start any
// container there. It mounts /proc to read the mount table.
func OnRootfs() (bool, error) {
	if _, err := os.Stat("/proc/self/mountinfo"); err != nil {
		if err := os.MkdirAll("/proc", 0o555); err != nil {
			return false, err
		}
		if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return false, fmt.Errorf("mount /proc: %w", err)
		}
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	return rootIsRootfs(string(b)), nil
}

// rootIsRootfs reads a mountinfo table: the last mount on "/" is the root
// this process sees.
func rootIsRootfs(mountinfo string) bool {
	fstype := ""
	for _, line := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(line)
		_, after, ok := strings.Cut(line, " - ")
		if len(f) < 5 || f[4] != "/" || !ok {
			continue
		}
		fstype, _, _ = strings.Cut(after, " ")
	}
	return fstype == "rootfs"
}

// SwitchRoot copies the initramfs's files onto a fresh tmpfs and makes it
// the root (what switch_root does, without the exec): the caller then
// executes its successor from the new root. The old rootfs's files are
// removed to give their memory back.
func SwitchRoot(newRoot string) error {
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", newRoot, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", newRoot, err)
	}
	if err := copyTree("/", newRoot); err != nil {
		return fmt.Errorf("copy the initramfs to %s: %w", newRoot, err)
	}
	if err := removeTree("/", newRoot); err != nil {
		return fmt.Errorf("free the initramfs: %w", err)
	}
	if err := unix.Chdir(newRoot); err != nil {
		return err
	}
	if err := unix.Mount(newRoot, "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s to /: %w", newRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	return unix.Chdir("/")
}

func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dst || (p != "/" && isMountPoint(p)) {
			return filepath.SkipDir
		}
		target := filepath.Join(dst, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if p == "/" {
				return nil
			}
			return os.Mkdir(target, info.Mode().Perm())
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case d.Type().IsRegular():
			return copyFile(p, target, info.Mode().Perm())
		default:
			return nil // device nodes come from devtmpfs
		}
	})
}

func copyFile(src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// removeTree removes the old root's files, skipping the new root and
// anything mounted.
func removeTree(root, keep string) error {
	entries, err := os.ReadDir(root)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(root, e.Name())
		if p == keep || isMountPoint(p) {
			continue
		}
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func isMountPoint(p string) bool {
	var st, parent unix.Stat_t
	if unix.Lstat(p, &st) != nil || unix.Lstat(filepath.Dir(p), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}

// Console gives a first stage started without standard streams (an
// initramfs has no /dev/console node for the kernel to open) the console:
// it mounts devtmpfs on /dev and makes /dev/console fds 0, 1 and 2.
func Console() error {
	if _, err := unix.FcntlInt(2, unix.F_GETFD, 0); err == nil {
		return nil // stderr is open
	}
	if err := os.MkdirAll("/dev", 0o755); err != nil {
		return err
	}
	if err := unix.Mount("devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount devtmpfs: %w", err)
	}
	fd, err := unix.Open("/dev/console", unix.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open /dev/console: %w", err)
	}
	for i := 0; i < 3; i++ {
		if fd != i {
			if err := unix.Dup3(fd, i, 0); err != nil {
				return err
			}
		}
	}
	if fd > 2 {
		unix.Close(fd)
	}
	return nil
}

// MountCgroup2 mounts the cgroup2 hierarchy on target with favordynmods: a
// container's start moves its init into a new cgroup, which otherwise waits
// for an RCU grace period when it is the first move in a while (the first
// container of a VM, any of a forked VM). Linux before 6.0 refuses the
// option and mounts without it.
func MountCgroup2(target string, flags uintptr) error {
	err := unix.Mount("cgroup2", target, "cgroup2", flags, "favordynmods")
	if errors.Is(err, unix.EINVAL) {
		err = unix.Mount("cgroup2", target, "cgroup2", flags, "")
	}
	return err
}

// MountPseudo mounts what a VM's init finds missing: /proc, /sys, /dev
// (devtmpfs: the kernel makes the disks' nodes), /dev/pts, /dev/shm, /run,
// /tmp and the cgroup v2 hierarchy at /sys/fs/cgroup (runc and crun use it
// when it is the only one). A filesystem already mounted is left alone.
func MountPseudo() error {
	mounts := []struct{ fstype, target, data string }{
		{"proc", "/proc", ""},
		{"sysfs", "/sys", ""},
		{"devtmpfs", "/dev", "mode=0755"},
		{"devpts", "/dev/pts", "newinstance,ptmxmode=0666,mode=0620"},
		{"tmpfs", "/dev/shm", "mode=1777"},
		{"tmpfs", "/run", "mode=0755"},
		{"tmpfs", "/tmp", "mode=1777"},
		{"cgroup2", "/sys/fs/cgroup", ""}, // MountCgroup2
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return err
		}
		if isMountPoint(m.target) {
			continue
		}
		var err error
		if m.fstype == "cgroup2" {
			err = MountCgroup2(m.target, unix.MS_NOSUID)
		} else {
			err = unix.Mount(m.fstype, m.target, m.fstype, unix.MS_NOSUID, m.data)
		}
		if err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	// Containers inherit /dev/ptmx from devpts's new instance.
	_ = os.Remove("/dev/ptmx")
	return os.Symlink("pts/ptmx", "/dev/ptmx")
}

// LoadModules loads the kernel modules listed in the file list, one path
// per line relative to dir, dependencies first (the image build writes it
// from modules.dep). A module already loaded, or built into the kernel,
// is not an error.
func LoadModules(dir, list string) (loaded int, err error) {
	f, err := os.Open(list)
	if err != nil {
		return 0, fmt.Errorf("module list: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rel := strings.TrimSpace(sc.Text())
		if rel == "" || strings.HasPrefix(rel, "#") {
			continue
		}
		m, err := os.Open(filepath.Join(dir, rel))
		if err != nil {
			return loaded, fmt.Errorf("module %s: %w", rel, err)
		}
		err = unix.FinitModule(int(m.Fd()), "", 0)
		m.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return loaded, fmt.Errorf("load module %s: %w", rel, err)
		}
		loaded++
	}
	return loaded, sc.Err()
}

// Uptime is the seconds since the kernel started, from /proc/uptime: the
// boot-to-running figure the boot test prints is measured on this clock.
func Uptime() string {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return "?"
	}
	up, _, _ := strings.Cut(string(b), " ")
	return up
}
