package supervisor

import (
	"bytes"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// An exec's command runs in the container's namespaces under the runtime's
// exec process, in no process group of its own (the runtime does not make
// it one), so a signal to the command alone leaves what it started: `sh -c
// 'sleep 30; …'` interrupted would leave its sleep running in the
// container, reparented to the container's init. A process tree is the
// exec's processes as they are when it is cancelled, each known by its
// pid and start time, so that a pid reused meanwhile is never signalled.
type processTree []treeProc

type treeProc struct {
	pid   int
	start uint64 // /proc/<pid>/stat field 22, ticks since boot
}

// treeOf lists root and its descendants as /proc shows them now.
func treeOf(root int) processTree {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return processTree{{pid: root}}
	}
	children := map[int][]treeProc{}
	var self treeProc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, start, _, ok := procStat(pid)
		if !ok {
			continue
		}
		if pid == root {
			self = treeProc{pid: pid, start: start}
		}
		children[ppid] = append(children[ppid], treeProc{pid: pid, start: start})
	}
	if self.pid == 0 {
		return nil // gone already
	}
	tree := processTree{self}
	for i := 0; i < len(tree); i++ {
		tree = append(tree, children[tree[i].pid]...)
	}
	return tree
}

// signal sends sig to every process of the tree that is still the one
// listed (same start time).
func (t processTree) signal(sig unix.Signal) {
	for _, p := range t {
		if _, start, _, ok := procStat(p.pid); ok && (p.start == 0 || start == p.start) {
			_ = unix.Kill(p.pid, sig)
		}
	}
}

// alive reports whether a process of the tree still runs (a zombie, ended
// and not reaped yet, does not).
func (t processTree) alive() bool {
	for _, p := range t {
		if _, start, state, ok := procStat(p.pid); ok && state != 'Z' && (p.start == 0 || start == p.start) {
			return true
		}
	}
	return false
}

// killAfter lets the tree's processes end until deadline (each had its
// SIGTERM), then sends SIGKILL to those left.
func (t processTree) killAfter(deadline time.Time) {
	for t.alive() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	t.signal(unix.SIGKILL)
}

// procStat reads a process's parent pid, start time and state from
// /proc/<pid>/stat (the command name, in parentheses, may hold spaces).
func procStat(pid int) (ppid int, start uint64, state byte, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, 0, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, 0, false
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state): ppid is field 4, starttime field 22.
	if len(f) < 20 || len(f[0]) != 1 {
		return 0, 0, 0, false
	}
	ppid, err = strconv.Atoi(string(f[1]))
	if err != nil {
		return 0, 0, 0, false
	}
	start, err = strconv.ParseUint(string(f[19]), 10, 64)
	return ppid, start, f[0][0], err == nil
}
