package oci

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/docker/cli/cli/config/configfile"
	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/podvisor/podvisor/shared/bytesize"
)

// policy is the transport under go-containerregistry's: every request and
// every redirect it follows passes here, so the registry rules hold for
// manifests, blobs and token requests alike.
//
//   - Plain HTTP only to loopback registries and those listed as insecure;
//     any other http:// request (go-containerregistry picks http for
//     private-range addresses on its own) is sent as https. A loopback
//     registry whose HTTPS certificate did not verify gets no plain-HTTP
//     retry either: go-containerregistry would try HTTP after the failed
//     HTTPS ping, and the user would read "400 Bad Request" instead of the
//     certificate error.
//   - A redirect to another host only when that host is allowed.
//   - Manifest responses are cut at the manifest size cap.
//   - Each request waits at most Timeouts.Header for its response header,
//     and each read of its body at most Timeouts.Idle.
type policy struct {
	base        http.RoundTripper
	insecure    []string
	redirects   []string
	maxManifest int64
	timeouts    Timeouts

	mu sync.Mutex
	// untrusted holds the certificate error of each host whose HTTPS
	// certificate did not verify.
	untrusted map[string]error
}

func (p *policy) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !slices.Contains(p.insecure, req.URL.Host) {
		if !isLoopback(req.URL.Hostname()) {
			req = req.Clone(req.Context())
			req.URL.Scheme = "https"
		} else if cerr := p.certFailure(req.URL.Host); cerr != nil {
			return nil, fmt.Errorf("%w: %s: no plain-HTTP retry after its HTTPS certificate failed: %w", ErrUntrusted, req.URL.Host, cerr)
		}
	}
	if prev := req.Response; prev != nil && prev.Request != nil {
		from, to := prev.Request.URL.Host, req.URL.Host
		if from != to && !slices.Contains(p.redirects, "*") && !slices.Contains(p.redirects, req.URL.Hostname()) && !slices.Contains(p.redirects, to) {
			return nil, fmt.Errorf("%w: %s redirected to %s, a host not allowed (PODVISOR_REGISTRY_REDIRECT_HOSTS)", ErrRefused, from, to)
		}
	}
	resp, err := p.send(req)
	if cerr := certificateError(err); cerr != nil {
		p.mu.Lock()
		p.untrusted[req.URL.Host] = cerr
		p.mu.Unlock()
	}
	if err != nil || !strings.Contains(req.URL.Path, "/manifests/") || req.Method != http.MethodGet {
		return resp, err
	}
	if resp.ContentLength > p.maxManifest {
		resp.Body.Close()
		return nil, fmt.Errorf("%w: manifest %s of %d bytes, over the manifest size cap of %s", ErrLimit, req.URL.Path, resp.ContentLength, bytesize.IEC(p.maxManifest))
	}
	resp.Body = &limitedBody{rc: resp.Body, left: p.maxManifest, path: req.URL.Path}
	return resp, nil
}

// send sends req through the base transport within Timeouts.Header and
// bounds each read of the response body by Timeouts.Idle. A bound that
// runs out cancels the request: the error says which and after how long.
// The errors are not temporary, so go-containerregistry does not retry
// them within the call: a registry that hangs costs one bound per attempt,
// and the bus's redeliveries try again later, with the reason told.
func (p *policy) send(req *http.Request) (*http.Response, error) {
	what := req.Method + " " + req.URL.Redacted()
	ctx, cancel := context.WithCancelCause(req.Context())
	header := time.AfterFunc(p.timeouts.Header, func() {
		cancel(fmt.Errorf("%w: %s: no response header: timed out after %s", ErrRegistryUnavailable, what, p.timeouts.Header))
	})
	resp, err := p.base.RoundTrip(req.WithContext(ctx))
	header.Stop()
	if err != nil {
		var nerr net.Error
		switch cause := context.Cause(ctx); {
		case errors.Is(cause, ErrRegistryUnavailable):
			err = cause
		case errors.As(err, &nerr) && nerr.Timeout() && strings.Contains(err.Error(), "TLS handshake"):
			err = fmt.Errorf("%w: %s: TLS handshake timed out after %s", ErrRegistryUnavailable, what, p.timeouts.Handshake)
		}
		cancel(nil)
		return nil, err
	}
	resp.Body = &idleBody{rc: resp.Body, ctx: ctx, cancel: cancel, idle: p.timeouts.Idle, what: what}
	return resp, nil
}

