// Package reaper collects the exit status of every child of the agent.
//
// The agent is PID 1 of its guest (or a child subreaper outside one): orphans
// of the whole guest are re-parented to it and must be reaped, and container
// processes started by `runc run --detach` become its children once runc
// exits. One goroutine therefore owns wait4(-1): every process the agent
// starts goes through Start, which registers its pid before the reaper can
// see it exit, and a container's pid, learnt later from runc's pid file, is
// claimed with Claim, which also finds a status that arrived first.
//
// Nothing else in the agent may call exec.Cmd.Wait or os.Process.Wait.
package reaper

import (
	"io"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Status is how a process ended.
type Status struct {
	Pid int
	WS  unix.WaitStatus
}

// ExitCode is the process's exit code, or 128+signal when it was killed (the
// shell's convention, which Kubernetes reports as exitCode).
func (s Status) ExitCode() int {
	if s.WS.Signaled() {
		return 128 + int(s.WS.Signal())
	}
	return s.WS.ExitStatus()
}

// Signal is the signal that killed the process, 0 when it exited.
func (s Status) Signal() int {
	if s.WS.Signaled() {
		return int(s.WS.Signal())
	}
	return 0
}

var (
	mu        sync.Mutex
	waiters   = map[int]chan Status{}
	unclaimed = map[int]unclaimedStatus{}
	once      sync.Once
)

type unclaimedStatus struct {
	st   Status
	when time.Time
}

// keepUnclaimed bounds how long the status of an unknown child is kept for a
// later Claim (the container's init can end before runc's pid file is read).
const keepUnclaimed = 30 * time.Second

// Run starts the reaping goroutine; calling it again does nothing.
func Run() {
	once.Do(func() {
		if os.Getpid() != 1 {
			// Detached containers must come back to the agent, not to the
			// host's init.
			_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
		}
		ch := make(chan os.Signal, 16)
		signal.Notify(ch, unix.SIGCHLD)
		go func() {
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				select {
				case <-ch:
				case <-tick.C: // a coalesced SIGCHLD must not strand a zombie
				}
				reap()
			}
		}()
	})
}

func reap() {
	mu.Lock()
	defer mu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			break
		}
		if !ws.Exited() && !ws.Signaled() {
			continue
		}
		st := Status{Pid: pid, WS: ws}
		if w, ok := waiters[pid]; ok {
			delete(waiters, pid)
			w <- st
			continue
		}
		unclaimed[pid] = unclaimedStatus{st: st, when: time.Now()}
	}
	for pid, u := range unclaimed {
		if time.Since(u.when) > keepUnclaimed {
			delete(unclaimed, pid)
		}
	}
}

// Start starts cmd and returns a channel that receives its status once. The
// caller must not call cmd.Wait; stdio should be *os.File values (a pipe
// made by exec would only be drained by Wait).
func Start(cmd *exec.Cmd) (<-chan Status, error) {
	Run()
	mu.Lock()
	defer mu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := make(chan Status, 1)
	waiters[cmd.Process.Pid] = ch
	return ch, nil
}

// Claim returns a channel that receives the status of pid, a child the agent
// did not start itself (a container's init re-parented from runc).
func Claim(pid int) <-chan Status {
	Run()
	mu.Lock()
	defer mu.Unlock()
	ch := make(chan Status, 1)
	if u, ok := unclaimed[pid]; ok {
		delete(unclaimed, pid)
		ch <- u.st
		return ch
	}
	waiters[pid] = ch
	return ch
}

// Wait starts cmd and waits for it: exec.Cmd.Run for the agent.
func Wait(cmd *exec.Cmd) (Status, error) {
	ch, err := Start(cmd)
	if err != nil {
		return Status{}, err
	}
	return <-ch, nil
}

// Output starts cmd with stdout and stderr going to one pipe, reads it to the
// end and waits for the process: exec.Cmd.CombinedOutput for the agent.
func Output(cmd *exec.Cmd) ([]byte, Status, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, Status{}, err
	}
	defer r.Close()
	cmd.Stdout, cmd.Stderr = w, w
	ch, err := Start(cmd)
	w.Close()
	if err != nil {
		return nil, Status{}, err
	}
	out, _ := io.ReadAll(r)
	return out, <-ch, nil
}
