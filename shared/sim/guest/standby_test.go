package guest

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/privtest"
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

// A standby boots outside the manager's lock, as a power-on does: while
// its boot is under way, the running guests' calls (here Guest and
// Running, which take the lock as Reconfigure and a takeover do) answer at
// once. Booted under the lock, they waited for the whole boot: the network
// of a pod forked before it reached its guest only once the template's
// next standby had booted.
func TestStandbyBootsOutsideTheLock(t *testing.T) {
	m := newTestManager(t)
	parent := testVM(t, 1)
	if err := m.PowerOn(parent); err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan string, 1), make(chan struct{})
	m.beforeBoot = func(vm VM) {
		entered <- vm.Key
		<-release
	}
	booted := make(chan error, 1)
	go func() {
		sb := parent
		sb.Disks = append([]Disk(nil), parent.Disks...)
		_, err := m.StartStandby(parent.Key, sb)
		booted <- err
	}()
	<-entered
	answered := make(chan bool, 1)
	go func() {
		_, ok := m.Guest(parent.Key)
		answered <- ok && slices.Contains(m.Running(), parent.Key)
	}()
	select {
	case ok := <-answered:
		if !ok {
			t.Errorf("the parent's guest is not listed while its standby boots")
		}
	case <-time.After(5 * time.Second):
		t.Errorf("Guest and Running waited for a standby's boot: it holds the manager's lock")
	}
	close(release)
	if err := <-booted; err != nil {
		t.Fatal(err)
	}
	if !m.HasStandby(parent.Key) {
		t.Errorf("the standby booted is not the parent's")
	}
}
