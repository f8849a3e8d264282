// Package cgroupfs finds and removes cgroup trees in every mounted hierarchy
// of /sys/fs/cgroup (each v1 hierarchy, name=systemd included, and the
// unified one): what tests and benchmarks that make cgroups of their own
// need to clean up after themselves. The simulated hypervisor removes its
// guests' cgroups in the same order (DeepestFirst).
package cgroupfs

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Roots lists the mounted hierarchies: /sys/fs/cgroup itself where it is
// the unified hierarchy alone (its own cgroup.controllers), else each
// hierarchy mounted under it; a symlinked name (cpu -> cpu,cpuacct) is
// skipped: its target is listed.
func Roots() []string {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return []string{"/sys/fs/cgroup"}
	}
	entries, _ := os.ReadDir("/sys/fs/cgroup")
	var roots []string
	for _, e := range entries {
		if e.IsDir() {
			roots = append(roots, filepath.Join("/sys/fs/cgroup", e.Name()))
		}
	}
	if len(roots) == 0 {
		roots = []string{"/sys/fs/cgroup"}
	}
	return roots
}

// RemoveTree removes path's tree from every hierarchy (each v1 one,
// name=systemd included, and the unified one), deepest first. A cgroup
// whose last process is still exiting refuses rmdir with EBUSY for a
// moment: that is retried for a few seconds.
func RemoveTree(path string) error {
	var errs []string
	for _, root := range Roots() {
		for _, dir := range DeepestFirst(filepath.Join(root, path)) {
			if err := rmdirCgroup(dir); err != nil {
				errs = append(errs, err.Error())
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove cgroup %s: %s", path, strings.Join(errs, "; "))
	}
	return nil
}

// DeepestFirst lists dir and every directory below it, each after the
// directories it holds: the order a cgroup tree is removed in, since a
// cgroup with children refuses rmdir. A dir that is gone lists nothing.
func DeepestFirst(dir string) []string {
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	// WalkDir visits a directory before its contents.
	slices.Reverse(dirs)
	return dirs
}

// rmdirCgroup removes one cgroup directory, retrying EBUSY for up to 5 s.
func rmdirCgroup(dir string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := unix.Rmdir(dir)
		switch {
		case err == nil || err == unix.ENOENT:
			return nil
		case err != unix.EBUSY || time.Now().After(deadline):
			return fmt.Errorf("rmdir %s: %w", dir, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
