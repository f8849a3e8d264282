package guest

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/podvisor/podvisor/shared/privtest"
)

// A standby is prepared once its read/write disks back loop devices
// mounted in its guest: loopBackingFiles finds them from the process's
// mount table alone.
func TestLoopBackingFilesNamesMountedLoops(t *testing.T) {
	privtest.Require(t, "loop-mounts a filesystem")
	privtest.RequireTools(t, "mkfs.ext4", "mount", "umount")
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "disk-flat.vmdk"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 8<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	if slices.Contains(loopBackingFiles(os.Getpid()), img) {
		t.Fatalf("%s listed before it is mounted", img)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	t.Cleanup(func() {
		// -o loop attached it with autoclear: the unmount detaches it.
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
		}
	})
	if got := loopBackingFiles(os.Getpid()); !slices.Contains(got, img) {
		t.Fatalf("loopBackingFiles = %q, want it to name %s", got, img)
	}
	if got := loopBackingFiles(1 << 30); got != nil {
		t.Errorf("loopBackingFiles of a process that does not exist = %q, want none", got)
	}
}
