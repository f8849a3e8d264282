package runtime

import (
	"errors"
	"fmt"
	goruntime "runtime"

	"golang.org/x/sys/unix"
)

// OnHostThread runs fn on an OS thread of its own whose mount namespace is
// a private copy of this process's without the cgroup2 hierarchy a hybrid
// host mounts at /sys/fs/cgroup/unified: every process fn starts (from
// its own goroutine) inherits that namespace. It lets a program on the
// host drive crun, which refuses hybrid mode, as the agent does in its
// guest (the agent drops the same mount at boot); nothing the host sees
// changes. The thread is thrown away when fn returns.
func OnHostThread(fn func() error) error {
	done := make(chan error, 1)
	go func() {
		err := errors.New("runtime: the function on the host thread did not return")
		// Also when fn ends its goroutine (a test's FailNow).
		defer func() { done <- err }()
		// Never unlocked: the goroutine's end takes the thread with it, so
		// its namespace never serves other goroutines.
		goruntime.LockOSThread()
		if e := unix.Unshare(unix.CLONE_NEWNS); e != nil {
			err = fmt.Errorf("runtime: own mount namespace: %w", e)
			return
		}
		if e := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); e != nil {
			err = fmt.Errorf("runtime: private mounts: %w", e)
			return
		}
		var root, unified unix.Statfs_t
		if unix.Statfs("/sys/fs/cgroup", &root) == nil && root.Type == unix.TMPFS_MAGIC &&
			unix.Statfs("/sys/fs/cgroup/unified", &unified) == nil && unified.Type == unix.CGROUP2_SUPER_MAGIC {
			if e := unix.Unmount("/sys/fs/cgroup/unified", unix.MNT_DETACH); e != nil {
				err = fmt.Errorf("runtime: drop the hybrid cgroup2 hierarchy: %w", e)
				return
			}
		}
		err = fn()
	}()
	return <-done
}
