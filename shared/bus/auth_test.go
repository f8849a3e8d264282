package bus_test

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bus/natsembed"
	"github.com/podvisor/podvisor/shared/bustest"
)

// secureServer is an embedded server with the identities and TLS of
// `podvisor up`, and the topology declared by the admin.
type secureServer struct {
	srv   *natsembed.Server
	auth  *bus.Authority
	caPEM string
	*bustest.Secure
}

func startSecure(t *testing.T) *secureServer {
	t.Helper()
	s := bustest.StartSecure(t)
	return &secureServer{srv: s.Server, auth: s.Auth, caPEM: s.CA.CAFile(), Secure: s}
}

func (s *secureServer) conf(t *testing.T, identity string) bus.ConnConfig { return s.Conf(t, identity) }

func (s *secureServer) dial(t *testing.T, identity string) *bus.Bus { return s.Dial(t, identity) }

func requestEvent(t *testing.T, name string) event.Event {
	t.Helper()
	return mustEvent(t, events.TypePodRequested, "default/"+name, map[string]any{
		"pod": map[string]any{"metadata": map[string]any{"name": name}, "spec": map[string]any{"containers": []any{map[string]any{"name": "c", "image": "r/x:1"}}}},
	})
}

// TestServerRefusesWhoItDoesNotKnow: no creds, no TLS or an unknown CA
// get no connection.
func TestServerRefusesWhoItDoesNotKnow(t *testing.T) {
	s := startSecure(t)
	ctx := testContext(t)
	noCreds := s.conf(t, bus.IdentityClient)
	noCreds.CredsFile = ""
	if b, err := bus.Dial(ctx, noCreds); err == nil {
		b.Close()
		t.Error("connection without creds accepted")
	} else if !strings.Contains(err.Error(), "uthorization") {
		t.Errorf("without creds: %v, want an authorization error", err)
	}
	noCA := s.conf(t, bus.IdentityClient)
	noCA.CAFile = ""
	if b, err := bus.Dial(ctx, noCA); err == nil {
		b.Close()
		t.Error("connection that cannot verify the server's certificate accepted")
	}
	// A client speaking plain text after the server's INFO gets no PONG:
	// the server wants a TLS handshake and drops the connection.
	u, err := url.Parse(s.srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	addr := u.Host
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	r := bufio.NewReader(c)
	info, err := r.ReadString('\n')
	if err != nil || !strings.Contains(info, `"tls_required":true`) {
		t.Fatalf("server INFO %q (%v), want tls_required", info, err)
	}
	if _, err := c.Write([]byte("CONNECT {\"verbose\":false}\r\nPING\r\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := r.ReadString('\n'); err == nil && strings.HasPrefix(line, "PONG") {
		t.Error("plain-text connection accepted")
	}
}

// TestClientPublishesOnlyRequests: the client identity's facts are refused
// by the server (a permissions violation), its requests stored.
func TestClientPublishesOnlyRequests(t *testing.T) {
	s := startSecure(t)
	client := s.dial(t, bus.IdentityClient)
	ctx := testContext(t)
	if err := client.Publish(ctx, requestEvent(t, "web")); err != nil {
		t.Fatalf("client pod.requested: %v", err)
	}
	for _, subject := range []string{events.SubjectPodRunning, events.SubjectPodImagesReady, events.SubjectPodNetworkAttached, "$KV.pods.default.web",
		events.SubjectHostCordoned, events.SubjectHostUncordoned} {
		// The server drops a denied publish and says so on the
		// connection; the publisher waits for a stream ack in vain.
		if _, err := client.JetStream().Publish(shortContext(t), subject, []byte("{}")); err == nil {
			t.Errorf("client published %s", subject)
		}
	}
	if err := client.Conn().LastError(); err == nil || !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
		t.Errorf("server reported %v, want a permissions violation", err)
	}
	// Reading is allowed: the request is in the stream.
	info, err := client.JetStream().Stream(ctx, events.StreamPods)
	if err != nil {
		t.Fatalf("client stream info: %v", err)
	}
	if st := info.CachedInfo().State; st.Msgs != 1 {
		t.Errorf("PODS holds %d messages, want the one request", st.Msgs)
	}
}

// TestServicePublishesWhatItOwns: the image cache may publish
// pod.images.ready and write no bucket; the provisioner writes pods but may
// not claim images are ready.
func TestServicePublishesWhatItOwns(t *testing.T) {
	s := startSecure(t)
	ctx := testContext(t)
	ic := s.dial(t, events.PublisherImageCache)
	ready := mustEvent(t, events.TypePodImagesReady, "default/web", &events.PodImagesReady{PodRef: events.PodRef{Namespace: "default", Name: "web", UID: "u1"},
		Containers: []events.ContainerImage{{Container: "c", Image: "r/x:1", Digest: "sha256:" + strings.Repeat("a", 64), Datastore: "ds",
			Disk: "[ds] podvisor-images/a/disk.vmdk", Chain: []string{"[ds] podvisor-images/a/disk.vmdk"}}}})
	if err := ic.Publish(ctx, ready); err != nil {
		t.Fatalf("imagecache pod.images.ready: %v", err)
	}
	prov := s.dial(t, events.PublisherProvisioner)
	if err := prov.Publish(shortContext(t), ready); err == nil {
		t.Error("provisioner published pod.images.ready")
	}
	kv, err := prov.KV(ctx, bus.BucketPods)
	if err != nil {
		t.Fatalf("provisioner opens its bucket: %v", err)
	}
	if _, err := kv.Create(ctx, "default.web", []byte("{}")); err != nil {
		t.Fatalf("provisioner writes its bucket: %v", err)
	}
	// It reads the migration service's records (is a migration over?),
	// and may not write them.
	migs, err := prov.KV(ctx, bus.BucketMigrations)
	if err != nil {
		t.Fatalf("provisioner opens migrations to read: %v", err)
	}
	if _, err := migs.Get(ctx, "m1"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("provisioner reads migrations: %v, want key not found", err)
	}
	if _, err := migs.Put(shortContext(t), "m1", []byte("{}")); err == nil {
		t.Error("provisioner wrote the migration service's bucket")
	}
	icKV, err := ic.KV(ctx, bus.BucketPods)
	if err != nil {
		t.Fatalf("imagecache opens pods to read: %v", err)
	}
	if _, err := icKV.Get(ctx, "default.web"); err != nil {
		t.Errorf("imagecache reads pods: %v", err)
	}
	if _, err := icKV.Put(shortContext(t), "default.other", []byte("{}")); err == nil {
		t.Error("imagecache wrote the provisioner's bucket")
	}
	// The host agents' concentrator routes a template's serial line by the
	// template's record: it reads the provisioner's templates, never
	// writes them.
	tmpls, err := prov.KV(ctx, bus.BucketPodTemplates)
	if err != nil {
		t.Fatalf("provisioner opens its templates: %v", err)
	}
	if _, err := tmpls.Put(ctx, "pv-template-1", []byte(`{"name":"pv-template-1","shape":{"host":"h1"}}`)); err != nil {
		t.Fatalf("provisioner writes its templates: %v", err)
	}
	ha := s.dial(t, events.PublisherHostAgent)
	haKV, err := ha.KV(ctx, bus.BucketPodTemplates)
	if err != nil {
		t.Fatalf("host agent opens pod-templates to read: %v", err)
	}
	if _, err := haKV.Get(ctx, "pv-template-1"); err != nil {
		t.Errorf("host agent reads pod-templates: %v", err)
	}
	if _, err := haKV.Put(shortContext(t), "pv-template-2", []byte("{}")); err == nil {
		t.Error("host agent wrote the provisioner's templates")
	}
}

// TestLimits: every stream reports a byte limit and a maximum message
// size, and a 1 MiB event is refused at publish.
func TestLimits(t *testing.T) {
	s := startSecure(t)
	ctx := testContext(t)
	admin := s.dial(t, bus.IdentityAdmin)
	for name := range bus.StreamSubjects() {
		st, err := admin.JetStream().Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		cfg := st.CachedInfo().Config
		if cfg.MaxBytes <= 0 || cfg.MaxMsgSize <= 0 || cfg.Duplicates < bus.DuplicateWindow {
			t.Errorf("stream %s: MaxBytes %d MaxMsgSize %d Duplicates %s", name, cfg.MaxBytes, cfg.MaxMsgSize, cfg.Duplicates)
		}
	}
	big := make([]byte, 1<<20)
	for _, who := range []string{bus.IdentityClient, bus.IdentityAdmin} {
		b := s.dial(t, who)
		if _, err := b.JetStream().Publish(ctx, events.SubjectPodRequested, big); err == nil {
			t.Errorf("%s published a 1 MiB message", who)
		}
		// Just over the stream's limit, under the server's: the stream refuses.
		if who == bus.IdentityAdmin {
			if _, err := b.JetStream().Publish(ctx, events.SubjectPodRequested, make([]byte, bus.MaxMessageSize+1)); err == nil {
				t.Error("stream stored a message over MaxMessageSize")
			}
		}
	}
}

func shortContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestCredsFitTheControlLine: a JWT travels in the CONNECT line, which the
// server bounds; every identity's must fit.
func TestCredsFitTheControlLine(t *testing.T) {
	auth, err := bus.LoadAuthority(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	paths, err := auth.MintAll()
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := jwt.ParseDecoratedJWT(b)
		if err != nil {
			t.Fatal(err)
		}
		if len(tok) > bus.MaxControlLine-1024 {
			t.Errorf("%s: JWT of %d bytes, too close to the server's %d-byte control line", name, len(tok), bus.MaxControlLine)
		}
	}
}

// TestMintAsAnotherClient: a second client minted with the client's
// permissions connects under its own name and may publish only requests.
func TestMintAsAnotherClient(t *testing.T) {
	s := startSecure(t)
	path, err := s.auth.MintAs("ci-robot", bus.IdentityClient)
	if err != nil {
		t.Fatal(err)
	}
	if who, err := bus.CredsIdentity(path); err != nil || who != "ci-robot" {
		t.Fatalf("creds name %q, %v", who, err)
	}
	b, err := bus.Dial(testContext(t), bus.ConnConfig{URL: s.srv.URL(), CredsFile: path, CAFile: s.caPEM})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Publish(testContext(t), requestEvent(t, "robot")); err != nil {
		t.Errorf("second client's request: %v", err)
	}
	if _, err := b.JetStream().Publish(shortContext(t), events.SubjectPodRunning, []byte("{}")); err == nil {
		t.Error("second client published pod.running")
	}
	if _, err := s.auth.MintAs("Bad Name", bus.IdentityClient); err == nil {
		t.Error("an identity name with spaces was minted")
	}
	cfg, err := s.auth.ServerConfig("")
	if err != nil {
		t.Fatal(err)
	}
	// A nats-server reading it trusts the operator and knows both accounts.
	conf := filepath.Join(t.TempDir(), "auth.conf")
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("nats-server cannot read the config: %v\n%s", err, cfg)
	}
	if len(opts.TrustedOperators) != 1 || opts.SystemAccount == "" || opts.MaxControlLine != bus.MaxControlLine {
		t.Errorf("server options: operators %d, system account %q, max control line %d", len(opts.TrustedOperators), opts.SystemAccount, opts.MaxControlLine)
	}
}

