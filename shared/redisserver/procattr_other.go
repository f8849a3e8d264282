//go:build !linux

package redisserver

import "os/exec"

// dieWithParent is Linux-only (prctl PR_SET_PDEATHSIG); elsewhere Close is
// the only way redis-server stops.
func dieWithParent(*exec.Cmd) {}
