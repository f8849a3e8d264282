package registrytest_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/podvisor/podvisor/shared/ociregistry/registrytest"
)

// The counters count what was served, and a corrupted blob no longer
// matches its digest while the others still do.
func TestCountsAndCorrupts(t *testing.T) {
	reg := registrytest.Start(t)
	ref, err := name.ParseReference(reg.Ref("podvisor/web:1.0"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref, append(reg.Options(), remote.WithContext(context.Background()))...)
	if err != nil {
		t.Fatal(err)
	}
	if n := reg.Manifests.Load(); n == 0 {
		t.Errorf("%d manifest requests after a resolution, want some", n)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) < 2 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	read := func(i int) (digest string, sum string, n int64) {
		t.Helper()
		d, err := layers[i].Digest()
		if err != nil {
			t.Fatal(err)
		}
		rc, err := layers[i].Compressed()
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		h := sha256.New()
		// Read past the verifying reader's check: the hash is ours.
		n, _ = io.Copy(h, rc)
		return d.String(), "sha256:" + hex.EncodeToString(h.Sum(nil)), n
	}
	d0, sum0, n0 := read(0)
	if sum0 != d0 {
		t.Errorf("layer 0 served %s, want %s", sum0, d0)
	}
	if got := reg.BlobBytes.Load(); got < n0 || reg.BlobGets.Load() != 1 {
		t.Errorf("counted %d bytes in %d GETs, want at least %d in 1", got, reg.BlobGets.Load(), n0)
	}
	d1, _, _ := read(1)
	reg.Corrupt(d1)
	if _, err := io.ReadAll(must(t, layers[1])); err == nil {
		t.Errorf("layer %s read without error while corrupted", d1)
	}
}

func must(t *testing.T, l interface{ Compressed() (io.ReadCloser, error) }) io.Reader {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	return rc
}
