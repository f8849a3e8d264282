package deploy

import (
	"context"
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
func natsConfig(t *testing.T, objs []manifests.Object, w workload, auth string) (*server.Options, string) {
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
		if m.MountPath == "/etc/nats/auth" {
			mustWrite(t, filepath.Join(root, m.MountPath, "auth.conf"), auth)
		}
	}
	t.Setenv("POD_NAME", w.name+"-0")
	opts, err := server.ProcessConfigFile(local)
	if err != nil {
		t.Fatalf("%s: nats-server rejects %s: %v", w, confPath, err)
	}
	return opts, local
}

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
			opts, _ := natsConfig(t, objs, w, "")
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
				if len(opts.Routes) != 0 || opts.Cluster.Port != 0 {
					t.Errorf("the single node has cluster settings: %d routes, port %d", len(opts.Routes), opts.Cluster.Port)
				}
				return
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
	opts, _ := natsConfig(t, objs, w, auth)

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

	if _, err := nats.Connect(s.ClientURL()); err == nil {
		t.Error("an anonymous client connected: the accounts from auth.conf are not in force")
	}
	nc, err := nats.Connect(s.ClientURL(), nats.UserCredentials(creds))
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
	opts, _ := natsConfig(t, objs, w, "")
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
// overridden for the test), with the password the StatefulSet passes.
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
			conf := filepath.Join(t.TempDir(), "redis.conf")
			mustWrite(t, conf, strings.Replace(text, "\ndir /data\n", "\ndir "+t.TempDir()+"\n", 1))
			args := append([]string{conf}, c.Command[2:]...)
			for i, a := range args {
				args[i] = strings.ReplaceAll(a, "$(REDIS_PASSWORD)", "test-password")
			}
			port := freePort(t)
			args = append(args, "--bind", "127.0.0.1", "--port", fmt.Sprint(port))
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
			rdb := redis.NewClient(&redis.Options{Addr: addr, Password: "test-password"})
			t.Cleanup(func() { rdb.Close() })
			ctx := context.Background()
			if err := rdb.Ping(ctx).Err(); err != nil {
				t.Fatalf("PING with the password: %v", err)
			}
			for key, want := range map[string]string{"appendonly": tc.appendonly, "maxmemory-policy": "noeviction"} {
				got, err := rdb.ConfigGet(ctx, key).Result()
				if err != nil || got[key] != want {
					t.Errorf("CONFIG GET %s = %v (%v), want %s", key, got, err, want)
				}
			}
			anon := redis.NewClient(&redis.Options{Addr: addr})
			defer anon.Close()
			if err := anon.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
				t.Errorf("PING without the password: %v, want NOAUTH", err)
			}
		})
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