// idleBody fails a body read that waits longer than idle for a byte, by
// cancelling the request: a stalled body fails, a slow one does not (the
// bound is on each read, not on the whole body).
type idleBody struct {
	rc     io.ReadCloser
	ctx    context.Context
	cancel context.CancelCauseFunc
	idle   time.Duration
	what   string
}

func (b *idleBody) Read(p []byte) (int, error) {
	stall := time.AfterFunc(b.idle, func() {
		b.cancel(fmt.Errorf("%w: %s: the body stalled: timed out after %s without a byte", ErrRegistryUnavailable, b.what, b.idle))
	})
	n, err := b.rc.Read(p)
	stall.Stop()
	if err != nil && err != io.EOF {
		if cause := context.Cause(b.ctx); errors.Is(cause, ErrRegistryUnavailable) {
			err = cause
		}
	}
	return n, err
}

func (b *idleBody) Close() error {
	err := b.rc.Close()
	b.cancel(nil)
	return err
}

// boundedDial dials within timeout, and says so when it runs out.
func boundedDial(timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		var nerr net.Error
		if err != nil && ctx.Err() == nil && errors.As(err, &nerr) && nerr.Timeout() {
			return nil, fmt.Errorf("%w: connect to %s: timed out after %s", ErrRegistryUnavailable, addr, timeout)
		}
		return c, err
	}
}

func (p *policy) certFailure(host string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.untrusted[host]
}

// certificateError finds why a TLS certificate was refused in err, or nil.
func certificateError(err error) error {
	if err == nil {
		return nil
	}
	var verr *tls.CertificateVerificationError
	var uerr x509.UnknownAuthorityError
	var herr x509.HostnameError
	var ierr x509.CertificateInvalidError
	switch {
	case errors.As(err, &verr):
		return verr
	case errors.As(err, &uerr):
		return uerr
	case errors.As(err, &herr):
		return herr
	case errors.As(err, &ierr):
		return ierr
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// limitedBody fails a manifest body that runs past the cap (a server that
// sends no Content-Length, or lies about it).
type limitedBody struct {
	rc   io.ReadCloser
	left int64
	path string
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, fmt.Errorf("%w: manifest %s runs past the manifest size cap", ErrLimit, b.path)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	if b.left <= 0 && err == nil {
		// One byte more tells a body of exactly the cap from a longer one.
		var one [1]byte
		if m, _ := b.rc.Read(one[:]); m > 0 {
			return n, fmt.Errorf("%w: manifest %s runs past the manifest size cap", ErrLimit, b.path)
		}
	}
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }

// fileKeychain reads credentials from a docker config file (auths and
// credential helpers, as docker login writes them).
func fileKeychain(path string) (authn.Keychain, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("registry auth file: %w", err)
	}
	defer f.Close()
	cf := configfile.New(path)
	if err := cf.LoadFromReader(f); err != nil {
		return nil, fmt.Errorf("registry auth file %s: %w", path, err)
	}
	return &configKeychain{cf: cf}, nil
}

type configKeychain struct{ cf *configfile.ConfigFile }

func (k *configKeychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	key := target.RegistryStr()
	if key == "index.docker.io" {
		key = "https://index.docker.io/v1/"
	}
	ac, err := k.cf.GetAuthConfig(key)
	if err != nil {
		return nil, fmt.Errorf("registry auth file: credentials of %s: %w", key, err)
	}
	if ac.Username == "" && ac.Password == "" && ac.Auth == "" && ac.IdentityToken == "" && ac.RegistryToken == "" {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(authn.AuthConfig{Username: ac.Username, Password: ac.Password, Auth: ac.Auth,
		IdentityToken: ac.IdentityToken, RegistryToken: ac.RegistryToken}), nil
}