// TestOnlyHostAgentsAskForDiskKeys: the provisioner answers key requests
// for encrypted ephemeral disks; a host agent may ask, a client (which may
// ask every query) may not.
func TestOnlyHostAgentsAskForDiskKeys(t *testing.T) {
	s := startSecure(t)
	ctx := testContext(t)
	prov := s.dial(t, events.PublisherProvisioner)
	serveCtx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() {
		served <- prov.Serve(serveCtx, events.SubjectDiskKeyRelease, func(context.Context, []byte) ([]byte, error) { return []byte("wrapped"), nil })
	}()
	t.Cleanup(func() { stop(); <-served })
	ha := s.dial(t, events.PublisherHostAgent)
	var got []byte
	var err error
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if got, err = ha.Request(shortContext(t), events.SubjectDiskKeyRelease, []byte("{}")); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond) // the server has not subscribed yet
	}
	if err != nil || string(got) != "wrapped" {
		t.Fatalf("host agent asks: %q, %v", got, err)
	}
	client := s.dial(t, bus.IdentityClient)
	if got, err := client.Request(shortContext(t), events.SubjectDiskKeyRelease, []byte("{}")); err == nil {
		t.Fatalf("a client got a disk key answer: %q", got)
	}
}

// TestGuestClusterIdentityAsksOnlyItsQueries: a guest cluster's node
// reaches its own cluster's queries through the guest cluster controller's
// identity, and nothing else: not another guest cluster's queries, not a
// pod request, not a stream.
func TestGuestClusterIdentityAsksOnlyItsQueries(t *testing.T) {
	s := startSecure(t)
	ctrl := s.dial(t, events.PublisherGuestCluster)
	sub, err := ctrl.Conn().Subscribe(events.SubjectGuestClusterQueryAll, func(m *nats.Msg) { _ = m.Respond([]byte(m.Subject)) })
	if err != nil {
		t.Fatalf("controller serves the guest queries: %v", err)
	}
	defer sub.Unsubscribe()
	_ = ctrl.Conn().Flush()

	creds, err := s.auth.MintGuest("team-a", "gc1")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := filepath.Base(creds), "gc-team-a-gc1.creds"; got != want {
		t.Errorf("creds file %s, want %s", got, want)
	}
	nc, err := nats.Connect(s.srv.URL(), nats.UserCredentials(creds), nats.RootCAs(s.caPEM), nats.Name("test-guest"))
	if err != nil {
		t.Fatalf("connect as the guest: %v", err)
	}
	defer nc.Close()
	own := events.SubjectGuestClusterQuery("team-a", "gc1", events.GuestOpPodList)
	m, err := nc.Request(own, []byte("{}"), 5*time.Second)
	if err != nil {
		t.Fatalf("own query %s: %v", own, err)
	}
	if string(m.Data) != own {
		t.Fatalf("own query %s answered %q", own, m.Data)
	}
	other := events.SubjectGuestClusterQuery("team-a", "gc2", events.GuestOpPodList)
	if _, err := nc.Request(other, []byte("{}"), time.Second); err == nil {
		t.Errorf("guest of gc1 asked %s", other)
	}
	if err := nc.Publish(events.SubjectPodRequested, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && nc.LastError() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	if err := nc.LastError(); err == nil || !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
		t.Errorf("server reported %v for the guest's pod.requested, want a permissions violation", err)
	}
	if err := s.auth.Forget(bus.GuestClusterIdentity("team-a", "gc1").Name); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(creds); !os.IsNotExist(err) {
		t.Errorf("creds file after Forget: %v", err)
	}
}

