package guest

import (
	"os/exec"
	"runtime"
	"sync"
)

// A guest's launcher is started with Pdeathsig (SIGKILL), so that guests
// die with the simulator's process. The kernel sends that signal when the
// thread that forked the child ends, not the process (go.dev/issue/27505),
// and the Go runtime ends a thread whenever a goroutine exits while locked
// to it, as code that enters another network namespace without coming
// back does (a dial into a guest that cannot restore its namespace, or a
// test's). A guest forked from such a thread was killed seconds after its
// boot, its init in the middle of its first steps. Every launcher is
// therefore forked from one thread that never ends: a goroutine locked to
// it for the life of the process.

var (
	forkOnce sync.Once
	forkReqs chan forkReq
)

type forkReq struct {
	cmd  *exec.Cmd
	done chan error
}

// startOnForkThread starts cmd from the process's fork thread.
func startOnForkThread(cmd *exec.Cmd) error {
	forkOnce.Do(func() {
		forkReqs = make(chan forkReq)
		go func() {
			// Never unlocked, and the goroutine never returns: the thread
			// lives as long as the process.
			runtime.LockOSThread()
			for r := range forkReqs {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	forkReqs <- forkReq{cmd: cmd, done: done}
	return <-done
}
