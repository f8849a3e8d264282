// Package registrytest starts the in-process OCI registry for a test,
// seeded with the sample images, with counters of what it served and a
// switch that corrupts one blob: how a test proves that a cache fetched
// each byte once, resolved a tag once, or refused bytes that do not match
// their digest.
package registrytest

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/podvisor/podvisor/shared/ociregistry"
)

// Registry is a seeded registry with counters.
type Registry struct {
	*ociregistry.Registry
	// BlobBytes and BlobGets count the blob bytes served and the blob
	// GETs; Manifests the manifest requests (resolutions).
	BlobBytes, BlobGets, Manifests atomic.Int64

	mu      sync.Mutex
	corrupt string
}

// Start starts the registry, seeds it (ociregistry.Seed) and closes it at
// cleanup; the counters start at zero after the seeding.
func Start(t testing.TB) *Registry {
	t.Helper()
	r := &Registry{}
	reg, err := ociregistry.Start(context.Background(), ociregistry.Config{Wrap: r.wrap})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Close)
	if _, err := ociregistry.Seed(context.Background(), reg.Addr()); err != nil {
		t.Fatal(err)
	}
	r.Registry = reg
	r.BlobBytes.Store(0)
	r.BlobGets.Store(0)
	r.Manifests.Store(0)
	return r
}

// Corrupt makes every GET of the blob digest ("sha256:…"; "" for none)
// serve one flipped byte.
func (r *Registry) Corrupt(digest string) {
	r.mu.Lock()
	r.corrupt = digest
	r.mu.Unlock()
}

func (r *Registry) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if strings.Contains(req.URL.Path, "/manifests/") {
			r.Manifests.Add(1)
		}
		if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/sha256:") {
			r.BlobGets.Add(1)
			r.mu.Lock()
			bad := r.corrupt != "" && strings.HasSuffix(req.URL.Path, "/blobs/"+r.corrupt)
			r.mu.Unlock()
			h.ServeHTTP(&countingWriter{ResponseWriter: w, reg: r, corrupt: bad}, req)
			return
		}
		h.ServeHTTP(w, req)
	})
}

type countingWriter struct {
	http.ResponseWriter
	reg     *Registry
	corrupt bool
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.reg.BlobBytes.Add(int64(len(p)))
	if w.corrupt && len(p) > 0 {
		q := append([]byte(nil), p...)
		q[len(q)/2] ^= 0x5a
		w.corrupt = false
		return w.ResponseWriter.Write(q)
	}
	return w.ResponseWriter.Write(p)
}
