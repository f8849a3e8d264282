package oci_test

import (
	"context"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/podvisor/podvisor/services/imagecache/oci"
	"github.com/podvisor/podvisor/shared/ociregistry"
	"github.com/podvisor/podvisor/shared/pki"
)

// tlsRegistry is go-containerregistry's registry behind httptest's TLS
// server, seeded with the sample images; it counts the requests that reach
// the registry and those that came without TLS.
type tlsRegistry struct {
	srv            *httptest.Server
	requests, bare atomic.Int64
}

func startTLSRegistry(t *testing.T) *tlsRegistry {
	t.Helper()
	r := &tlsRegistry{}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.requests.Add(1)
		if req.TLS == nil {
			r.bare.Add(1)
		}
		reg.ServeHTTP(w, req)
	}))
	r.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes
	r.srv.StartTLS()
	t.Cleanup(r.srv.Close)
	if _, err := ociregistry.Seed(context.Background(), r.addr(), remote.WithTransport(r.srv.Client().Transport)); err != nil {
		t.Fatal(err)
	}
	r.requests.Store(0)
	return r
}

func (r *tlsRegistry) addr() string { return strings.TrimPrefix(r.srv.URL, "https://") }

// caFile writes the certificate the server presents (httptest's, which is
// its own root) as a PEM bundle.
func (r *tlsRegistry) caFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "registry-ca.pem")
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.srv.Certificate().Raw})
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTLSRegistryWithItsCA: a registry serving TLS is pulled from over
// HTTPS, its certificate verified against the CA bundle; no request goes
// out in plain HTTP.
func TestTLSRegistryWithItsCA(t *testing.T) {
	r := startTLSRegistry(t)
	c := newClient(t, oci.Config{CAFile: r.caFile(t)})
	if err := fetchAll(t, c, r.addr()+"/podvisor/web:1.0"); err != nil {
		t.Fatalf("pull over TLS with the registry's CA: %v", err)
	}
	if r.requests.Load() == 0 {
		t.Fatal("no request reached the registry")
	}
	if n := r.bare.Load(); n != 0 {
		t.Errorf("%d requests reached the registry without TLS", n)
	}
}

// TestTLSRegistryCertificateRefused: without the registry's CA, or with
// another CA, the pull fails with ErrUntrusted (an ErrRefused: the image
// cache does not retry it), says it is the certificate, never falls back
// to plain HTTP, and reads nothing from the registry.
func TestTLSRegistryCertificateRefused(t *testing.T) {
	r := startTLSRegistry(t)
	other, err := pki.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]oci.Config{
		"system roots only": {},
		"another CA":        {CAFile: other.CAFile()},
	} {
		t.Run(name, func(t *testing.T) {
			cfg.Retries, cfg.RetryDelay = 1, 1
			_, err := newClient(t, cfg).Resolve(context.Background(), r.addr()+"/podvisor/web:1.0")
			if !errors.Is(err, oci.ErrUntrusted) || !errors.Is(err, oci.ErrRefused) {
				t.Fatalf("pull with %s: %v, want ErrUntrusted", name, err)
			}
			if !strings.Contains(err.Error(), "certificate") {
				t.Errorf("error does not say it is the certificate: %v", err)
			}
			if errors.Is(err, oci.ErrRegistryUnavailable) {
				t.Errorf("a refused certificate is classed as worth retrying: %v", err)
			}
			if n := r.requests.Load(); n != 0 {
				t.Errorf("%d requests reached the registry through a refused certificate", n)
			}
		})
	}
}

// TestCAFileErrors: a CA bundle that is missing or holds no certificate
// fails New, naming it.
func TestCAFileErrors(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(bad, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{bad, filepath.Join(t.TempDir(), "missing.pem")} {
		if _, err := oci.New(oci.Config{CAFile: p}); err == nil || !strings.Contains(err.Error(), "registry CA") {
			t.Errorf("CAFile %s: %v, want an error naming the registry CA", p, err)
		}
	}
}
