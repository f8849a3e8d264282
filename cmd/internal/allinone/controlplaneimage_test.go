package allinone

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The control-plane layer is compressed once and kept: a second start finds
// it, a rebuilt binary gets a new one (the old one goes), and its digest is
// the one the layer had when it was compressed at every start, so the boot
// disks the native VM controller built for it stay in use.
func TestControlPlaneLayerIsKeptAndStable(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "podvisor-guest")
	if err := os.WriteFile(bin, bytes.Repeat([]byte("static binary "), 50000), 0o755); err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(dir, "cache")
	first, err := controlPlaneLayer(cache, bin)
	if err != nil {
		t.Fatal(err)
	}
	st1, err := os.Stat(first)
	if err != nil {
		t.Fatal(err)
	}
	again, err := controlPlaneLayer(cache, bin)
	if err != nil {
		t.Fatal(err)
	}
	if st2, err := os.Stat(again); again != first || err != nil || !os.SameFile(st1, st2) || !st2.ModTime().Equal(st1.ModTime()) {
		t.Fatalf("second start made the layer again: %s (%v) after %s", again, err, first)
	}

	layer, err := tarball.LayerFromFile(first)
	if err != nil {
		t.Fatal(err)
	}
	got, err := layer.Digest()
	if err != nil {
		t.Fatal(err)
	}
	var plain bytes.Buffer
	if err := binaryLayerTar(&plain, bin); err != nil {
		t.Fatal(err)
	}
	ref, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(plain.Bytes())), nil },
		tarball.WithCompressionLevel(gzip.BestSpeed))
	if err != nil {
		t.Fatal(err)
	}
	if want, err := ref.Digest(); err != nil || got != want {
		t.Fatalf("kept layer's digest %s, want %s (compressed at every start) %v", got, want, err)
	}

	later := st1.ModTime().Add(time.Minute)
	if err := os.Chtimes(bin, later, later); err != nil {
		t.Fatal(err)
	}
	rebuilt, err := controlPlaneLayer(cache, bin)
	if err != nil {
		t.Fatal(err)
	}
	if rebuilt == first {
		t.Fatal("a rebuilt binary kept the old layer")
	}
	if left, _ := filepath.Glob(filepath.Join(cache, "*")); len(left) != 1 || left[0] != rebuilt {
		t.Fatalf("cache holds %v, want only %s", left, rebuilt)
	}
}
