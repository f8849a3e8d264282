//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/podvisor/podvisor/events"
	corev1 "k8s.io/api/core/v1"
)

// podvisorBin is the binary under test: $PODVISOR_BIN (make build puts
// podvisord beside it), else podvisor and podvisord built once for the
// whole run into one directory.
var (
	binOnce sync.Once
	binPath string
	binErr  error
)

func podvisorBin(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		if p := os.Getenv("PODVISOR_BIN"); p != "" {
			binPath, binErr = filepath.Abs(p)
			return
		}
		dir, err := os.MkdirTemp("", "podvisor-e2e-bin")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "podvisor")
		out, err := exec.Command("go", "build", "-o", dir+"/", "github.com/podvisor/podvisor/cmd/podvisor", "github.com/podvisor/podvisor/cmd/podvisord").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build podvisor podvisord: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// process is a podvisor (or helper) subprocess whose output goes to a log
// file in the test's directory, so that a failure can point at it.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // valid once done is closed
}

func startProcess(t *testing.T, name, logPath string, env []string, bin string, args ...string) *process {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	// The process lists as podvisor-e2e (natsd-e2e), so that stopping
	// one's own `podvisor up` by name on a shared machine
	// (pkill -f 'podvisor up') does not stop the suite's.
	cmd.Args[0] = filepath.Base(bin) + "-e2e"
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig and waits up to timeout; it reports how the process ended.
func (p *process) stop(sig os.Signal, timeout time.Duration) error {
	if p.exited() {
		return fmt.Errorf("%s had already exited: %v", p.name, p.err)
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not exit within %s of %v", p.name, timeout, sig)
	}
}

func (p *process) kill() {
	if !p.exited() {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	}
}

// tail returns the last lines of the process's log, for failure messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return tailLines(string(b), n)
}

// system is one `podvisor up` as a user runs it: its state dir, its env file
// and the process.
type system struct {
	t   *testing.T
	bin string
	dir string
	env map[string]string
	up  *process

	mu      sync.Mutex
	outputs []string // every CLI output, for the secret check
}

// startUp runs `podvisor up` with every port free-chosen, waits for the env
// file and arranges for Ctrl-C (SIGINT) at the end of the test, after which
// the process must exit 0 within a minute.
func startUp(t *testing.T, extra ...string) *system {
	t.Helper()
	return startUpEnv(t, nil, extra...)
}

// startUpEnv is startUp with env (K=V) added to up's environment, which
// the processes it starts inherit (the services' settings).
func startUpEnv(t *testing.T, env []string, extra ...string) *system {
	t.Helper()
	s := &system{t: t, bin: podvisorBin(t), dir: t.TempDir()}
	// These scenarios measure the control plane at scale on a datacenter
	// without guests (see vmRunning); a scenario that runs containers passes
	// --guests on after these, and the last flag wins.
	args := append([]string{"up", "--state-dir", s.dir, "--nats-port", "0", "--vcenter-port", "0",
		"--registry-port", "0", "--ui-port", "0", "--guests", "off"}, extra...)
	s.up = startProcess(t, "podvisor up", filepath.Join(s.dir, "up.log"), append(s.baseEnv(), env...), s.bin, args...)
	t.Cleanup(func() {
		if err := s.up.stop(os.Interrupt, time.Minute); err != nil {
			t.Errorf("podvisor up did not stop cleanly on SIGINT: %v\n%s", err, tail(s.up.log, 30))
		}
	})
	envFile := filepath.Join(s.dir, "env")
	deadline := time.Now().Add(90 * time.Second)
	for {
		if _, err := os.Stat(envFile); err == nil {
			break
		}
		if s.up.exited() || time.Now().After(deadline) {
			t.Fatalf("podvisor up wrote no %s: %v\n%s", envFile, s.up.err, tail(s.up.log, 30))
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.env = readEnv(t, envFile)
	for _, k := range []string{"PODVISOR_NATS_URL", "GOVC_URL", "PODVISOR_REDIS_URL", "PODVISOR_REGISTRY"} {
		if s.env[k] == "" {
			t.Fatalf("env file %s does not export %s", envFile, k)
		}
	}
	return s
}

// baseEnv is the test's environment without podvisor and vSphere settings of
// the machine, so that only the state dir's env file counts.
func (s *system) baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PODVISOR_") || strings.HasPrefix(k, "GOVC_") || k == "NATS_URL" || strings.HasPrefix(k, "OTEL_") {
			continue
		}
		env = append(env, kv)
	}
	// PODVISOR_E2E_LOG_LEVEL=info keeps what every service did in its log
	// (with PODVISOR_FAULTS_LOGS, the fault-injection run's logs to read).
	level := "warn"
	if v := os.Getenv("PODVISOR_E2E_LOG_LEVEL"); v != "" {
		level = v
	}
	return append(env, "PODVISOR_STATE_DIR="+s.dir, "PODVISOR_LOG_LEVEL="+level)
}

