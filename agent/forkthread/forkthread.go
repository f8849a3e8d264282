package forkthread

import (
	"os/exec"
	"runtime"
	"sync"
)

// threads is how many fork threads start children: guests boot in
// parallel (shared/sim/guest), and one thread would make their starts
// queue behind one another.
const threads = 8

var (
	once sync.Once
	reqs chan request
)

type request struct {
	cmd  *exec.Cmd
	done chan error
}

// Start starts cmd (cmd.Start) from one of the process's fork threads, so
// that its Pdeathsig fires only when the process ends.
func Start(cmd *exec.Cmd) error {
	once.Do(func() {
		reqs = make(chan request)
		for range threads {
			go func() {
				// Never unlocked, and the goroutine never returns: the
				// thread lives as long as the process.
				runtime.LockOSThread()
				for r := range reqs {
					r.done <- r.cmd.Start()
				}
			}()
		}
	})
	done := make(chan error, 1)
	reqs <- request{cmd: cmd, done: done}
	return <-done
}
