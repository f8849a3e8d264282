package guest

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/agent/privtest"
)

// TestGuestDirectoriesAreATmpfsGoneAtClose: the guests' directories live
// on a tmpfs the manager mounts on Config.Dir (a hypervisor's runtime
// directory), their console logs on disk, and Close leaves neither the
// mount nor the directories.
func TestGuestDirectoriesAreATmpfsGoneAtClose(t *testing.T) {
	m := newTestManager(t)
	if err := m.PowerOn(testVM(t, 1)); err != nil {
		t.Fatal(err)
	}
	var st unix.Statfs_t
	boot := filepath.Join(m.cfg.Dir, "vm-1", "boot.json")
	if err := unix.Statfs(boot, &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		t.Fatalf("%s: filesystem %#x (%v), want a tmpfs", boot, st.Type, err)
	}
	// The console log grows with the guest's output: it stays on disk.
	console := filepath.Join(m.cfg.Dir, "vm-1", "console.log")
	if target, err := os.Readlink(console); err != nil || filepath.Dir(target) != consolesOf(m.cfg.Dir) {
		t.Errorf("%s links to %q (%v), want a file in %s, beside the tmpfs", console, target, err, consolesOf(m.cfg.Dir))
	}
	if !ownMount(m.cfg.Dir) {
		t.Errorf("%s is not the manager's own tmpfs mount (%s)", m.cfg.Dir, runDirSource)
	}
	m.Close()
	if _, err := os.Stat(consolesOf(m.cfg.Dir)); !os.IsNotExist(err) {
		t.Errorf("the console logs' directory still there after Close (%v)", err)
	}
	if mounted(m.cfg.Dir) {
		t.Errorf("%s is still a mount point after Close", m.cfg.Dir)
	}
	if _, err := os.Stat(m.cfg.Dir); !os.IsNotExist(err) {
		t.Errorf("%s still there after Close (%v)", m.cfg.Dir, err)
	}
}

// TestLeftoverMountIsTakenOverAndOthersLeftAlone: a guests' directory
// still mounted by a manager whose process died is this manager's to
// unmount at Close; a tmpfs somebody else mounted there is not.
func TestLeftoverMountIsTakenOverAndOthersLeftAlone(t *testing.T) {
	privtest.Require(t, "the guests' directory is a tmpfs mount")
	base := t.TempDir()
	for _, tc := range []struct {
		source string
		ours   bool
	}{{runDirSource, true}, {"tmpfs", false}} {
		dir := filepath.Join(base, tc.source)
		if err := os.MkdirAll(dir, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount(tc.source, dir, "tmpfs", 0, ""); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
		unmount, err := mountRunDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		unmount()
		if still := mounted(dir); still == tc.ours {
			t.Errorf("a tmpfs named %q on the directory: still mounted after the unmount = %v, want %v", tc.source, still, !tc.ours)
		}
	}
}

// mounted says whether dir is a mount point.
func mounted(dir string) bool {
	_, _, ok := mountAt(dir)
	return ok
}
