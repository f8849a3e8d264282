package ociregistry

import (
	"context"
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
	r := &Registry{
		addr: l.Addr().String(),
		srv:  &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second},
		done: make(chan struct{}),
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
