package vsphere

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/session/keepalive"
	"github.com/vmware/govmomi/vapi/rest"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Session is a logged-in connection to vCenter scoped to one datacenter. It
// stays logged in: an idle session is kept alive, and a call that finds the
// session gone (expired, or terminated by an administrator) logs in again and
// is retried once. It is safe for concurrent use.
type Session struct {
	// Client is the govmomi client; Client.Client is the vim25 client that
	// object.* constructors take.
	Client *govmomi.Client
	// Finder resolves inventory paths relative to Datacenter.
	Finder *find.Finder
	// Datacenter is the datacenter the session works in.
	Datacenter *object.Datacenter

	cfg       Config
	url       *url.URL
	relogin   *reloginRoundTripper
	keepalive *keepalive.HandlerSOAP
	closeOnce sync.Once
}

// MaxIdleConns is how many idle connections to vCenter a session keeps for
// reuse: enough for the concurrency of the busiest service (the
// provisioner's 64 pod workers and its other controllers, each with a task
// wait and a call in flight), so that a burst finds a connection to reuse
// rather than dialing and handshaking anew.
const MaxIdleConns = 256

// tlsSessions is how many TLS sessions a session keeps for resumption (one
// vCenter, but a ticket per connection may be spent).
const tlsSessions = 256

// Connect logs in to vCenter and resolves the datacenter. The error names the
// endpoint (without credentials) and what failed.
func Connect(ctx context.Context, cfg Config) (*Session, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	u, _ := cfg.endpoint()
	user := cfg.credentials(u)
	u.User = nil
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = DefaultKeepAlive
	}

	sc := soap.NewClient(u, cfg.Insecure)
	sc.Timeout = cfg.CallTimeout
	if sc.Timeout == 0 {
		sc.Timeout = DefaultCallTimeout
	}
	if cfg.CAFile != "" {
		if err := sc.SetRootCAs(cfg.CAFile); err != nil {
			return nil, fmt.Errorf("vsphere: CA certificates %s (GOVC_TLS_CA_CERTS): %w", cfg.CAFile, err)
		}
	}
	if cfg.Thumbprint != "" {
		sc.SetThumbprint(u.Host, cfg.Thumbprint)
	}
	// net/http keeps 2 idle connections per host (100 in all) by default: a
	// service with more calls in flight than that closes and dials (and,
	// against a real vCenter, TLS-handshakes) a connection for most calls
	// under load. A connection that must be dialed resumes a TLS session
	// instead of a full handshake (no certificate chain sent and verified).
	t := sc.DefaultTransport()
	t.MaxIdleConnsPerHost, t.MaxIdleConns = MaxIdleConns, MaxIdleConns
	t.TLSClientConfig.ClientSessionCache = tls.NewLRUClientSessionCache(tlsSessions)
	vc, err := vim25.NewClient(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("vsphere: connect to %s: %w", u, err)
	}

	s := &Session{cfg: cfg, url: u}
	// The chain is: relogin -> keepalive -> SOAP. Keepalive starts its timer
	// on every successful Login, re-logins included.
	s.keepalive = keepalive.NewHandlerSOAP(sc, cfg.KeepAlive, s.keepAlive)
	s.relogin = &reloginRoundTripper{next: s.keepalive}
	vc.RoundTripper = s.relogin
	s.Client = &govmomi.Client{Client: vc, SessionManager: session.NewManager(vc)}
	s.relogin.login = func(ctx context.Context) error { return s.Client.SessionManager.Login(ctx, user) }

	if err := s.Client.Login(ctx, user); err != nil {
		s.keepalive.Stop()
		return nil, fmt.Errorf("vsphere: log in to %s as %s: %w", u, user.Username(), err)
	}
	s.relogin.logins.Add(1)

	s.Finder = find.NewFinder(vc, true)
	var dc *object.Datacenter
	if cfg.Datacenter != "" {
		dc, err = s.Finder.Datacenter(ctx, cfg.Datacenter)
	} else {
		dc, err = s.Finder.DefaultDatacenter(ctx)
	}
	if err != nil {
		_ = s.Close(ctx)
		return nil, fmt.Errorf("vsphere: datacenter %q on %s: %w", cfg.Datacenter, u, err)
	}
	s.Finder.SetDatacenter(dc)
	s.Datacenter = dc
	return s, nil
}

