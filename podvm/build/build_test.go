package build

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The same inputs give the same initramfs bytes, whatever the files' times
// and the order they were added in.
func TestInitramfsReproducible(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	if err := os.WriteFile(a, []byte("first"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b, []byte("second"), 0o644); err != nil {
		t.Fatal(err)
	}
	write := func(first, second string) []byte {
		t1 := Tree{}
		t1.File("/x/"+filepath.Base(first), first, 0o755)
		t1.File("/y/"+filepath.Base(second), second, 0o644)
		t1.Symlink("/bin/sh", "busybox")
		var out bytes.Buffer
		if err := t1.WriteInitramfs(&out); err != nil {
			t.Fatal(err)
		}
		return out.Bytes()
	}
	one := write(a, b)
	if err := os.Chtimes(a, time1, time1); err != nil {
		t.Fatal(err)
	}
	if two := write(a, b); !bytes.Equal(one, two) {
		t.Fatal("a file's time changed the initramfs")
	}
	if other := write(b, a); bytes.Equal(one, other) {
		t.Fatal("different trees gave the same bytes")
	}
}

var time1 = time.Unix(1e9, 0)

func TestModuleOrder(t *testing.T) {
	dir := t.TempDir()
	dep := "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n" +
		"kernel/fs/jbd2/jbd2.ko:\nkernel/fs/mbcache.ko:\nkernel/lib/crc16.ko:\nkernel/fs/erofs/erofs.ko:\n"
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := ModuleOrder(dir, []string{"erofs", "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	want := "kernel/fs/erofs/erofs.ko kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko kernel/fs/ext4/ext4.ko"
	if strings.Join(got, " ") != want {
		t.Fatalf("order %v, want %s", got, want)
	}
	if _, err := ModuleOrder(dir, []string{"vmw_pvscsi"}); err == nil || !strings.Contains(err.Error(), "vmw_pvscsi") {
		t.Fatalf("err = %v, want one naming the module", err)
	}
}
