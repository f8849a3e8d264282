package guest

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// A child disk never written starts with its parent's content, zeros and
// holes of the parent included; a child written before keeps its own; the
// parent is never written.
func TestDeltaDiskStartsWithItsParent(t *testing.T) {
	dir := t.TempDir()
	parent := filepath.Join(dir, "template-flat.vmdk")
	// Data, a block of zeros written as data (as an upload writes them),
	// a hole, data again, then a hole to the end.
	const size = 64 * deltaBlock
	f, err := os.Create(parent)
	if err != nil {
		t.Fatal(err)
	}
	head := bytes.Repeat([]byte("superblock"), 2*deltaBlock/10)
	for _, w := range []struct {
		off  int64
		data []byte
	}{{0, head}, {3 * deltaBlock, make([]byte, deltaBlock)}, {40*deltaBlock + 100, []byte("journal")}} {
		if _, err := f.WriteAt(w.data, w.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	want, err := os.ReadFile(parent)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(parent)

	var b bases
	child := filepath.Join(dir, "pv-1", "ephemeral-flat.vmdk")
	if err := os.MkdirAll(filepath.Dir(child), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := b.materialize(child, parent); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(child); !bytes.Equal(got, want) {
		t.Fatalf("the child (%d bytes) does not read as its parent (%d bytes)", len(got), len(want))
	}
	if img, _ := b.image(parent); len(img.runs) != 2 {
		t.Errorf("kept %d runs of the parent, want 2 (the zero block and holes skipped)", len(img.runs))
	}

	// An empty extent (what vCenter creates) is a child never written too.
	second := filepath.Join(dir, "pv-2-flat.vmdk")
	if err := os.WriteFile(second, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := b.materialize(second, parent); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(second); !bytes.Equal(got, want) {
		t.Error("an empty child extent did not get its parent's content")
	}

	// The child's own writes survive its next boot.
	if err := os.WriteFile(child, []byte("the guest's own data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := b.materialize(child, parent); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(child); string(got) != "the guest's own data" {
		t.Errorf("a written child was replaced by its parent: %q", got[:min(len(got), 32)])
	}
	after, _ := os.Stat(parent)
	if !after.ModTime().Equal(before.ModTime()) || after.Size() != before.Size() {
		t.Error("the parent was written")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "pv-1", ".delta-*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
