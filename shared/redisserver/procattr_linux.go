package redisserver

import (
	"os/exec"
	"syscall"
)

// dieWithParent asks the kernel to stop redis-server when the process that
// started it dies, however it dies (kill -9, a test binary timing out), so
// no Redis is left running on a random port.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