// readEnv parses the `export K='v'` lines of the env file.
func readEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	vars := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimPrefix(strings.TrimSpace(sc.Text()), "export ")
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
			v = strings.ReplaceAll(v[1:len(v)-1], `'\''`, "'")
		}
		vars[k] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return vars
}

// cliResult is one CLI invocation's outcome.
type cliResult struct {
	args           []string
	stdout, stderr string
	code           int
}

func (r cliResult) String() string {
	return fmt.Sprintf("podvisor %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// cli runs the podvisor CLI against the system (through the env file of its
// state dir, as a user who sourced nothing would).
func (s *system) cli(stdin []byte, args ...string) cliResult {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.bin, args...)
	cmd.Env = s.baseEnv()
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
		errb.WriteString(err.Error())
	}
	s.mu.Lock()
	s.outputs = append(s.outputs, out.String(), errb.String())
	s.mu.Unlock()
	return cliResult{args: args, stdout: out.String(), stderr: errb.String(), code: code}
}

// mustCLI runs the CLI and fails the test on a non-zero exit.
func (s *system) mustCLI(stdin []byte, args ...string) string {
	s.t.Helper()
	r := s.cli(stdin, args...)
	if r.code != 0 {
		s.t.Fatalf("%s", r)
	}
	return r.stdout
}

// requireVerb fails the test at once, with a clear message, when the built
// CLI lacks a verb (rather than failing later on a usage error).
func (s *system) requireVerb(t *testing.T, verb string) {
	t.Helper()
	r := s.cli(nil, verb, "--help")
	if r.code != 0 || strings.Contains(r.stdout+r.stderr, "unknown command") {
		t.Fatalf("this build of podvisor has no %q verb: %s", verb, r)
	}
}

// cliPods is `podvisor get pods -n ns -o json`, decoded.
func (s *system) cliPods(ns string) ([]corev1.Pod, error) {
	r := s.cli(nil, "get", "pods", "-n", ns, "-o", "json")
	if r.code != 0 {
		return nil, errors.New(r.String())
	}
	var list struct {
		Items []corev1.Pod `json:"items"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		return nil, fmt.Errorf("get pods -o json: %w\n%s", err, r.stdout)
	}
	return list.Items, nil
}

// vmRunning reports whether the CLI shows a pod whose VM is powered on, on
// a host, with an address, and not being deleted: condition VMReady True
// (what pod.vm.ready announces). The datacenter `podvisor up` starts here
// runs no guests (--guests off), so no container starts and no pod reaches Kubernetes
// phase Running: it stays Pending (ContainerCreating) with its VM on, and
// these tests wait for that, never for Running.
func vmRunning(p corev1.Pod) bool {
	if p.DeletionTimestamp != nil || p.Spec.NodeName == "" || p.Status.PodIP == "" {
		return false
	}
	if p.Status.Phase != corev1.PodPending && p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if string(c.Type) == events.PodConditionVMReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// vmOn reports whether a pod record has its VM powered on (Starting:
// no guest reports here; Running if one did).
func vmOn(r events.PodRecord) bool {
	return r.Phase == events.PodPhaseStarting || r.Phase == events.PodPhaseRunning
}

// eventually polls cond every interval until it returns nil or timeout
// passes; then it fails with the last error.
func eventually(t *testing.T, timeout, interval time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s: %v", what, timeout, err)
		}
		time.Sleep(interval)
	}
}

// connectNATS is a raw NATS client of the system.
func connectNATS(t *testing.T, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	opts = append([]nats.Option{nats.Name("podvisor-e2e"), nats.MaxReconnects(-1), nats.ReconnectWait(200 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect to NATS %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// natsOpts are what the env file gives a NATS client: the client
// identity's creds and the CA of the server's certificate.
func (s *system) natsOpts() []nats.Option {
	var opts []nats.Option
	if c := s.env["PODVISOR_NATS_CREDS"]; c != "" {
		opts = append(opts, nats.UserCredentials(c))
	}
	if ca := s.env["PODVISOR_NATS_CA"]; ca != "" {
		opts = append(opts, nats.RootCAs(ca))
	}
	return opts
}

func itoa(i int) string { return strconv.Itoa(i) }
