package build

import (
	"bytes"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/podvisor/podvisor/agent/privtest"
)

// qemu-img, an independent reader of VMDK, converts the stream back to the
// same raw bytes.
func TestStreamOptimizedReadsBack(t *testing.T) {
	privtest.RequireTools(t, "qemu-img")
	dir := t.TempDir()
	raw := make([]byte, 40<<20) // more than one grain table (32 MiB)
	rnd := rand.New(rand.NewSource(1))
	for _, off := range []int{0, 70000, 33 << 20, 40<<20 - 100} {
		rnd.Read(raw[off : off+100])
	}
	src, dst, back := filepath.Join(dir, "disk.raw"), filepath.Join(dir, "disk.vmdk"), filepath.Join(dir, "back.raw")
	if err := os.WriteFile(src, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteStreamOptimized(dst, src); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-img", "check", "-f", "vmdk", dst).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img check: %v: %s", err, out)
	}
	if out, err := exec.Command("qemu-img", "convert", "-f", "vmdk", "-O", "raw", dst, back).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	got, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, raw) {
		t.Fatal("the VMDK reads back different bytes")
	}
	st, _ := os.Stat(dst)
	if st.Size() > 1<<20 {
		t.Fatalf("a mostly empty disk took %d bytes: zero grains must be left out", st.Size())
	}
}
