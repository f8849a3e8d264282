package guest

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// The guests' directories (boot config, console log, channel socket, the
// agent's state directory) are what a hypervisor keeps in its runtime
// directory, /run on a real host: a tmpfs. The manager mounts one on
// Config.Dir, which it owns (Close removes it), so that the files each
// guest start makes and each power-off removes never go through the host
// filesystem's allocator (on an ext4 without a journal every new inode is
// checked against those deleted in the last 30 s, which a burst of guest
// starts paid for at every create; docs/bench.md). The disks stay on the
// datastores, and the console logs on disk too: they grow with what the
// guest prints for as long as it runs (a guest cluster's control plane
// prints much), as a VM's serial log does on its datastore, and must not
// take the host's memory. Each guest directory's console.log is a link to
// <Dir>.consoles/<guest>.log.

// consolesOf is the directory of the console logs of the guests in dir.
func consolesOf(dir string) string { return filepath.Clean(dir) + ".consoles" }

func (m *Manager) consoles() string { return consolesOf(m.cfg.Dir) }

// openConsole opens the console log of the guest whose directory is dir,
// linked from dir/console.log, for appending.
func (m *Manager) openConsole(dir string) (*os.File, error) {
	path := filepath.Join(m.consoles(), filepath.Base(dir)+".log")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	if err := os.Symlink(path, filepath.Join(dir, "console.log")); err != nil && !errors.Is(err, fs.ErrExist) {
		f.Close()
		return nil, err
	}
	return f, nil
}

// removeConsole removes the console log of the guest directory name.
func (m *Manager) removeConsole(name string) error {
	err := os.Remove(filepath.Join(m.consoles(), name+".log"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// runDirSource names the tmpfs mounts of guests' directories in the mount
// table, so that one left by a process that died is known for ours.
const runDirSource = "podvisor-guests"

// mountRunDir mounts a tmpfs on dir unless dir is on one already. It
// returns what Close calls to unmount it: nothing for a directory on a
// tmpfs it did not mount, except a mount of its own left by a process that
// died, which it takes over.
func mountRunDir(dir string) (unmount func(), err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return nil, err
	}
	detach := func() { _ = unix.Unmount(dir, unix.MNT_DETACH) }
	if st.Type == unix.TMPFS_MAGIC {
		if ownMount(dir) {
			return detach, nil
		}
		return func() {}, nil
	}
	if err := unix.Mount(runDirSource, dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0750"); err != nil {
		return nil, fmt.Errorf("mount a tmpfs on the guests' directory %s: %w", dir, err)
	}
	return detach, nil
}

// ownMount says whether dir is the mount point of a tmpfs named
// runDirSource in this process's mount table.
func ownMount(dir string) bool {
	fstype, source, ok := mountAt(dir)
	return ok && fstype == "tmpfs" && source == runDirSource
}

// mountAt returns the filesystem type and source of the mount whose mount
// point is dir in this process's mount table; ok is false when dir is no
// mount point (or the table cannot be read).
func mountAt(dir string) (fstype, source string, ok bool) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", "", false
	}
	for line := range strings.Lines(string(b)) {
		// id parent major:minor root mountpoint options... - fstype source superoptions
		pre, post, found := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if found && len(f) >= 5 && len(g) >= 2 && f[4] == dir {
			fstype, source, ok = g[0], g[1], true // the last one mounted there is the one in use
		}
	}
	return fstype, source, ok
}
