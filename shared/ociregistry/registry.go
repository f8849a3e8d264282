package ociregistry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Config says where the registry listens.
type Config struct {
	// Addr is host:port to listen on; empty means 127.0.0.1 with a free port.
	// A host other than a loopback address is refused: the registry has no
	// authentication.
	Addr string
	// Wrap, when set, wraps the registry's HTTP handler (tests count or
	// corrupt what it serves).
	Wrap func(http.Handler) http.Handler
	// TLS, when set, makes the registry serve HTTPS with its certificate
	// (`podvisor up` issues one from the installation's CA); nil serves
	// plain HTTP, which clients accept only from loopback registries.
	TLS *tls.Config
	// RootCAs verify the registry's certificate in Options (the CA that
	// issued TLS's certificate); nil means the system's roots.
	RootCAs *x509.CertPool
}

// Validate checks the listen address.
func (c Config) Validate() error {
	if c.Addr == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(c.Addr)
	if err != nil {
		return fmt.Errorf("registry addr %q: want host:port: %w", c.Addr, err)
	}
	if port == "" {
		return fmt.Errorf("registry addr %q: missing port", c.Addr)
	}
	if host != "localhost" {
		ip := net.ParseIP(host)
		if ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("registry addr %q: host must be a loopback address (the registry has no authentication)", c.Addr)
		}
	}
	return nil
}

// Registry is a running in-memory OCI registry.
type Registry struct {
	addr   string
	opts   []remote.Option
	srv    *http.Server
	done   chan struct{}
	closed sync.Once
}

// Start listens on cfg.Addr and serves the registry until Close. ctx bounds
// the start-up only.
func Start(ctx context.Context, cfg Config) (*Registry, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	addr := cfg.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("registry listen on %s: %w", addr, err)
	}
	// The registry logs every request; a pull of a sample image would flood
	// the log of `podvisor up`.
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if cfg.Wrap != nil {
		h = cfg.Wrap(h)
	}
	if cfg.TLS != nil {
		tc := cfg.TLS.Clone()
		if tc.MinVersion < tls.VersionTLS12 {
			tc.MinVersion = tls.VersionTLS12
		}
		l = tls.NewListener(l, tc)
	}
	r := &Registry{
		addr: l.Addr().String(),
		srv:  &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)},
		done: make(chan struct{}),
	}
	if cfg.TLS != nil {
		// A client refusing the certificate makes the server log a
		// handshake error per attempt; the client says it better.
		t := remote.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12}
		r.opts = []remote.Option{remote.WithTransport(t)}
	}
	go func() {
		defer close(r.done)
		if err := r.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Printf("ociregistry: serve %s: %v", r.addr, err)
		}
	}()
	return r, nil
}

// Addr is the host:port the registry listens on; image references start with
// it (Addr()+"/podvisor/web:1.0").
func (r *Registry) Addr() string { return r.addr }

// Options are the remote options that reach this registry: a transport
// trusting Config.RootCAs when it serves TLS, none otherwise. Seed, PushWith
// and the other pushes take them.
func (r *Registry) Options() []remote.Option { return r.opts }

// Ref returns the full reference of repo:tag in this registry.
func (r *Registry) Ref(repoTag string) string {
	return r.addr + "/" + strings.TrimPrefix(repoTag, "/")
}

// Close stops the registry; its images are gone. Safe to call twice.
func (r *Registry) Close() {
	r.closed.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = r.srv.Shutdown(ctx)
		<-r.done
	})
}
