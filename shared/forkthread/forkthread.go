package forkthread

import (
	"os/exec"
	"runtime"
	"sync"
)

var (
	once sync.Once
	reqs chan request
)

type request struct {
	cmd  *exec.Cmd
	done chan error
}

// Start starts cmd (cmd.Start) from the process's fork thread, so that its
// Pdeathsig fires only when the process ends.
func Start(cmd *exec.Cmd) error {
	once.Do(func() {
		reqs = make(chan request)
		go func() {
			// Never unlocked, and the goroutine never returns: the thread
			// lives as long as the process.
			runtime.LockOSThread()
			for r := range reqs {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	reqs <- request{cmd: cmd, done: done}
	return <-done
}
