package guestcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/podvisor/podvisor/agent/forkthread"
	"github.com/podvisor/podvisor/shared/bus"
)

// ControlPlane is what a guest cluster's control plane is started with.
type ControlPlane struct {
	Namespace, Name string
	// Version is the guest Kubernetes version.
	Version string
	// Creds is the creds file of the guest cluster's NATS identity.
	Creds string
	// ClassName and Network are the control-plane VMs' class and logical
	// network (VMControlPlanes).
	ClassName, Network string
	// Replicas is how many control-plane VMs (etcd members and API
	// servers) run it; 1 when 0.
	Replicas int
	// Endpoint is the URL its record holds from an earlier Ensure (""
	// for none): made again (after a restart), its API is published at
	// that address where it can be, so that kubeconfigs handed out keep
	// working.
	Endpoint string
}

// Endpoint is a ready control plane: its API server's URL and the admin
// kubeconfig.
type Endpoint struct {
	URL        string `json:"endpoint"`
	Kubeconfig []byte `json:"kubeconfig"`
}

// ControlPlanes runs guest control planes (the guest cluster's
// control-plane VM). Both calls are idempotent.
type ControlPlanes interface {
	// Ensure starts the control plane unless it runs and returns once its
	// API server answers and its podvisor node is registered.
	Ensure(ctx context.Context, cp ControlPlane) (Endpoint, error)
	// Remove stops the control plane and removes its state.
	Remove(ctx context.Context, namespace, name string) error
}

// ReadyFile is what podvisor-guest writes in its directory once its API
// server answers and its node is registered: an Endpoint as JSON.
const ReadyFile = "ready.json"

// Processes runs each control plane as a podvisor-guest process with a
// directory of its own, Dir/<namespace>.<name>. A control plane whose
// process is gone (the supervisor restarted) is started again on the same
// directory: same CA, same etcd data, so its kubeconfig stays valid.
type Processes struct {
	Binary, Dir     string
	NATSURL, NATSCA string
	ReadyTimeout    time.Duration
	Logger          *slog.Logger

	mu    sync.Mutex
	procs map[string]*process
}

type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

var _ ControlPlanes = (*Processes)(nil)

func (p *Processes) dir(namespace, name string) string {
	return filepath.Join(p.Dir, namespace+"."+name)
}

// Ensure starts podvisor-guest for cp unless it runs and waits for its
// ready file.
func (p *Processes) Ensure(ctx context.Context, cp ControlPlane) (Endpoint, error) {
	key := cp.Namespace + "/" + cp.Name
	if cp.Replicas > 1 {
		// Members as processes of one machine would share its fate: no
		// availability is gained, so none is claimed.
		return Endpoint{}, bus.Permanent(bus.WithReason("HighAvailabilityUnavailable", fmt.Errorf(
			"spec.controlPlane.replicas %d: this supervisor runs guest control planes as its own processes; several control planes run only in control-plane VMs (simulated guests)", cp.Replicas)))
	}
	dir := p.dir(cp.Namespace, cp.Name)
	p.mu.Lock()
	if p.procs == nil {
		p.procs = map[string]*process{}
	}
	pr := p.procs[key]
	if pr != nil {
		select {
		case <-pr.done:
			pr = nil
		default:
		}
	}
	if pr == nil {
		var err error
		if pr, err = p.start(dir, cp); err != nil {
			p.mu.Unlock()
			return Endpoint{}, err
		}
		p.procs[key] = pr
	}
	p.mu.Unlock()

	timeout := p.ReadyTimeout
	if timeout == 0 {
		timeout = 3 * time.Minute
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if b, err := os.ReadFile(filepath.Join(dir, ReadyFile)); err == nil {
			var ep Endpoint
			if err := json.Unmarshal(b, &ep); err != nil {
				return Endpoint{}, fmt.Errorf("control plane %s: %s: %w", key, ReadyFile, err)
			}
			return ep, nil
		}
		select {
		case <-ctx.Done():
			return Endpoint{}, ctx.Err()
		case <-pr.done:
			return Endpoint{}, fmt.Errorf("control plane %s exited (%v): %s", key, pr.err, logTail(filepath.Join(dir, "guest.log")))
		case <-deadline.C:
			return Endpoint{}, fmt.Errorf("control plane %s not ready within %s: %s", key, timeout, logTail(filepath.Join(dir, "guest.log")))
		case <-tick.C:
		}
	}
}

func (p *Processes) start(dir string, cp ControlPlane) (*process, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("control plane %s/%s: %w", cp.Namespace, cp.Name, err)
	}
	// A ready file is from a previous run: this one writes its own.
	if err := os.Remove(filepath.Join(dir, ReadyFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(dir, "guest.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	args := []string{"run",
		"--dir", dir,
		"--cluster", cp.Namespace + "/" + cp.Name,
		"--version", cp.Version,
		"--nats-url", p.NATSURL,
		"--nats-creds", cp.Creds,
	}
	if p.NATSCA != "" {
		args = append(args, "--nats-ca", p.NATSCA)
	}
	cmd := exec.Command(p.Binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a terminal's Ctrl-C reaches `up`, which stops
	// the guests itself, in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := forkthread.Start(cmd); err != nil { // Pdeathsig follows the forking thread
		logf.Close()
		return nil, fmt.Errorf("control plane %s/%s: start %s: %w", cp.Namespace, cp.Name, p.Binary, err)
	}
	pr := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		pr.err = cmd.Wait()
		logf.Close()
		close(pr.done)
	}()
	if p.Logger != nil {
		p.Logger.Info("guest control plane started", "guestcluster", cp.Namespace+"/"+cp.Name, "pid", cmd.Process.Pid, "dir", dir)
	}
	return pr, nil
}

// Remove stops the process (SIGTERM, SIGKILL after 30 s) and removes its
// directory.
func (p *Processes) Remove(ctx context.Context, namespace, name string) error {
	key := namespace + "/" + name
	p.mu.Lock()
	pr := p.procs[key]
	delete(p.procs, key)
	p.mu.Unlock()
	if pr != nil {
		stop(ctx, pr)
	}
	return os.RemoveAll(p.dir(namespace, name))
}

// Close stops every control plane and keeps their directories: the next
// start resumes them.
func (p *Processes) Close() {
	p.mu.Lock()
	procs := p.procs
	p.procs = nil
	p.mu.Unlock()
	for _, pr := range procs {
		stop(context.Background(), pr)
	}
}

func stop(ctx context.Context, pr *process) {
	_ = pr.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-pr.done:
		return
	case <-time.After(30 * time.Second):
	case <-ctx.Done():
	}
	_ = pr.cmd.Process.Kill()
	<-pr.done
}

// logTail is the end of a control plane's log, for the failure message.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "no log"
	}
	if len(b) > 1500 {
		b = b[len(b)-1500:]
	}
	return string(bytes.TrimSpace(b))
}