// Vim is the vim25 client, for object.New* and methods.* calls.
func (s *Session) Vim() *vim25.Client { return s.Client.Client }

// URL is the endpoint without credentials, safe to log.
func (s *Session) URL() string { return s.url.String() }

// Logins counts successful logins, the first one included: more than one
// means the session was lost and re-established.
func (s *Session) Logins() int64 { return s.relogin.logins.Load() }

// Close logs out and stops the keepalive. A session that vCenter already
// dropped closes without error.
func (s *Session) Close(ctx context.Context) error {
	var err error
	s.closeOnce.Do(func() {
		// No re-login may start from now on, and one in flight finishes
		// first: a Login racing the Logout would restart the keepalive
		// while Logout is stopping it.
		s.relogin.closed.Store(true)
		s.relogin.mu.Lock()
		s.relogin.mu.Unlock() //nolint:staticcheck // an empty critical section is the point: wait for the holder
		err = s.Client.Logout(ctx)
		s.keepalive.Stop() // Logout stops it too, unless the call failed
		if fault.Is(err, &types.NotAuthenticated{}) {
			err = nil
		}
		if err != nil {
			err = fmt.Errorf("vsphere: log out of %s: %w", s.url, err)
		}
	})
	return err
}

// keepAlive runs every KeepAlive interval while the session is idle. It asks
// who is logged in; no one means vCenter dropped the session, so it logs in
// again now rather than on the next call. Errors do not stop the timer: the
// next tick tries again, and a call in between re-logs in by itself.
func (s *Session) keepAlive() error {
	if s.relogin.closed.Load() {
		return errors.New("session closed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	gen := s.relogin.generation.Load()
	us, err := s.Client.SessionManager.UserSession(ctx)
	if err == nil && us == nil {
		_ = s.relogin.relogin(ctx, gen)
	}
	return nil
}

// reloginRoundTripper logs in again when a call fails with NotAuthenticated
// and retries the call once. Concurrent calls that fail together cause one
// login: each remembers the login generation it started under, and only the
// first to take the lock while that generation is current logs in.
type reloginRoundTripper struct {
	next  soap.RoundTripper
	login func(context.Context) error

	mu         sync.Mutex
	generation atomic.Uint64
	logins     atomic.Int64
	closed     atomic.Bool
}

func (r *reloginRoundTripper) RoundTrip(ctx context.Context, req, res soap.HasFault) error {
	gen := r.generation.Load()
	err := r.next.RoundTrip(ctx, req, res)
	if err == nil || !fault.Is(err, &types.NotAuthenticated{}) || r.closed.Load() {
		return err
	}
	switch req.(type) {
	case *methods.LoginBody, *methods.LogoutBody, *methods.LoginByTokenBody, *methods.LoginExtensionByCertificateBody:
		return err // a login that fails is final; a logout of a dead session is done
	}
	if lerr := r.relogin(ctx, gen); lerr != nil {
		return fmt.Errorf("%w (log in again: %v)", err, lerr)
	}
	// The response may hold the fault from the first attempt.
	reflect.ValueOf(res).Elem().Set(reflect.Zero(reflect.TypeOf(res).Elem()))
	return r.next.RoundTrip(ctx, req, res)
}

func (r *reloginRoundTripper) relogin(ctx context.Context, gen uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed.Load() {
		return errors.New("session closed")
	}
	if r.generation.Load() != gen {
		return nil // another call logged in since this one started
	}
	if err := r.login(ctx); err != nil {
		return err
	}
	r.generation.Add(1)
	r.logins.Add(1)
	return nil
}

// REST logs in to vCenter's vAPI endpoint (content libraries, tags) with
// the session's credentials; the caller logs the returned client out.
func (s *Session) REST(ctx context.Context) (*rest.Client, error) {
	rc := rest.NewClient(s.Client.Client)
	if err := rc.Login(ctx, s.cfg.credentials(s.url)); err != nil {
		return nil, fmt.Errorf("vsphere: log in to the vAPI of %s: %w", s.url, err)
	}
	return rc, nil
}