// TestRevokedGuestIdentityIsRefused: once a guest cluster's identity is
// revoked and the account pushed, its open connection is closed and a new
// one with the same creds file is refused; other identities keep working,
// and an authority loaded again from the directory still revokes it (a
// restarted server trusts what it loads).
func TestRevokedGuestIdentityIsRefused(t *testing.T) {
	s := startSecure(t)
	ctx := testContext(t)
	creds, err := s.auth.MintGuest("team-a", "gc1")
	if err != nil {
		t.Fatal(err)
	}
	kept := filepath.Join(t.TempDir(), "copy.creds")
	if b, err := os.ReadFile(creds); err != nil || os.WriteFile(kept, b, 0o600) != nil {
		t.Fatalf("copy creds: %v", err)
	}
	connect := func() (*nats.Conn, error) {
		return nats.Connect(s.srv.URL(), nats.UserCredentials(kept), nats.RootCAs(s.caPEM), nats.Name("test-guest"), nats.NoReconnect())
	}
	closed := make(chan struct{})
	nc, err := nats.Connect(s.srv.URL(), nats.UserCredentials(kept), nats.RootCAs(s.caPEM), nats.NoReconnect(),
		nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		t.Fatalf("connect as the guest before the revocation: %v", err)
	}
	defer nc.Close()

	name := bus.GuestClusterIdentity("team-a", "gc1").Name
	if err := s.auth.Revoke(name); err != nil {
		t.Fatal(err)
	}
	if err := s.auth.PushAccount(ctx, bus.ConnConfig{URL: s.srv.URL(), CAFile: s.caPEM}); err != nil {
		t.Fatalf("push account: %v", err)
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the revoked identity's connection is still open 10s after the push")
	}
	if nc2, err := connect(); err == nil {
		nc2.Close()
		t.Fatal("a connection with the revoked creds was accepted")
	} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Errorf("revoked creds refused with %v, want an authorization error", err)
	}
	// Another identity is untouched.
	client := s.dial(t, bus.IdentityClient)
	if err := client.Conn().Flush(); err != nil {
		t.Errorf("client after the revocation: %v", err)
	}
	// Idempotent, and kept across a reload of the authority.
	if err := s.auth.Revoke(name); err != nil {
		t.Fatal(err)
	}
	again, err := bus.LoadAuthority(filepath.Dir(creds))
	if err != nil {
		t.Fatal(err)
	}
	if revoked, err := again.Revoked(kept); err != nil || !revoked {
		t.Errorf("reloaded authority: revoked = %v (%v), want true", revoked, err)
	}
	if fresh, err := again.MintGuest("team-a", "gc2"); err != nil {
		t.Fatal(err)
	} else if revoked, _ := again.Revoked(fresh); revoked {
		t.Error("a new guest identity is revoked")
	}
}

