package main

import (
	"fmt"
	"log/slog"
	"os"

	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/agent/vmboot"
)

// initGuest does what init does in the guest before anything runs. As PID
// 1 of a simulated guest it starts in a copy of the host's mount namespace:
// it makes every mount private (nothing it mounts leaks out, nothing the
// host mounts later leaks in) and mounts a /proc that shows its own pid
// namespace. In a real VM the kernel hands it an empty root: it also mounts
// /sys, /dev and the cgroup filesystem where they are missing. The
// loopback interface is brought up (probes and the containers use it; the
// pod shares the guest's network namespace) and the hostname set to the
// pod's. The state directory becomes a tmpfs of the guest's own
// (stateTmpfs).
func initGuest(log *slog.Logger, hostname, stateDir string) error {
	if os.Getpid() != 1 {
		log.Warn("not PID 1: running without init duties (no private mounts, no fresh /proc)")
		return nil
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	if err := stateTmpfs(stateDir); err != nil {
		return err
	}
	if _, err := os.Stat("/sys/kernel"); err != nil {
		if err := unix.Mount("sysfs", "/sys", "sysfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("mount /sys: %w", err)
		}
	}
	if _, err := os.Stat("/dev/null"); err != nil {
		if err := unix.Mount("devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"); err != nil {
			return fmt.Errorf("mount /dev: %w", err)
		}
	}
	if entries, err := os.ReadDir("/sys/fs/cgroup"); err == nil && len(entries) == 0 {
		if err := vmboot.MountCgroup2("/sys/fs/cgroup", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC); err != nil {
			return fmt.Errorf("mount /sys/fs/cgroup: %w", err)
		}
	}
	if err := dropHybridUnified(log); err != nil {
		return err
	}
	if err := loopbackUp(); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	if hostname != "" {
		if err := unix.Sethostname([]byte(hostname)); err != nil {
			return fmt.Errorf("set hostname: %w", err)
		}
	}
	return nil
}

// dropHybridUnified unmounts, in the guest's own mount namespace, the
// cgroup2 hierarchy that a hybrid host mounts at /sys/fs/cgroup/unified
// beside the v1 controllers. crun refuses hybrid mode ("cgroups in hybrid
// mode not supported") as soon as that hierarchy offers a controller; the
// guest's containers are limited through the v1 controllers anyway, and
// the host's view is untouched.
func dropHybridUnified(log *slog.Logger) error {
	var root, unified unix.Statfs_t
	if unix.Statfs("/sys/fs/cgroup", &root) != nil || root.Type != unix.TMPFS_MAGIC {
		return nil
	}
	if unix.Statfs("/sys/fs/cgroup/unified", &unified) != nil || unified.Type != unix.CGROUP2_SUPER_MAGIC {
		return nil
	}
	if err := unix.Unmount("/sys/fs/cgroup/unified", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount the hybrid cgroup2 hierarchy: %w", err)
	}
	log.Info("cgroup v1 hierarchy: dropped /sys/fs/cgroup/unified in the guest")
	return nil
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// stateTmpfs mounts a tmpfs on the state directory (the disks' and the
// overlays' mount points, the bundles, the runtime's state) unless it is
// on one already, as a real guest's /run/podvisor is and as the simulator
// keeps its guests' directories. A state directory on a disk would be a
// directory of the host's filesystem in a simulated guest, where
// every file and directory the agent and the runtime make and remove at
// each start goes through the host filesystem's allocator, shared with
// every other guest (on an ext4 without a journal each new inode is
// checked against the recently deleted ones: a burst of guest starts
// spent a large part of its CPU there). The mount lives in the guest's
// mount namespace: it goes with the guest, and its pages count against the
// VM's memory like a guest's RAM.
func stateTmpfs(dir string) error {
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if st.Type == unix.TMPFS_MAGIC {
		return nil
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0700"); err != nil {
		return fmt.Errorf("mount a tmpfs on the state directory %s: %w", dir, err)
	}
	return nil
}
