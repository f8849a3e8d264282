package oci_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/services/imagecache/oci"
	"github.com/podvisor/podvisor/shared/ociregistry"
)

// corruptingWriter flips one byte in the middle of a blob response.
type corruptingWriter struct {
	http.ResponseWriter
	done bool
}

func (w *corruptingWriter) Write(p []byte) (int, error) {
	if !w.done && len(p) > 100 {
		q := bytes.Clone(p)
		q[len(q)/2] ^= 0xff
		w.done = true
		return w.ResponseWriter.Write(q)
	}
	return w.ResponseWriter.Write(p)
}

func startRegistry(t *testing.T, corrupt *string) *ociregistry.Registry {
	t.Helper()
	return wrappedRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if *corrupt != "" && r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+*corrupt) {
				h.ServeHTTP(&corruptingWriter{ResponseWriter: w}, r)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
}

func newClient(t testing.TB, cfg oci.Config) *oci.Client {
	t.Helper()
	c, err := oci.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestResolveSharesBaseChainIDs(t *testing.T) {
	corrupt := ""
	reg := startRegistry(t, &corrupt)
	c := newClient(t, oci.Config{})
	ctx := context.Background()
	web, err := c.Resolve(ctx, reg.Ref("podvisor/web:1.0"))
	if err != nil {
		t.Fatal(err)
	}
	worker, err := c.Resolve(ctx, reg.Ref("podvisor/worker:1.0"))
	if err != nil {
		t.Fatal(err)
	}
	if len(web.Layers) != 3 || len(worker.Layers) != 2 {
		t.Fatalf("layers web=%d worker=%d", len(web.Layers), len(worker.Layers))
	}
	if web.Layers[0].ChainID != worker.Layers[0].ChainID || web.Layers[0].ChainID != web.Layers[0].DiffID {
		t.Fatal("base chainID must be shared and equal to the base diffID")
	}
	if web.Layers[1].ChainID == worker.Layers[1].ChainID {
		t.Fatal("different second layers gave the same chainID")
	}
	if want := oci.ChainIDs([]string{web.Layers[0].DiffID, web.Layers[1].DiffID})[1]; web.Layers[1].ChainID != want {
		t.Fatalf("chainID[1] = %s, want %s", web.Layers[1].ChainID, want)
	}

	var buf bytes.Buffer
	got, err := c.Fetch(ctx, web, 1, func(r io.Reader) error {
		_, err := io.Copy(&buf, r)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.Bytes != web.Layers[1].Size || int64(buf.Len()) != got.Uncompressed || got.Uncompressed < 512<<10 {
		t.Fatalf("fetched %+v, buffer %d, want %d compressed bytes and the tar uncompressed", got, buf.Len(), web.Layers[1].Size)
	}
}

func TestFetchCorruptBlob(t *testing.T) {
	corrupt := ""
	reg := startRegistry(t, &corrupt)
	c := newClient(t, oci.Config{})
	ctx := context.Background()
	img, err := c.Resolve(ctx, reg.Ref("podvisor/worker:1.0"))
	if err != nil {
		t.Fatal(err)
	}
	corrupt = img.Layers[1].Digest
	_, err = c.Fetch(ctx, img, 1, func(r io.Reader) error {
		_, err := io.Copy(io.Discard, r)
		return err
	})
	if !errors.Is(err, oci.ErrDigestMismatch) || !strings.Contains(err.Error(), img.Layers[1].Digest) {
		t.Fatalf("err = %v, want ErrDigestMismatch naming %s", err, img.Layers[1].Digest)
	}
}

func TestResolveErrors(t *testing.T) {
	corrupt := ""
	reg := startRegistry(t, &corrupt)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := l.Addr().String()
	l.Close()
	c := newClient(t, oci.Config{Retries: 1, RetryDelay: 1})
	tests := []struct {
		ref  string
		want error
	}{
		{ref: reg.Ref("podvisor/nope:1.0"), want: oci.ErrImageNotFound},
		{ref: reg.Ref("podvisor/web:9.9"), want: oci.ErrImageNotFound},
		{ref: dead + "/podvisor/web:1.0", want: oci.ErrRegistryUnavailable},
		{ref: "UPPER/case::bad", want: oci.ErrInvalidReference},
	}
	for _, tt := range tests {
		_, err := c.Resolve(context.Background(), tt.ref)
		if !errors.Is(err, tt.want) {
			t.Errorf("Resolve(%q) = %v, want %v", tt.ref, err, tt.want)
		}
	}
}

// A server that answers a registry's paths with an HTML page (a web server
// on the registry's old port, a proxy's error page) is an image not found
// whose message says the status, not the page; a short plain-text body,
// often the reason, is kept.
func TestAnHTMLErrorPageIsLeftOutOfTheMessage(t *testing.T) {
	page := "<!DOCTYPE HTML>\n<html><head><title>Error response</title></head><body><h1>Error response</h1><p>Error code: 404</p><p>Message: File not found.</p></body></html>\n"
	body := page
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, body)
	}))
	defer srv.Close()
	c := newClient(t, oci.Config{Retries: 1, RetryDelay: 1})
	ref := strings.TrimPrefix(srv.URL, "http://") + "/podvisor/vmos:1.0"
	_, err := c.Resolve(context.Background(), ref)
	if !errors.Is(err, oci.ErrImageNotFound) || strings.Contains(err.Error(), "<") ||
		!strings.Contains(err.Error(), "unexpected status code 404 Not Found (its body, ") {
		t.Errorf("Resolve of a server answering HTML: %v; want image not found, the status, no page", err)
	}
	body = "no such repository\n"
	if _, err := c.Resolve(context.Background(), ref); err == nil || !strings.Contains(err.Error(), "404 Not Found: no such repository") {
		t.Errorf("Resolve of a server answering a short reason: %v; want the reason kept", err)
	}
}