// TestClientCannotReadKubeconfigs: a client reads the guest cluster
// records but not their kubeconfigs; the guest cluster controller and the
// admin do.
func TestClientCannotReadKubeconfigs(t *testing.T) {
	s := startSecure(t)
	ctx := testContext(t)
	key := events.GuestClusterRecordKey("team-a", "gc1")
	ctrl := s.dial(t, events.PublisherGuestCluster)
	kv, err := ctrl.KV(ctx, events.BucketGuestClusterKubeconfigs)
	if err != nil {
		t.Fatalf("controller opens the kubeconfigs: %v", err)
	}
	if _, err := kv.Put(ctx, key, []byte(`{"kubeconfig":"secret"}`)); err != nil {
		t.Fatalf("controller writes a kubeconfig: %v", err)
	}
	if _, err := kv.Get(ctx, key); err != nil {
		t.Fatalf("controller reads a kubeconfig: %v", err)
	}
	admin := s.dial(t, bus.IdentityAdmin)
	if akv, err := admin.KV(ctx, events.BucketGuestClusterKubeconfigs); err != nil {
		t.Fatalf("admin opens the kubeconfigs: %v", err)
	} else if _, err := akv.Get(ctx, key); err != nil {
		t.Fatalf("admin reads a kubeconfig: %v", err)
	}

	client := s.dial(t, bus.IdentityClient)
	if _, err := client.KV(ctx, events.BucketGuestClusters); err != nil {
		t.Errorf("client opens the guest cluster records: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	ckv, err := client.KV(short, events.BucketGuestClusterKubeconfigs)
	if err == nil {
		if e, gerr := ckv.Get(short, key); gerr == nil {
			t.Fatalf("client read a kubeconfig: %s", e.Value())
		}
	}
	if p := (bus.Identity{Name: bus.IdentityClient, Client: true}).Permissions(); !slices.Contains(p.PublishDeny, "$JS.API.DIRECT.GET.KV_"+events.BucketGuestClusterKubeconfigs+".>") {
		t.Errorf("client permissions deny %v, want the kubeconfigs' read API", p.PublishDeny)
	}
}

// TestRevocationOutlivesARestartOfAConfiguredServer: a NATS server run from
// ServerConfig, as a Kubernetes deployment runs it from its Secret, keeps a
// revocation pushed to it when it restarts from the same configuration,
// because the resolver stores the pushed account in its directory and the
// preload, older, does not replace it. With the memory resolver the same
// restart lets the revoked identity in again: what the directory is for.
func TestRevocationOutlivesARestartOfAConfiguredServer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		jwtDir bool
	}{{"full resolver", true}, {"memory resolver", false}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			auth, err := bus.LoadAuthority(filepath.Join(dir, "auth"))
			if err != nil {
				t.Fatal(err)
			}
			creds, err := auth.MintGuest("team-a", "gc1")
			if err != nil {
				t.Fatal(err)
			}
			jwtDir := ""
			if tc.jwtDir {
				jwtDir = filepath.Join(dir, "jwt")
			}
			cfg, err := auth.ServerConfig(jwtDir)
			if err != nil {
				t.Fatal(err)
			}
			conf := filepath.Join(dir, "nats.conf")
			if err := os.WriteFile(conf, []byte("listen: 127.0.0.1:-1\n"+cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			start := func() *server.Server {
				t.Helper()
				opts, err := server.ProcessConfigFile(conf)
				if err != nil {
					t.Fatalf("config: %v\n%s", err, cfg)
				}
				opts.NoLog, opts.NoSigs = true, true
				srv, err := server.NewServer(opts)
				if err != nil {
					t.Fatal(err)
				}
				go srv.Start()
				if !srv.ReadyForConnections(10 * time.Second) {
					t.Fatal("server not ready")
				}
				return srv
			}
			refused := func(srv *server.Server) bool {
				nc, err := nats.Connect(srv.ClientURL(), nats.UserCredentials(creds), nats.NoReconnect())
				if err != nil {
					return true
				}
				nc.Close()
				return false
			}
			srv := start()
			if refused(srv) {
				t.Fatal("the guest identity is refused before its revocation")
			}
			if err := auth.Revoke(bus.GuestClusterIdentity("team-a", "gc1").Name); err != nil {
				t.Fatal(err)
			}
			if err := auth.PushAccount(testContext(t), bus.ConnConfig{URL: srv.ClientURL()}); err != nil {
				t.Fatalf("push account: %v", err)
			}
			if !refused(srv) {
				t.Fatal("the revoked identity is let in after the push")
			}
			srv.Shutdown()
			srv.WaitForShutdown()
			srv = start()
			defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
			if got := refused(srv); got != tc.jwtDir {
				t.Fatalf("after a restart from the same configuration: refused = %v, want %v", got, tc.jwtDir)
			}
		})
	}
}
