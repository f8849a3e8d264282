package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/cmd/internal/dashboard"
	"github.com/podvisor/podvisor/shared/syncbuf"
)

// TestServeDashboard runs `podvisor serve dashboard` beside `podvisor up` as
// the prod overlay does: certificates from `identity tls`, a user's from
// `identity dashboard-user`; the page answers that user and refuses a
// client without a certificate, and the process stops cleanly.
func TestServeDashboard(t *testing.T) {
	_, dir := upForTest(t, "none")
	tlsDir := filepath.Join(dir, "deploy-tls")
	if out, errOut, code := run(t, dir, "", "identity", "tls", "--out", tlsDir); code != 0 || !strings.Contains(out, "dashboard") {
		t.Fatalf("identity tls: exit %d: %s %s", code, out, errOut)
	}
	if _, errOut, code := run(t, dir, "", "identity", "dashboard-user", "Alice", "--out", tlsDir); code == 0 || !strings.Contains(errOut, "NAME") {
		t.Errorf("identity dashboard-user Alice: exit %d, %q; want a refusal naming NAME", code, errOut)
	}
	if out, errOut, code := run(t, dir, "", "identity", "dashboard-user", "alice", "--out", tlsDir); code != 0 {
		t.Fatalf("identity dashboard-user: exit %d: %s %s", code, out, errOut)
	}
	for _, k := range []string{"PODVISOR_NATS_URL", "PODVISOR_NATS_CREDS", "PODVISOR_NATS_CA", "PODVISOR_REDIS_URL", "PODVISOR_REDIS_CA"} {
		t.Setenv(k, "")
		os.Unsetenv(k) // the env file of up supplies them, as beside a local up
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	t.Setenv("PODVISOR_CONFIG", filepath.Join(dir, "no-cli-config"))
	t.Setenv("PODVISOR_HEALTH_ADDR", "127.0.0.1:0")
	t.Setenv("PODVISOR_DASHBOARD_ADDR", addr)
	t.Setenv("PODVISOR_DASHBOARD_TLS_CERT", filepath.Join(tlsDir, "dashboard.pem"))
	t.Setenv("PODVISOR_DASHBOARD_TLS_KEY", filepath.Join(tlsDir, "dashboard-key.pem"))
	t.Setenv("PODVISOR_DASHBOARD_CLIENT_CA", filepath.Join(tlsDir, "ca.pem"))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	var errOut syncbuf.Buffer
	go func() {
		done <- Main(ctx, []string{"--state-dir", dir, "serve", "dashboard"}, strings.NewReader(""), &bytes.Buffer{}, &errOut)
	}()

	caPEM, err := os.ReadFile(filepath.Join(tlsDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	user, err := tls.LoadX509KeyPair(filepath.Join(tlsDir, "dashboard-user-alice.pem"), filepath.Join(tlsDir, "dashboard-user-alice-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	client := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: certs}}}
	}
	url := fmt.Sprintf("https://%s/api/state", addr)
	var state dashboard.Dashboard
	eventuallyWithin(t, 30*time.Second, "the dashboard answering its user", func() bool {
		select {
		case code := <-done:
			t.Fatalf("serve dashboard exited %d: %s", code, errOut.String())
		default:
		}
		resp, err := client(user).Get(url)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&state) == nil
	})
	if state.Hosts == nil || state.Pods == nil {
		t.Errorf("state: %+v", state)
	}
	if resp, err := client().Get(url); err == nil {
		resp.Body.Close()
		t.Errorf("a client without a certificate got %s", resp.Status)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("serve dashboard exited %d on stop: %s", code, errOut.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve dashboard did not stop within 15s")
	}
}
