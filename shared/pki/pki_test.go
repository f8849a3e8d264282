package pki

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"testing"
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
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
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
