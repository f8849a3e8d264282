package forkthread_test

import (
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/forkthread"
)

// A child started with Pdeathsig from a goroutine whose thread then ends
// dies with that thread when started there, and lives on when started
// through Start.
func TestChildOutlivesTheThreadThatAskedForIt(t *testing.T) {
	sleeper := func() *exec.Cmd {
		cmd := exec.Command("sleep", "60")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		return cmd
	}
	direct, viaStart := sleeper(), sleeper()
	for {
		started := make(chan error, 2)
		onMain := make(chan bool, 1)
		go func() {
			// Locked and never unlocked: the runtime ends this thread when
			// the goroutine returns, as it does after a namespace switch
			// that could not be undone.
			runtime.LockOSThread()
			if syscall.Gettid() == syscall.Getpid() {
				// The main thread never ends (the runtime parks it
				// instead): try from another.
				runtime.UnlockOSThread()
				onMain <- true
				return
			}
			onMain <- false
			started <- direct.Start()
			started <- forkthread.Start(viaStart)
		}()
		if <-onMain {
			continue
		}
		for range 2 {
			if err := <-started; err != nil {
				t.Fatal(err)
			}
		}
		break
	}
	t.Cleanup(func() {
		for _, c := range []*exec.Cmd{direct, viaStart} {
			_ = c.Process.Kill()
		}
	})
	exited := func(c *exec.Cmd) chan error {
		ch := make(chan error, 1)
		go func() { ch <- c.Wait() }()
		return ch
	}
	directDone, viaDone := exited(direct), exited(viaStart)
	select {
	case <-directDone: // the thread ended and took the directly started child
	case <-time.After(30 * time.Second):
		t.Fatal("the child started on the ended thread was not killed: the thread did not end, the test proves nothing")
	}
	// The signal is sent as the thread exits, to every child it forked: the
	// other one would be gone by now.
	select {
	case err := <-viaDone:
		t.Fatalf("the child started through Start died with the asking thread: %v", err)
	default:
	}
	if err := viaStart.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the child started through Start is gone: %v", err)
	}
}
