package qemu

import (
	"os/exec"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// forkThreads is how many threads start QEMUs: machines boot in parallel.
const forkThreads = 4

var (
	forkOnce sync.Once
	forkReqs chan forkRequest
)

type forkRequest struct {
	cmd  *exec.Cmd
	done chan error
}

// startFromLockedThread starts cmd (cmd.Start) from one of the process's
// threads that live as long as it does. Pdeathsig follows the thread that
// forked the child, not the process: started from any goroutine's thread,
// which the runtime ends when it likes, QEMU would be killed at random. As
// shared/forkthread does, which this module does not depend on.
func startFromLockedThread(cmd *exec.Cmd) error {
	forkOnce.Do(func() {
		forkReqs = make(chan forkRequest)
		for range forkThreads {
			go func() {
				// Never unlocked, and the goroutine never returns: the
				// thread lives as long as the process.
				runtime.LockOSThread()
				for r := range forkReqs {
					r.done <- r.cmd.Start()
				}
			}()
		}
	})
	done := make(chan error, 1)
	forkReqs <- forkRequest{cmd: cmd, done: done}
	return <-done
}

// shmFits reports whether the tmpfs at dir has size bytes free.
func shmFits(dir string, size uint64) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false
	}
	return st.Bavail*uint64(st.Bsize) >= size
}
