package layerfs_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/podvisor/podvisor/services/imagecache/layerfs"
)

// FuzzStage feeds arbitrary bytes to Stage as a layer: it must never panic
// and never write outside its staging root, whatever the stream says.
// The seeds in testdata/fuzz/FuzzStage are layers with hostile entries
// (go test runs them; go test -fuzz=FuzzStage explores from them).
func FuzzStage(f *testing.F) {
	f.Add(tarOf(f, entry{name: "a/b", body: "x"}, entry{name: "a/.wh..wh..opq"}, entry{name: "a/.wh.c"}))
	f.Add(tarOf(f, entry{name: "l", typ: '2', link: "/"}, entry{name: "l/x", body: "x"}))
	f.Add(tarOf(f, entry{name: "../x", body: "x"}))
	f.Fuzz(func(t *testing.T, data []byte) {
		outer := t.TempDir()
		root := filepath.Join(outer, "root")
		if err := os.Mkdir(root, 0o755); err != nil {
			t.Fatal(err)
		}
		_ = layerfs.StageInto(context.Background(), bytes.NewReader(data), root, layerfs.Options{MaxEntries: 256}, nil)
		assertOnlyRoot(t, outer)
		// Nothing written under root may be reachable only by leaving it:
		// every entry's real path stays inside root.
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			rel, rerr := filepath.Rel(root, p)
			if rerr != nil || rel == ".." || len(rel) > 2 && rel[:3] == "../" {
				t.Fatalf("walked out of root to %s", p)
			}
			return nil
		})
	})
}
