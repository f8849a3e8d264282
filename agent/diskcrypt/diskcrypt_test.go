package diskcrypt_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/agent/diskcrypt"
	"github.com/podvisor/podvisor/agent/privtest"
)

// fsImage makes an ext4 image with the encrypt feature, as package disks
// formats the ephemeral disk, and mounts it; both go at cleanup.
func fsImage(t *testing.T) (img, mnt string) {
	t.Helper()
	privtest.Require(t, "loop mounts and fscrypt ioctls")
	privtest.RequireTools(t, "mkfs.ext4", "mount", "umount")
	dir := t.TempDir()
	img = filepath.Join(dir, "disk.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-O", "encrypt", img, "32M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	mnt = filepath.Join(dir, "mnt")
	mount(t, img, mnt)
	return img, mnt
}

func mount(t *testing.T, img, mnt string) {
	t.Helper()
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
}

func key(t *testing.T) []byte {
	k := make([]byte, diskcrypt.KeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// The marker a container writes through an overlay whose upper layer is
// in the encrypted directory reaches the disk only as ciphertext, and the
// directory opens again with its key and only with it.
func TestUnlockEncryptsWhatThePodWrites(t *testing.T) {
	img, mnt := fsImage(t)
	k := key(t)
	u, err := diskcrypt.Unlock(mnt, k)
	if err != nil {
		t.Fatal(err)
	}
	// The containers' writable layers: overlay upper/work in the
	// encrypted directory, a plain lower.
	lower := t.TempDir()
	upper, work, merged := filepath.Join(u.Dir, "upper"), filepath.Join(u.Dir, "work"), filepath.Join(t.TempDir(), "merged")
	for _, d := range []string{upper, work, merged} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("overlay", merged, "overlay", 0, "lowerdir="+lower+",upperdir="+upper+",workdir="+work); err != nil {
		t.Fatalf("overlay on the encrypted directory: %v", err)
	}
	marker := []byte("podvisor-marker-" + rand.Text())
	if err := os.WriteFile(filepath.Join(merged, "secret.txt"), bytes.Repeat(append(marker, '\n'), 64), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(u.Dir, "log.txt"), marker, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Unmount(merged, 0); err != nil {
		t.Fatal(err)
	}
	if err := u.Lock(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, marker) {
		t.Fatal("the marker is on the disk in clear")
	}
	if bytes.Contains(raw, []byte("secret.txt")) {
		t.Fatal("a file name of the encrypted directory is on the disk in clear")
	}

	mount(t, img, mnt)
	if _, err := diskcrypt.Unlock(mnt, key(t)); !errors.Is(err, diskcrypt.ErrWrongKey) {
		t.Fatalf("unlock with another key: %v, want ErrWrongKey", err)
	}
	u, err = diskcrypt.Unlock(mnt, k)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Lock()
	got, err := os.ReadFile(filepath.Join(u.Dir, "upper", "secret.txt"))
	if err != nil || !bytes.HasPrefix(got, marker) {
		t.Fatalf("read back with the key: %q, %v", got, err)
	}
}

func TestUnlockRefusesAFilesystemWithoutEncryption(t *testing.T) {
	privtest.Require(t, "loop mounts")
	privtest.RequireTools(t, "mkfs.ext4", "mount")
	dir := t.TempDir()
	img := filepath.Join(dir, "plain.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-O", "^encrypt", img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	mnt := filepath.Join(dir, "mnt")
	mount(t, img, mnt)
	if _, err := diskcrypt.Unlock(mnt, key(t)); err == nil {
		t.Fatal("unlock on ext4 without the encrypt feature succeeded")
	}
	if _, err := diskcrypt.Unlock(mnt, []byte("short")); err == nil {
		t.Fatal("a 5-byte key was accepted")
	}
}
