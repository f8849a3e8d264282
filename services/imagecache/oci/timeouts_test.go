package oci_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podvisor/podvisor/services/imagecache/oci"
	"github.com/podvisor/podvisor/shared/ociregistry"
)

// wrappedRegistry is a registry seeded with the sample images whose
// handler wrap puts something hostile in front of.
func wrappedRegistry(t *testing.T, wrap func(h http.Handler) http.Handler) *ociregistry.Registry {
	t.Helper()
	reg, err := ociregistry.Start(context.Background(), ociregistry.Config{Wrap: wrap})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Close)
	if _, err := ociregistry.Seed(context.Background(), reg.Addr()); err != nil {
		t.Fatal(err)
	}
	return reg
}

// TestManifestDigestMismatch: a registry asked for a manifest by digest
// that serves another manifest fails the resolve at once with
// ErrDigestMismatch (no retry gets other bytes). Before, it was an
// unclassified error, retried as transient until the deliveries ran out.
func TestManifestDigestMismatch(t *testing.T) {
	var swap atomic.Bool
	var manifestGets atomic.Int32
	reg := wrappedRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if swap.Load() && strings.Contains(r.URL.Path, "/manifests/sha256:") {
				manifestGets.Add(1)
				r.URL.Path = "/v2/podvisor/worker/manifests/1.0"
			}
			h.ServeHTTP(w, r)
		})
	})
	c := newClient(t, oci.Config{})
	web, err := c.Resolve(context.Background(), reg.Ref("podvisor/web:1.0"))
	if err != nil {
		t.Fatal(err)
	}
	swap.Store(true)
	_, err = c.Resolve(context.Background(), reg.Ref("podvisor/web")+"@"+web.Digest)
	if !errors.Is(err, oci.ErrDigestMismatch) || !strings.Contains(err.Error(), web.Digest) {
		t.Fatalf("another manifest for %s: %v, want ErrDigestMismatch naming the digest asked for", web.Digest, err)
	}
	if n := manifestGets.Load(); n != 1 {
		t.Fatalf("the manifest was asked for %d times, want once (no retry)", n)
	}
}

// TestRegistryThatNeverAnswers: a listener that accepts connections and
// never answers fails a resolve within the bounds, with
// ErrRegistryUnavailable saying what timed out. Before, nothing bounded
// the wait for a response header: the pull hung until its caller gave up
// (ten minutes in the image cache).
func TestRegistryThatNeverAnswers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() }) // held open, never answered
		}
	}()
	c := newClient(t, oci.Config{Timeouts: oci.Timeouts{Handshake: 300 * time.Millisecond, Header: 300 * time.Millisecond}})
	start := time.Now()
	_, err = c.Resolve(context.Background(), ln.Addr().String()+"/app:1")
	took := time.Since(start)
	if !errors.Is(err, oci.ErrRegistryUnavailable) || !strings.Contains(err.Error(), "timed out after 300ms") {
		t.Fatalf("resolve from a registry that never answers: %v, want ErrRegistryUnavailable, timed out after 300ms", err)
	}
	if took > 5*time.Second {
		t.Fatalf("the resolve took %s, want about the 300ms bound", took)
	}
	t.Logf("failed after %s: %v", took, err)
}

// TestBodyIdleBound: a layer body that stops arriving fails the fetch
// within the idle bound, with ErrRegistryUnavailable; one that arrives
// slowly, pausing less than the bound each time, is fetched whole however
// long it takes in all.
func TestBodyIdleBound(t *testing.T) {
	var mode atomic.Value // "stall", "slow" or ""
	mode.Store("")
	reg := wrappedRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			m := mode.Load().(string)
			if m == "" || r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
				h.ServeHTTP(w, r)
				return
			}
			h.ServeHTTP(&pacedWriter{ResponseWriter: w, ctx: r.Context(), stall: m == "stall"}, r)
		})
	})
	c := newClient(t, oci.Config{Timeouts: oci.Timeouts{Idle: 400 * time.Millisecond}})
	img, err := c.Resolve(context.Background(), reg.Ref("podvisor/base:1.0"))
	if err != nil {
		t.Fatal(err)
	}
	fetch := func() error {
		_, err := c.Fetch(context.Background(), img, 0, func(r io.Reader) error {
			_, err := io.Copy(io.Discard, r)
			return err
		})
		return err
	}

	mode.Store("stall")
	start := time.Now()
	err = fetch()
	if !errors.Is(err, oci.ErrRegistryUnavailable) || !strings.Contains(err.Error(), "stalled: timed out after 400ms") {
		t.Fatalf("stalled body: %v, want ErrRegistryUnavailable, stalled: timed out after 400ms", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the stalled fetch took %s", took)
	}

	mode.Store("slow")
	start = time.Now()
	if err := fetch(); err != nil {
		t.Fatalf("slow body: %v, want it fetched", err)
	}
	if took := time.Since(start); took < 400*time.Millisecond {
		t.Fatalf("the slow fetch took %s, less than one idle bound: it proves nothing", took)
	}
}

// pacedWriter sends a blob in 64 KiB pieces 100ms apart, or, with stall,
// its first piece and then nothing until the client goes.
type pacedWriter struct {
	http.ResponseWriter
	ctx   context.Context
	stall bool
	sent  bool
}

func (w *pacedWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if w.sent {
			wait := 100 * time.Millisecond
			if w.stall {
				wait = time.Hour
			}
			select {
			case <-w.ctx.Done():
				return n, w.ctx.Err()
			case <-time.After(wait):
			}
		}
		piece := p[:min(len(p), 64<<10)]
		m, err := w.ResponseWriter.Write(piece)
		n += m
		if err != nil {
			return n, err
		}
		w.ResponseWriter.(http.Flusher).Flush()
		w.sent = true
		p = p[len(piece):]
	}
	return n, nil
}
