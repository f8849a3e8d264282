package deploy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/redis/go-redis/v9"
	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/deploy/internal/manifests"
)

// configMapFile returns the one file of the ConfigMap a workload mounts at
// the directory holding path (e.g. /etc/nats/config/nats.conf).
func configMapFile(t *testing.T, objs []manifests.Object, w workload, path string) string {
	t.Helper()
	c := w.template.Spec.Containers[0]
	for _, m := range c.VolumeMounts {
		if m.MountPath != filepath.Dir(path) {
			continue
		}
		for _, v := range w.template.Spec.Volumes {
			if v.Name != m.Name || v.ConfigMap == nil {
				continue
			}
			for _, cm := range objectsOf[*corev1.ConfigMap](objs) {
				if cm.Name == v.ConfigMap.Name {
					if data, ok := cm.Data[filepath.Base(path)]; ok {
						return data
					}
				}
			}
		}
	}
	t.Fatalf("%s mounts no ConfigMap holding %s", w, path)
	return ""
}

// natsConfig writes the NATS configuration a workload runs (with the auth
// include it refers to, when given) the way the pod sees it, and parses it
// with the real server's parser.
//
// A Secret mounted at /etc/nats/tls (the prod overlay's TLS) is made with
// writeTLSSecret and the configuration's paths into it point at the copy;
// caFile is its CA ("" without TLS).
func natsConfig(t *testing.T, objs []manifests.Object, w workload, auth string) (opts *server.Options, path, caFile string) {
	t.Helper()
	c := w.template.Spec.Containers[0]
	i := slices.Index(c.Command, "--config")
	if i < 0 || i+1 >= len(c.Command) {
		t.Fatalf("%s: command %q names no --config", w, c.Command)
	}
	confPath := c.Command[i+1]
	conf := configMapFile(t, objs, w, confPath)

	// Recreate the pod's layout under a temp dir: includes are relative.
	root := t.TempDir()
	local := filepath.Join(root, confPath)
	mustWrite(t, local, conf)
	for _, m := range c.VolumeMounts {
		switch m.MountPath {
		case "/etc/nats/auth":
			mustWrite(t, filepath.Join(root, m.MountPath, "auth.conf"), auth)
		case natsTLSDir:
			caFile = writeTLSSecret(t, filepath.Join(root, m.MountPath))
			conf = strings.ReplaceAll(conf, `"`+natsTLSDir+"/", `"`+filepath.Join(root, natsTLSDir)+"/")
			mustWrite(t, local, conf)
		}
	}
	t.Setenv("POD_NAME", w.name+"-0")
	opts, err := server.ProcessConfigFile(local)
	if err != nil {
		t.Fatalf("%s: nats-server rejects %s: %v", w, confPath, err)
	}
	return opts, local, caFile
}

// natsTLSDir is where the prod NATS mounts the Secret podvisor-nats-tls.
const natsTLSDir = "/etc/nats/tls"

