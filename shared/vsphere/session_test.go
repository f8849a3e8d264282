package vsphere_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"

	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/vsphere"
)

func configFor(d *sim.Datacenter) vsphere.Config {
	return vsphere.Config{URL: d.URL().String(), Insecure: true}
}

func connect(t *testing.T, cfg vsphere.Config) *vsphere.Session {
	t.Helper()
	s, err := vsphere.Connect(context.Background(), cfg)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

func sessionKey(t *testing.T, s *vsphere.Session) string {
	t.Helper()
	us, err := s.Client.SessionManager.UserSession(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if us == nil {
		return ""
	}
	return us.Key
}

// currentTime needs an authenticated session (unlike property reads, which
// vcsim serves to anyone), so it shows whether the session is alive.
func currentTime(ctx context.Context, s *vsphere.Session) error {
	_, err := methods.GetCurrentTime(ctx, s.Vim())
	return err
}

func TestConnectLogsInAndResolvesTheDatacenter(t *testing.T) {
	d := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 1})
	s := connect(t, configFor(d))
	if s.Datacenter.Name() != sim.DatacenterName {
		t.Errorf("datacenter = %q, want %s", s.Datacenter.Name(), sim.DatacenterName)
	}
	if err := currentTime(context.Background(), s); err != nil {
		t.Errorf("authenticated call: %v", err)
	}
	if strings.Contains(s.URL(), d.Password()) {
		t.Errorf("URL() %q shows the password", s.URL())
	}

	cfg := configFor(d)
	cfg.Datacenter = "DC9"
	if _, err := vsphere.Connect(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "DC9") {
		t.Errorf("Connect to a missing datacenter: err = %v, want it to name DC9", err)
	}
}

func TestConnectWithWrongPasswordSaysLoginFailure(t *testing.T) {
	d := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 1, Username: "admin", Password: "right"})
	cfg := configFor(d)
	cfg.Password = "wrong-secret"
	_, err := vsphere.Connect(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "Login failure") || !strings.Contains(err.Error(), "admin") {
		t.Fatalf("err = %v, want Login failure naming the user", err)
	}
	if strings.Contains(err.Error(), "wrong-secret") || strings.Contains(err.Error(), "right") {
		t.Errorf("error %q leaks a password", err)
	}
}

// terminate ends s's session from another administrator's session, as an
// operator (or vCenter's idle timeout) would.
func terminate(t *testing.T, d *sim.Datacenter, key string) {
	t.Helper()
	admin := simtest.Client(t, d)
	if err := admin.SessionManager.TerminateSession(context.Background(), []string{key}); err != nil {
		t.Fatalf("terminate session: %v", err)
	}
}

func TestCallAfterSessionTerminatedLogsInAgain(t *testing.T) {
	d := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 1})
	s := connect(t, configFor(d))
	ctx := context.Background()
	before := sessionKey(t, s)
	terminate(t, d, before)
	if sessionKey(t, s) != "" {
		t.Fatal("session still active after TerminateSession; the test would prove nothing")
	}

	// Several calls hit the dead session at once; one login serves them all.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() { errs <- currentTime(ctx, s) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("call after termination: %v", err)
		}
	}
	if got := s.Logins(); got != 2 {
		t.Errorf("logins = %d, want 2 (the first and one re-login)", got)
	}
	if after := sessionKey(t, s); after == "" || after == before {
		t.Errorf("session key after re-login = %q (before %q), want a new one", after, before)
	}
	// Inventory helpers keep working on the new session.
	if _, err := s.EnsureFolder(ctx, "podvisor/after-relogin"); err != nil {
		t.Errorf("EnsureFolder after re-login: %v", err)
	}
}

func TestKeepAliveLogsInAgainWhileIdle(t *testing.T) {
	d := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 1})
	cfg := configFor(d)
	cfg.KeepAlive = 50 * time.Millisecond
	s := connect(t, cfg)
	terminate(t, d, sessionKey(t, s))

	deadline := time.Now().Add(5 * time.Second)
	for s.Logins() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("keepalive did not log in again within 5 s (logins = %d)", s.Logins())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if sessionKey(t, s) == "" {
		t.Error("no session after the keepalive re-login")
	}
}

func TestCloseLogsOut(t *testing.T) {
	d := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 1})
	s, err := vsphere.Connect(context.Background(), configFor(d))
	if err != nil {
		t.Fatal(err)
	}
	key := sessionKey(t, s)
	if err := s.Close(context.Background()); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Errorf("second close: %v", err)
	}
	admin := simtest.Client(t, d)
	var sm mo.SessionManager
	if err := admin.RetrieveOne(context.Background(), *admin.ServiceContent.SessionManager, []string{"sessionList"}, &sm); err != nil {
		t.Fatal(err)
	}
	for _, us := range sm.SessionList {
		if us.Key == key {
			t.Errorf("session %s still listed after Close", key)
		}
	}
	// A closed session does not come back on its own.
	if err := currentTime(context.Background(), s); err == nil {
		t.Error("call on a closed session succeeded; it must not log in again")
	}
}
