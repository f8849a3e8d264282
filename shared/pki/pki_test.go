package pki

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/shared/servetest"
)

// TestServerCertificateVerifies: a TLS client trusting only the CA file
// reaches a server with an issued certificate, and a client that trusts
// another CA is refused.
func TestServerCertificateVerifies(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srvTLS, err := ca.ServerTLS("test", Hosts("127.0.0.1")...)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvTLS)
	if err != nil {
		t.Fatal(err)
	}
	servetest.Accept(t, ln, func(c net.Conn) {
		_ = c.(*tls.Conn).Handshake()
		c.Close()
	})
	c, err := tls.Dial("tcp", ln.Addr().String(), ca.ClientTLS())
	if err != nil {
		t.Fatalf("client trusting the CA: %v", err)
	}
	c.Close()

	other, err := LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if c, err := tls.Dial("tcp", ln.Addr().String(), other.ClientTLS()); err == nil {
		c.Close()
		t.Fatal("a client trusting another CA was accepted")
	}
	if _, err := tls.Dial("tcp", net.JoinHostPort("localhost", portOf(t, ln)), ca.ClientTLS()); err != nil {
		t.Errorf("localhost is not in the certificate: %v", err)
	}
}

// TestReloadKeepsTheCA: a second load reads the same CA and does not issue
// a certificate again while it is current; key files are private.
func TestReloadKeepsTheCA(t *testing.T) {
	dir := t.TempDir()
	a, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	cert1, key1, err := a.Issue("nats", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(cert1)
	b, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !a.cert.Equal(b.cert) {
		t.Fatal("second load made a new CA")
	}
	cert2, _, err := b.Issue("nats", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(cert2); string(after) != string(before) {
		t.Error("a current certificate was issued again")
	}
	if _, _, err := b.Issue("nats", "127.0.0.1", "nats.example"); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(cert2); string(after) == string(before) {
		t.Error("a certificate lacking a host name was not issued again")
	}
	for _, f := range []string{key1, filepath.Join(dir, "ca-key.pem")} {
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, %v; want 0600", f, st.Mode().Perm(), err)
		}
	}
}

func portOf(t *testing.T, ln net.Listener) string {
	t.Helper()
	_, p, err := net.SplitHostPort(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSystemPoolWith: the bundle's CA is trusted beside the system roots;
// a missing file or one without a certificate is an error naming it.
func TestSystemPoolWith(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pool, err := SystemPoolWith(ca.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.cert.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Errorf("CA not trusted by the pool: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.pem")
	if err := os.WriteFile(bad, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := SystemPoolWith(bad); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("bundle without a certificate: %v", err)
	}
	if _, err := SystemPoolWith(filepath.Join(t.TempDir(), "missing.pem")); err == nil {
		t.Error("missing bundle accepted")
	}
}