func mustWrite(t *testing.T, path, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The NATS configuration agrees with its StatefulSet: ports, store on the
// data volume, the pid file where the preStop hook signals, routes to every
// replica through the headless Service; every JetStream write is fsynced.
func TestNATSConfigMatchesItsStatefulSet(t *testing.T) {
	for _, dir := range []string{"base/nats", "overlays/prod"} {
		t.Run(dir, func(t *testing.T) {
			objs := build(t, dir)
			w := findWorkload(t, objs, "nats")
			opts, _, caFile := natsConfig(t, objs, w, "")
			c := w.template.Spec.Containers[0]

			if opts.ServerName != "nats-0" {
				t.Errorf("server_name = %q, want $POD_NAME expanded (nats-0)", opts.ServerName)
			}
			for port, name := range map[int]string{opts.Port: "client", opts.HTTPPort: "monitor"} {
				if p, ok := containerPort(w.template, name); !ok || int(p) != port {
					t.Errorf("config listens on %d, container port %s is %d", port, name, p)
				}
			}
			if !opts.JetStream {
				t.Error("JetStream is not enabled")
			}
			if !mountedFrom(c, opts.StoreDir, "data") {
				t.Errorf("JetStream store_dir %s is not on the data volume", opts.StoreDir)
			}
			if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == filepath.Dir(opts.PidFile) }) {
				t.Errorf("pid_file %s is not on a mounted (writable) volume", opts.PidFile)
			}
			if pre := c.Lifecycle.PreStop.Exec.Command; !slices.Contains(pre, "ldm="+opts.PidFile) {
				t.Errorf("preStop %q does not signal lame duck mode through %s", pre, opts.PidFile)
			}
			for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe} {
				if p.HTTPGet.Path != "/healthz?js-enabled-only=true" {
					t.Errorf("probe path %q, want /healthz?js-enabled-only=true", p.HTTPGet.Path)
				}
			}
			if opts.MaxPayload < 64*1024 {
				t.Errorf("max_payload %d is below the 64 KiB event limit", opts.MaxPayload)
			}

			if !opts.SyncAlways {
				t.Error("JetStream does not fsync every write (sync_interval: always)")
			}
			if dir == "base/nats" {
				if caFile != "" {
					t.Error("the base NATS mounts TLS: the dev overlay's clients speak plain text")
				}
				if len(opts.Routes) != 0 || opts.Cluster.Port != 0 {
					t.Errorf("the single node has cluster settings: %d routes, port %d", len(opts.Routes), opts.Cluster.Port)
				}
				return
			}
			// Client and route ports speak TLS only, routes with
			// certificates verified both ways.
			if caFile == "" || opts.TLSConfig == nil || opts.TLSTimeout == 0 {
				t.Error("the client port has no TLS (Secret podvisor-nats-tls at " + natsTLSDir + ")")
			}
			if opts.Cluster.TLSConfig == nil || opts.Cluster.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert {
				t.Error("routes have no TLS with verified peers (cluster { tls { verify: true } })")
			}
			if p, ok := containerPort(w.template, "cluster"); !ok || int(p) != opts.Cluster.Port {
				t.Errorf("cluster listens on %d, container port cluster is %d", opts.Cluster.Port, p)
			}
			var want, got []string
			for i := range w.replicas {
				want = append(want, fmt.Sprintf("%s-%d.%s:%d", w.name, i, w.service, opts.Cluster.Port))
			}
			for _, r := range opts.Routes {
				got = append(got, r.Host)
			}
			if !slices.Equal(got, want) {
				t.Errorf("routes %v, want one per replica through the StatefulSet's Service: %v", got, want)
			}
			headless := serviceNamed(t, objs, w.service)
			if headless.Spec.ClusterIP != "None" || !headless.Spec.PublishNotReadyAddresses {
				t.Errorf("Service %s must be headless and publish not-ready addresses (routes form before readiness)", w.service)
			}
		})
	}
}

func mountedFrom(c corev1.Container, path, volume string) bool {
	for _, m := range c.VolumeMounts {
		if m.Name == volume && (path == m.MountPath || strings.HasPrefix(path, m.MountPath+"/")) {
			return true
		}
	}
	return false
}

