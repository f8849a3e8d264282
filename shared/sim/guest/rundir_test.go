package guest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
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
	m.Close()
	if _, err := os.Stat(consolesOf(m.cfg.Dir)); !os.IsNotExist(err) {
		t.Errorf("the console logs' directory still there after Close (%v)", err)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), " "+m.cfg.Dir+" ") {
		t.Errorf("%s is still a mount after Close:\n%s", m.cfg.Dir, mounts)
	}
	if _, err := os.Stat(m.cfg.Dir); !os.IsNotExist(err) {
		t.Errorf("%s still there after Close (%v)", m.cfg.Dir, err)
	}
}
