package guest

import (
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Moving a process into a cgroup (a write to cgroup.procs: the launcher
// joining its VM's cgroups, the OCI runtime putting a container's init in
// its own) takes the kernel's cgroup_threadgroup_rwsem for writing. By
// default that lock keeps its readers (every fork and exit) cheap and makes
// the first writer after a quiet spell wait for a whole RCU grace period:
// 15–30 ms on this kind of machine. A guest that started its containers
// after a pause (a standby taken over, any pod started on an idle machine)
// paid it in its runtime's start, which was so 2–3 times slower than in a
// guest started during a burst (measured: crun run 13–29 ms against 7–11).
//
// The cgroup2 mount option favordynmods (Linux 6.0+) makes the lock favour
// its writers, for the whole machine: the guests' cgroup moves stop waiting,
// forks and exits cost a little more. A VM's own kernel would have its own
// lock; the simulated guests share the machine's, so the manager turns the
// option on while guests run and restores the mount's options when the
// last manager of the last process running guests closes. The pod VM boot
// image mounts its cgroup2 hierarchy with the option for the same reason
// (vmboot.MountCgroup2).

// dynmodsLock is where the processes running guests on this machine agree
// on the option: each holds a shared lock on it while its guests run, and
// the file keeps the mount's options from before the option was turned on
// ("" when it was on already), for the last process to restore.
var dynmodsLock = "/run/podvisor/cgroup2-favordynmods.lock"

// remountCgroup2 and findCgroup2 are the kernel's side (tests of the
// bookkeeping replace them).
var (
	remountCgroup2 = func(mount, data string) error { return unix.Mount("none", mount, "", unix.MS_REMOUNT, data) }
	findCgroup2    = cgroup2Mount
)

var dynmods struct {
	sync.Mutex
	users int
	lock  *os.File // held shared while users > 0
}

// favorDynMods turns favordynmods on for the machine's cgroup2 hierarchy
// (see above) unless it is on, and returns what undoes it once no manager
// of any process needs it. Without a cgroup2 mount, or where the kernel
// refuses the option, it logs why and changes nothing.
func favorDynMods(log *slog.Logger) (release func()) {
	dynmods.Lock()
	defer dynmods.Unlock()
	dynmods.users++
	if dynmods.users == 1 {
		dynmods.lock = acquireDynMods(log)
	}
	var once sync.Once
	return func() { once.Do(func() { releaseDynMods(log) }) }
}

func acquireDynMods(log *slog.Logger) *os.File {
	mnt, opts, ok := findCgroup2()
	if !ok {
		log.Info("no cgroup2 hierarchy mounted: a guest's first cgroup move after a pause waits for an RCU grace period")
		return nil
	}
	unlock, err := decideDynMods()
	if err != nil {
		log.Info("cgroup2 favordynmods left as it is", "err", err)
		return nil
	}
	defer unlock()
	f, err := os.OpenFile(dynmodsLock, os.O_RDWR|os.O_CREATE, 0o600)
	if err == nil {
		err = unix.Flock(int(f.Fd()), unix.LOCK_SH) // held while guests run
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		log.Info("cgroup2 favordynmods left as it is", "err", err)
		return nil
	}
	if slices.Contains(opts, "favordynmods") {
		return f // on already: by the host, or by another process (which the file names)
	}
	data := strings.Join(append(slices.Clone(opts), "favordynmods"), ",")
	if err := remountCgroup2(mnt, data); err != nil {
		log.Info("cgroup2 favordynmods not available: a guest's first cgroup move after a pause waits for an RCU grace period", "mount", mnt, "err", err)
		return f
	}
	if err := writeLockFile(f, mnt+"\n"+strings.Join(opts, ",")); err != nil {
		log.Warn("cgroup2 favordynmods: note the options to restore", "err", err)
	}
	log.Info("cgroup2 favordynmods turned on while guests run", "mount", mnt)
	return f
}

// decideDynMods serializes the processes' decisions (turn on, restore) on
// a lock file of its own: the holders' file is held shared for as long as
// guests run, so no one could take it exclusively to decide.
func decideDynMods() (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(dynmodsLock), 0o755); err != nil {
		return nil, err
	}
	d, err := os.OpenFile(dynmodsLock+".decide", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(d.Fd()), unix.LOCK_EX); err != nil {
		d.Close()
		return nil, err
	}
	return func() { d.Close() }, nil
}

func releaseDynMods(log *slog.Logger) {
	dynmods.Lock()
	defer dynmods.Unlock()
	dynmods.users--
	f := dynmods.lock
	if dynmods.users > 0 || f == nil {
		return
	}
	dynmods.lock = nil
	restoreDynMods(log, f)
}

// restoreDynMods drops a process's hold on the option (f, from
// acquireDynMods) and, when no other process holds it, restores the
// options the file noted.
func restoreDynMods(log *slog.Logger, f *os.File) {
	defer f.Close() // drops this process's hold
	unlock, err := decideDynMods()
	if err != nil {
		return
	}
	defer unlock()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return // another process's guests still run: the last one restores
	}
	b, err := os.ReadFile(f.Name())
	mnt, opts, found := strings.Cut(string(b), "\n")
	if err != nil || !found {
		return // turned on by nobody here
	}
	if err := remountCgroup2(mnt, opts); err != nil {
		log.Warn("restore the cgroup2 mount's options", "mount", mnt, "options", opts, "err", err)
		return
	}
	_ = writeLockFile(f, "")
}

func writeLockFile(f *os.File, s string) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err := f.WriteAt([]byte(s), 0)
	return err
}

// cgroup2Mount finds this process's cgroup2 mount and its filesystem
// options (without rw/ro, which are the mount's own).
func cgroup2Mount() (mount string, opts []string, ok bool) {
	mounts, err := readMountinfo()
	if err != nil {
		return "", nil, false
	}
	for _, m := range mounts {
		if m.fstype != "cgroup2" {
			continue
		}
		for o := range strings.SplitSeq(m.super, ",") {
			if o != "" && o != "rw" && o != "ro" {
				opts = append(opts, o)
			}
		}
		return m.mount, opts, true
	}
	return "", nil, false
}
