package bustest

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bus/natsembed"
	"github.com/podvisor/podvisor/shared/pki"
)

// Secure is an embedded server with podvisor's identities and TLS, as
// `podvisor up` runs it: clients dial it by identity.
type Secure struct {
	Server *natsembed.Server
	Auth   *bus.Authority
	CA     *pki.CA
}

// StartSecure runs a server with an installation's CA and identities (made
// in the test's directory) and declares the topology as admin.
func StartSecure(t testing.TB) *Secure {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.LoadOrCreateCA(filepath.Join(dir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	srvTLS, err := ca.ServerTLS("nats", pki.Hosts("127.0.0.1")...)
	if err != nil {
		t.Fatal(err)
	}
	auth, err := bus.LoadAuthority(filepath.Join(dir, "nats-auth"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := natsembed.Start(natsembed.Config{Dir: filepath.Join(dir, "js"), Auth: auth, TLS: srvTLS, MaxStore: TestMaxStore})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	s := &Secure{Server: srv, Auth: auth, CA: ca}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Dial(t, bus.IdentityAdmin).EnsureTopology(ctx); err != nil {
		t.Fatalf("bustest: topology as admin: %v", err)
	}
	return s
}

// Conf is the connection settings of identity.
func (s *Secure) Conf(t testing.TB, identity string) bus.ConnConfig {
	t.Helper()
	creds, err := s.Auth.Creds(identity)
	if err != nil {
		t.Fatal(err)
	}
	return bus.ConnConfig{URL: s.Server.URL(), CredsFile: creds, CAFile: s.CA.CAFile(), Name: "test-" + identity}
}

// Dial connects as identity; the test's cleanup closes the connection.
func (s *Secure) Dial(t testing.TB, identity string) *bus.Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := bus.Dial(ctx, s.Conf(t, identity))
	if err != nil {
		t.Fatalf("bustest: dial as %s: %v", identity, err)
	}
	t.Cleanup(b.Close)
	return b
}