// The prod NATS runs with the accounts of an `nsc generate config
// --mem-resolver` file in the Secret podvisor-nats-auth, and a service
// authenticates with a creds file as PODVISOR_NATS_CREDS gives it. Here the
// prod configuration runs for real (as one node: the routes point at
// cluster DNS names), with generated accounts, and a creds user creates a
// stream and publishes to it.
func TestProdNATSAcceptsCredsUsers(t *testing.T) {
	objs := build(t, "overlays/prod")
	w := findWorkload(t, objs, "nats")
	auth, creds := natsAccounts(t)
	opts, _, caFile := natsConfig(t, objs, w, auth)

	// Loopback, random ports, temp store; no cluster (the peers' names only
	// resolve inside Kubernetes).
	opts.Host, opts.Port, opts.HTTPHost, opts.HTTPPort = "127.0.0.1", -1, "127.0.0.1", -1
	opts.Cluster = server.ClusterOpts{}
	opts.Routes = nil
	opts.StoreDir = t.TempDir()
	opts.PidFile = filepath.Join(t.TempDir(), "nats.pid")
	opts.NoSigs, opts.NoLog = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("nats-server with the prod configuration: %v", err)
	}
	go s.Start()
	t.Cleanup(s.Shutdown)
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}

	probe := w.template.Spec.Containers[0].ReadinessProbe.HTTPGet.Path
	resp, err := http.Get("http://" + s.MonitorAddr().String() + probe)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET %s = %s, want 200", probe, resp.Status)
	}

	if _, err := nats.Connect(s.ClientURL(), nats.RootCAs(caFile)); err == nil {
		t.Error("an anonymous client connected: the accounts from auth.conf are not in force")
	}
	if plain, err := net.DialTimeout("tcp", strings.TrimPrefix(s.ClientURL(), "nats://"), 5*time.Second); err == nil {
		// The server greets with INFO and wants the TLS handshake; a
		// CONNECT in plain text gets no +OK and the connection ends.
		_ = plain.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = plain.Write([]byte("CONNECT {\"verbose\":true}\r\nPING\r\n"))
		buf := make([]byte, 4096)
		var got strings.Builder
		for {
			n, err := plain.Read(buf)
			got.Write(buf[:n])
			if err != nil {
				break
			}
		}
		plain.Close()
		if strings.Contains(got.String(), "PONG") {
			t.Errorf("a plain-text client was answered: %q", got.String())
		}
	}
	if _, err := nats.Connect(s.ClientURL(), nats.UserCredentials(creds)); err == nil {
		t.Error("a client that does not know the CA connected")
	}
	nc, err := nats.Connect(s.ClientURL(), nats.UserCredentials(creds), nats.RootCAs(caFile))
	if err != nil {
		t.Fatalf("connect with the creds file: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "PODS", Subjects: []string{"pv.pod.>"}}); err != nil {
		t.Fatalf("create a stream as the podvisor user: %v", err)
	}
	if _, err := js.Publish(ctx, "pv.pod.requested", []byte(`{}`)); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

// natsAccounts generates what `nsc generate config --mem-resolver` writes
// (operator, system account, a podvisor account with JetStream) and a user
// creds file of the podvisor account.
func natsAccounts(t *testing.T) (authConf, credsPath string) {
	t.Helper()
	must := func(s string, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	op, _ := nkeys.CreateOperator()
	opPub, _ := op.PublicKey()
	sys, _ := nkeys.CreateAccount()
	sysPub, _ := sys.PublicKey()
	app, _ := nkeys.CreateAccount()
	appPub, _ := app.PublicKey()
	user, _ := nkeys.CreateUser()
	userPub, _ := user.PublicKey()

	oc := jwt.NewOperatorClaims(opPub)
	oc.SystemAccount = sysPub
	opJWT := must(oc.Encode(op))
	sysJWT := must(jwt.NewAccountClaims(sysPub).Encode(op))
	ac := jwt.NewAccountClaims(appPub)
	ac.Name = "podvisor"
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	appJWT := must(ac.Encode(op))
	uc := jwt.NewUserClaims(userPub)
	uc.Name = "podvisor-services"
	userJWT := must(uc.Encode(app))
	seed, _ := user.Seed()
	creds, err := jwt.FormatUserConfig(userJWT, seed)
	if err != nil {
		t.Fatal(err)
	}
	credsPath = filepath.Join(t.TempDir(), "podvisor.creds")
	mustWrite(t, credsPath, string(creds))
	authConf = fmt.Sprintf("operator: %s\nsystem_account: %s\nresolver: MEMORY\nresolver_preload: {\n  %s: %s\n  %s: %s\n}\n",
		opJWT, sysPub, sysPub, sysJWT, appPub, appJWT)
	return authConf, credsPath
}

// The base NATS configuration runs, and answers the probe path.
func TestBaseNATSStartsAndAnswersItsProbe(t *testing.T) {
	objs := build(t, "base/nats")
	w := findWorkload(t, objs, "nats")
	opts, _, _ := natsConfig(t, objs, w, "")
	opts.Host, opts.Port, opts.HTTPHost, opts.HTTPPort = "127.0.0.1", -1, "127.0.0.1", -1
	opts.StoreDir = t.TempDir()
	opts.PidFile = filepath.Join(t.TempDir(), "nats.pid")
	opts.NoSigs, opts.NoLog = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	t.Cleanup(s.Shutdown)
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	for _, p := range []*corev1.Probe{w.template.Spec.Containers[0].LivenessProbe, w.template.Spec.Containers[0].StartupProbe} {
		resp, err := http.Get("http://" + s.MonitorAddr().String() + p.HTTPGet.Path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s = %s, want 200", p.HTTPGet.Path, resp.Status)
		}
	}
}

// Each overlay's redis.conf runs in a real redis-server (bind, port and dir
// overridden for the test). Dev: the password the StatefulSet passes.
// Prod: TLS only, with the Secrets' files (a test CA, an ACL file with the
// users `podvisor identity redis-acl` writes): no plain text, no default
// user, the image cache writes, the scheduler only reads, the probe only
// PINGs.
func TestRedisConfigRuns(t *testing.T) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not on PATH (apt-get install redis-server): the Redis configuration is not checked")
	}
	for _, tc := range []struct {
		overlay    string
		appendonly string
	}{{"dev", "no"}, {"prod", "yes"}} {
		t.Run(tc.overlay, func(t *testing.T) {
			objs := build(t, "overlays/"+tc.overlay)
			w := findWorkload(t, objs, "redis")
			c := w.template.Spec.Containers[0]
			if len(c.Command) < 2 || c.Command[0] != "redis-server" {
				t.Fatalf("redis command %q, want redis-server <config> …", c.Command)
			}
			// Redis changes into `dir` while it reads the file: point it at a
			// temp dir, after checking the pod's dir is the data volume.
			text := configMapFile(t, objs, w, c.Command[1])
			if !strings.Contains(text, "\ndir /data\n") || !mountedFrom(c, "/data", "data") {
				t.Error("redis.conf must keep its data in dir /data, the data volume")
			}
			text = strings.Replace(text, "\ndir /data\n", "\ndir "+t.TempDir()+"\n", 1)
			var caFile string
			if tc.overlay == "prod" {
				for _, dir := range []string{redisTLSDir, redisACLDir} {
					if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == dir }) {
						t.Fatalf("redis mounts nothing at %s", dir)
					}
				}
				local := t.TempDir()
				caFile = writeTLSSecret(t, filepath.Join(local, "tls"))
				mustWrite(t, filepath.Join(local, "acl", "users.acl"), testRedisACL)
				text = strings.ReplaceAll(text, redisTLSDir+"/", filepath.Join(local, "tls")+"/")
				text = strings.ReplaceAll(text, redisACLDir+"/", filepath.Join(local, "acl")+"/")
			}
			conf := filepath.Join(t.TempDir(), "redis.conf")
			mustWrite(t, conf, text)
			args := append([]string{conf}, c.Command[2:]...)
			for i, a := range args {
				args[i] = strings.ReplaceAll(a, "$(REDIS_PASSWORD)", "test-password")
			}
			port := freePort(t)
			args = append(args, "--bind", "127.0.0.1")
			if caFile != "" {
				args = append(args, "--tls-port", fmt.Sprint(port))
			} else {
				args = append(args, "--port", fmt.Sprint(port))
			}
			cmd := exec.Command(bin, args...)
			out := &strings.Builder{}
			cmd.Stdout, cmd.Stderr = out, out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
			addr := fmt.Sprintf("127.0.0.1:%d", port)
			for deadline := time.Now().Add(5 * time.Second); ; {
				if conn, err := net.Dial("tcp", addr); err == nil {
					conn.Close()
					break
				}
				select {
				case err := <-exited:
					exited <- err
					t.Fatalf("redis-server refused the %s configuration (%v):\n%s", tc.overlay, err, out)
				case <-time.After(20 * time.Millisecond):
				}
				if time.Now().After(deadline) {
					t.Fatalf("redis-server with the %s configuration did not listen:\n%s", tc.overlay, out)
				}
			}
			ctx := context.Background()
			client := func(user, password string) *redis.Client {
				o := &redis.Options{Addr: addr, Username: user, Password: password, MaxRetries: -1}
				if caFile != "" {
					pool := x509.NewCertPool()
					b, err := os.ReadFile(caFile)
					if err != nil || !pool.AppendCertsFromPEM(b) {
						t.Fatalf("CA %s: %v", caFile, err)
					}
					o.TLSConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
				}
				r := redis.NewClient(o)
				t.Cleanup(func() { r.Close() })
				return r
			}
			admin := client("", "test-password")
			if caFile != "" {
				admin = client("testadmin", "admin-pw")
			}
			if err := admin.Ping(ctx).Err(); err != nil {
				t.Fatalf("PING: %v", err)
			}
			for key, want := range map[string]string{"appendonly": tc.appendonly, "maxmemory-policy": "noeviction"} {
				got, err := admin.ConfigGet(ctx, key).Result()
				if err != nil || got[key] != want {
					t.Errorf("CONFIG GET %s = %v (%v), want %s", key, got, err, want)
				}
			}
			if caFile == "" {
				anon := client("", "")
				if err := anon.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
					t.Errorf("PING without the password: %v, want NOAUTH", err)
				}
				return
			}
			// Plain text reaches nothing; no user is no access.
			plain := redis.NewClient(&redis.Options{Addr: addr, Username: "imagecache", Password: "ic-pw", MaxRetries: -1, DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second})
			defer plain.Close()
			if err := plain.Ping(ctx).Err(); err == nil {
				t.Error("a plain-text client was answered on the TLS port")
			}
			if err := client("", "").Ping(ctx).Err(); err == nil {
				t.Error("PING without a user was answered")
			}
			if err := client("imagecache", "ic-pw").Set(ctx, "chain:x", "1", 0).Err(); err != nil {
				t.Errorf("imagecache SET: %v", err)
			}
			sched := client("scheduler", "sc-pw")
			if v, err := sched.Get(ctx, "chain:x").Result(); err != nil || v != "1" {
				t.Errorf("scheduler GET = %q, %v", v, err)
			}
			if err := sched.Set(ctx, "chain:x", "2", 0).Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
				t.Errorf("scheduler SET: %v, want NOPERM", err)
			}
			probe := client("probe", "pr-pw")
			if err := probe.Ping(ctx).Err(); err != nil {
				t.Errorf("probe PING: %v", err)
			}
			if err := probe.Get(ctx, "chain:x").Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
				t.Errorf("probe GET: %v, want NOPERM", err)
			}
			if p := c.ReadinessProbe.Exec.Command; !strings.Contains(strings.Join(p, " "), "--user probe") || !strings.Contains(strings.Join(p, " "), "--tls") {
				t.Errorf("readiness probe %q does not PING over TLS as the probe user", p)
			}
		})
	}
}

// Where the prod Redis mounts the Secrets podvisor-redis-tls and
// podvisor-redis-acl.
const (
	redisTLSDir = "/var/run/secrets/redis/tls"
	redisACLDir = "/var/run/secrets/redis/acl"
)

// testRedisACL is what `podvisor identity redis-acl` writes (the rules of
// shared/redisserver: RulesWriter, RulesReader, RulesProbe), with test
// passwords and a test admin that reads the configuration back.
const testRedisACL = `user default off
user imagecache on >ic-pw ~* &* +@all -@admin -@dangerous
user scheduler on >sc-pw ~* -@all +@read +@connection -@dangerous
user probe on >pr-pw -@all +ping
user testadmin on >admin-pw ~* &* +@all
`

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
