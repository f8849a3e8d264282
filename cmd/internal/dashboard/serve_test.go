package dashboard_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/podvisor/podvisor/cmd/internal/dashboard"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
	"github.com/podvisor/podvisor/shared/pki"
)

// secure starts a NATS server with podvisor's identities and TLS, the
// topology declared by the admin, and returns a dialer by identity.
func secure(t *testing.T) (ca *pki.CA, dial func(identity string) *bus.Bus) {
	t.Helper()
	s := bustest.StartSecure(t)
	return s.CA, func(identity string) *bus.Bus { return s.Dial(t, identity) }
}

// violations records the permission violations the server reports to a
// connection (they arrive asynchronously, as -ERR lines).
type violations struct {
	mu   sync.Mutex
	errs []string
}

func watchViolations(b *bus.Bus) *violations {
	v := &violations{}
	b.Conn().SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		v.mu.Lock()
		v.errs = append(v.errs, err.Error())
		v.mu.Unlock()
	})
	return v
}

// waitFor reports whether a violation mentioning subject arrives within a
// few seconds.
func (v *violations) waitFor(subject string) bool {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		v.mu.Lock()
		for _, e := range v.errs {
			if strings.Contains(strings.ToLower(e), "permissions violation") && strings.Contains(e, subject) {
				v.mu.Unlock()
				return true
			}
		}
		v.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// The dashboard identity reads what the page shows and nothing else: its
// view runs, while a publish (even of a request a client may send), a write
// to a bucket it shows, a read of the guest cluster kubeconfigs and a pull
// from a service's consumer are refused by the server.
func TestDashboardIdentityIsReadOnly(t *testing.T) {
	_, dial := secure(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := dial(bus.IdentityAdmin)
	secrets, err := admin.KV(ctx, events.BucketGuestClusterKubeconfigs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := secrets.Put(ctx, "shop.tenant", []byte("apiVersion: v1\nkind: Config # a secret")); err != nil {
		t.Fatal(err)
	}
	pods, err := admin.KV(ctx, bus.BucketPods)
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := json.Marshal(events.PodRecord{Namespace: "shop", Name: "web", Phase: "Running", Host: "esx-1"})
	if _, err := pods.Put(ctx, events.PodRecordKey("shop", "web"), rec); err != nil {
		t.Fatal(err)
	}

	d := dial(bus.IdentityDashboard)
	seen := watchViolations(d)
	view := dashboard.NewView()
	if err := view.Run(ctx, d, nil); err != nil {
		t.Fatalf("the dashboard's view as its own identity: %v", err)
	}
	// A request is the least a client may publish; the dashboard may not.
	req, err := bus.NewEvent("podvisor/dashboard", events.TypePodDeleteRequested, "shop/web",
		&events.PodDeleteRequested{Namespace: "shop", Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithTimeout(ctx, time.Second)
	if err := d.Publish(pctx, req); err == nil {
		t.Error("the dashboard published pod.delete.requested")
	}
	pcancel()
	if !seen.waitFor(events.SubjectPodDeleteRequested) {
		t.Errorf("no permissions violation for the publish to %s; server said %v", events.SubjectPodDeleteRequested, seen.errs)
	}
	// Its own bucket's records can be read but not written.
	if err := d.Conn().Publish("$KV."+bus.BucketPods+".shop.web", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if !seen.waitFor("$KV." + bus.BucketPods + ".shop.web") {
		t.Errorf("no permissions violation for a write to the pods bucket; server said %v", seen.errs)
	}
	// The secret bucket: neither opened nor read by direct get.
	sctx, scancel := context.WithTimeout(ctx, time.Second)
	if _, err := d.KV(sctx, events.BucketGuestClusterKubeconfigs); err == nil {
		t.Error("the dashboard opened the guest cluster kubeconfigs bucket")
	}
	scancel()
	direct := "$JS.API.DIRECT.GET.KV_" + events.BucketGuestClusterKubeconfigs + ".$KV." + events.BucketGuestClusterKubeconfigs + ".shop.tenant"
	if msg, err := d.Conn().Request(direct, nil, time.Second); err == nil && strings.Contains(string(msg.Data), "a secret") {
		t.Error("the dashboard read a guest cluster kubeconfig")
	}
	if !seen.waitFor(direct) {
		t.Errorf("no permissions violation for a direct get of a kubeconfig; server said %v", seen.errs)
	}
	// A service's durable consumer: no pull (which would take a delivery).
	next := "$JS.API.CONSUMER.MSG.NEXT." + events.StreamPods + ".provisioner"
	if err := d.Conn().PublishRequest(next, d.Conn().NewRespInbox(), []byte(`{"batch":1}`)); err != nil {
		t.Fatal(err)
	}
	if !seen.waitFor(next) {
		t.Errorf("no permissions violation for a pull from the provisioner's consumer; server said %v", seen.errs)
	}
	// What it may read, it reads: the pod shows up.
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, _ := view.Snapshot()
		if len(st.Pods) == 1 && st.Pods[0].Name == "web" && st.Pods[0].Host == "esx-1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the view does not show the pod shop/web: %+v", st.Pods)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// `podvisor serve dashboard` serves only TLS and admits only a dashboard
// user's client certificate: no certificate, or one the same CA made for a
// server, is refused; a user's gets the page's state, and nothing but GET.
func TestServeRequiresADashboardUser(t *testing.T) {
	ca, dial := secure(t)
	certFile, keyFile, err := ca.Issue("dashboard", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cfg := dashboard.Config{Addr: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile, ClientCAFile: ca.CAFile()}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- dashboard.Serve(ctx, cfg, dial(bus.IdentityDashboard), nil, discard(), func(a string) { addrs <- a })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	var addr string
	select {
	case addr = <-addrs:
	case err := <-done:
		t.Fatalf("serve: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the dashboard does not listen within 20s")
	}
	client := func(cert, key string) *http.Client {
		conf := ca.ClientTLS()
		if cert != "" {
			pair, err := tls.LoadX509KeyPair(cert, key)
			if err != nil {
				t.Fatal(err)
			}
			conf.Certificates = []tls.Certificate{pair}
		}
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: conf}}
	}
	url := "https://" + addr + "/api/state"
	if resp, err := client("", "").Get(url); err == nil {
		resp.Body.Close()
		t.Errorf("no client certificate: status %s, want a refused handshake", resp.Status)
	}
	serverCert, serverKey, err := ca.Issue("redis", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := client(serverCert, serverKey).Get(url); err == nil {
		resp.Body.Close()
		t.Errorf("a server's certificate from the same CA: status %s, want refused", resp.Status)
	}
	userCert, userKey, err := ca.IssueAs("dashboard-user-alice", []string{dashboard.ClientOrganization})
	if err != nil {
		t.Fatal(err)
	}
	alice := client(userCert, userKey)
	resp, err := alice.Get(url)
	if err != nil {
		t.Fatalf("a dashboard user: %v", err)
	}
	var state dashboard.Dashboard
	err = json.NewDecoder(resp.Body).Decode(&state)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || err != nil || state.Hosts == nil {
		t.Errorf("a dashboard user's GET /api/state: %s, %v, %+v", resp.Status, err, state)
	}
	resp, err = alice.Post(url, "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /api/state: %s, want 405 (read-only)", resp.Status)
	}
}

// Off loopback, a dashboard without a client CA is refused at start.
func TestConfigRequiresClientCAOffLoopback(t *testing.T) {
	for _, c := range []struct {
		addr, ca string
		ok       bool
	}{{":8443", "", false}, {"0.0.0.0:8443", "", false}, {"127.0.0.1:8443", "", true}, {"localhost:0", "", true}, {":8443", "ca.pem", true}} {
		err := dashboard.Config{Addr: c.addr, CertFile: "c", KeyFile: "k", ClientCAFile: c.ca}.Validate()
		if (err == nil) != c.ok {
			t.Errorf("addr %q client CA %q: err %v, want ok %v", c.addr, c.ca, err, c.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "PODVISOR_DASHBOARD_CLIENT_CA") {
			t.Errorf("error does not name the setting: %v", err)
		}
	}
	if err := (dashboard.Config{Addr: ":8443", ClientCAFile: "ca"}).Validate(); err == nil || !strings.Contains(err.Error(), "PODVISOR_DASHBOARD_TLS_CERT") {
		t.Errorf("no certificate: %v", err)
	}
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
