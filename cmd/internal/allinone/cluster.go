package allinone

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/podvisor/podvisor/agent/forkthread"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bus/natsembed"
	"github.com/podvisor/podvisor/shared/pki"
)

// A NATS cluster and service replicas as processes of their own.
//
// With --nats-nodes N (N > 1) up runs an N-node NATS cluster on loopback,
// each node a `podvisor nats-node` process with its own store dir
// (<state>/nats-<i>), streams and buckets replicated on every node (R=N,
// at most 5). With --replicas N each service runs as N `podvisor serve`
// processes. Every such process is supervised: up restarts it a moment
// after it dies, as Kubernetes would, and writes its pid to
// <state>/procs/<name>.pid, so that faults can be injected per process
// (SIGKILL, SIGSTOP/SIGCONT) and the system seen to converge.

// NATSNode is one node of up's NATS cluster.
type NATSNode struct {
	// Index is the node's number (0…N-1); it names the node
	// (podvisor-nats-<i>) and its store dir (<state>/nats-<i>).
	Index int
	// Host is where the node listens.
	Host string
	// ClientPorts and ClusterPorts are every node's ports, in index order.
	ClientPorts, ClusterPorts []int
}

// RunNATSNode runs node n of the cluster in the state dir until ctx ends:
// the identities and CA are up's (up made them before starting the nodes).
func RunNATSNode(ctx context.Context, stateDir string, n NATSNode) error {
	if n.Index < 0 || n.Index >= len(n.ClientPorts) || len(n.ClientPorts) != len(n.ClusterPorts) {
		return fmt.Errorf("nats node %d: want an index below the %d client ports, and as many cluster ports (%d)", n.Index, len(n.ClientPorts), len(n.ClusterPorts))
	}
	auth, err := bus.LoadAuthority(filepath.Join(stateDir, "nats-auth"))
	if err != nil {
		return fmt.Errorf("nats node %d: %w", n.Index, err)
	}
	ca, err := pki.LoadOrCreateCA(filepath.Join(stateDir, "tls"))
	if err != nil {
		return fmt.Errorf("nats node %d: %w", n.Index, err)
	}
	srvTLS, err := ca.ServerTLS("nats", pki.Hosts(n.Host)...)
	if err != nil {
		return fmt.Errorf("nats node %d: %w", n.Index, err)
	}
	var routes []string
	for _, p := range n.ClusterPorts {
		routes = append(routes, "nats-route://"+net.JoinHostPort(n.Host, strconv.Itoa(p)))
	}
	emb, err := natsembed.Start(natsembed.Config{
		Dir: filepath.Join(stateDir, fmt.Sprintf("nats-%d", n.Index)), Host: n.Host, Port: n.ClientPorts[n.Index],
		ServerName: fmt.Sprintf("podvisor-nats-%d", n.Index), SyncAlways: true, Auth: auth, TLS: srvTLS,
		Cluster: &natsembed.ClusterConfig{Name: "podvisor", Port: n.ClusterPorts[n.Index], Routes: routes},
	})
	if err != nil {
		return fmt.Errorf("nats node %d: %w", n.Index, err)
	}
	<-ctx.Done()
	emb.Shutdown()
	return nil
}

// child is a supervised process of up.
type child struct {
	name string
	// exe runs it; empty: the executable of up (s.executable).
	exe  string
	args []string
	env  []string
}

// ProcsDir is where up writes the pid of each supervised process
// (<name>.pid: nats-0, scheduler-1, …) and, for a service process, the
// address of its health and metrics server (<name>.health).
func ProcsDir(stateDir string) string { return filepath.Join(stateDir, "procs") }

// supervise runs c until runCtx ends, starting it again a second after it
// exits (a SIGKILL by a fault injector, a crash). On the way out it sends
// SIGTERM and waits for the process.
func (s *System) supervise(runCtx context.Context, c child) {
	self, err := s.executable()
	if err != nil {
		s.errs <- err
		return
	}
	if c.exe != "" {
		self = c.exe
	}
	log := s.log.With("process", c.name)
	pidFile := filepath.Join(ProcsDir(s.cfg.StateDir), c.name+".pid")
	logPath := filepath.Join(s.cfg.StateDir, "logs", c.name+".log")
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer os.Remove(pidFile)
		for starts := 0; runCtx.Err() == nil; starts++ {
			f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
			if err != nil {
				s.errs <- fmt.Errorf("%s: log: %w", c.name, err)
				return
			}
			cmd := exec.Command(self, c.args...)
			cmd.Env = append(slices.Clone(os.Environ()), c.env...)
			cmd.Stdout, cmd.Stderr = f, f
			// The children go with up, even when up is killed.
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			if err := forkthread.Start(cmd); err != nil { // Pdeathsig follows the forking thread
				f.Close()
				s.errs <- fmt.Errorf("%s: start: %w", c.name, err)
				return
			}
			_ = os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o640)
			if starts > 0 {
				log.Info("process restarted", "pid", cmd.Process.Pid, "restarts", starts)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				f.Close()
				log.Warn("process exited; restarting it in a second", "err", err)
			case <-runCtx.Done():
				// A stopped process must be continued to see the SIGTERM.
				_ = cmd.Process.Signal(syscall.SIGCONT)
				_ = cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-done:
				case <-time.After(30 * time.Second):
					_ = cmd.Process.Kill()
					<-done
				}
				f.Close()
				return
			}
			select {
			case <-runCtx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}()
}

func (s *System) executable() (string, error) {
	if s.cfg.Executable != "" {
		return s.cfg.Executable, nil
	}
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("up: own executable (to run processes of its own): %w", err)
	}
	return self, nil
}

// serviceExecutable runs the service processes: podvisord beside the
// executable of up when it is there (`make build` and the image put it
// there; a service process maps less of it than of the whole CLI) and of the
// same build, else up's own executable, whose `serve` runs the same code.
// The arguments are the same for both.
func (s *System) serviceExecutable() (string, error) {
	self, err := s.executable()
	if err != nil {
		return "", err
	}
	d := filepath.Join(filepath.Dir(self), "podvisord")
	if st, err := os.Stat(d); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
		// A podvisord left from another build (an older `make build`, a
		// copy) would run other service code than this up expects.
		theirs, mine := buildOf(d), buildOf(self)
		if theirs == mine || theirs == "" || mine == "" {
			return d, nil
		}
		s.log.Warn("podvisord beside this executable is another build; the service processes run this executable instead",
			"podvisord", theirs, "this", mine)
	}
	return self, nil
}

// buildRe reads the version and commit of a `version` line
// (buildinfo.Info.String).
var buildRe = regexp.MustCompile(`^podvisor (\S+) \(commit (\S+),`)

// buildOf is the version and commit exe's `version` prints, or "" when it
// does not say (a commit unknown, an executable that has no such command).
func buildOf(exe string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, exe, "version").Output()
	if err != nil {
		return ""
	}
	m := buildRe.FindStringSubmatch(strings.TrimSpace(string(out)))
	if m == nil || m[2] == "unknown" {
		return ""
	}
	return m[1] + " " + m[2]
}

// startNATSCluster starts the cluster's nodes as supervised processes and
// returns their client URLs once every node accepts clients and JetStream
// has a leader.
func (s *System) startNATSCluster(ctx, runCtx context.Context, n int) ([]string, error) {
	for _, d := range []string{ProcsDir(s.cfg.StateDir), filepath.Join(s.cfg.StateDir, "logs")} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("up: %w", err)
		}
	}
	clientPorts, clusterPorts := make([]int, n), make([]int, n)
	var urls []string
	for i := range n {
		var err error
		flag := 0
		if s.cfg.NATSPort != 0 {
			flag = s.cfg.NATSPort + i
		}
		part := natsNodePart(i)
		if clientPorts[i], err = freePort(s.cfg.Host, s.ports.want(part, flag)...); err != nil {
			return nil, fmt.Errorf("up: NATS node %d: %w", i, err)
		}
		s.ports.use(part, s.cfg.Host, flag, clientPorts[i])
		if clusterPorts[i], err = freePort(s.cfg.Host, 0); err != nil {
			return nil, fmt.Errorf("up: NATS node %d: %w", i, err)
		}
		urls = append(urls, "nats://"+net.JoinHostPort(s.cfg.Host, strconv.Itoa(clientPorts[i])))
	}
	join := func(ports []int) string {
		var out []string
		for _, p := range ports {
			out = append(out, strconv.Itoa(p))
		}
		return strings.Join(out, ",")
	}
	for i := range n {
		s.supervise(runCtx, child{name: fmt.Sprintf("nats-%d", i), args: []string{"nats-node",
			"--state-dir", s.cfg.StateDir, "--index", strconv.Itoa(i), "--listen", s.cfg.Host,
			"--client-ports", join(clientPorts), "--cluster-ports", join(clusterPorts)}})
	}
	return urls, nil
}

// waitTopology declares the streams and buckets with replicas once the
// cluster can: a new cluster elects its JetStream leader a few seconds
// after its nodes meet.
func (s *System) waitTopology(ctx context.Context, replicas int) error {
	deadline := time.Now().Add(90 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		if err := ctx.Err(); err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		b, err := s.Dial(cctx, "up")
		if err == nil {
			err = b.EnsureTopology(cctx, bus.WithReplicas(replicas))
			b.Close()
		}
		cancel()
		if err == nil {
			return nil
		}
		last = err
		s.log.Debug("NATS cluster not ready yet", "err", err)
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("up: NATS cluster: streams not declared within 90s: %w", last)
}

// startReplicas runs each selected service as cfg.Replicas `podvisor serve`
// processes beside up (they read the env file, which must be written).
func (s *System) startReplicas(runCtx context.Context) error {
	if _, err := s.WriteEnv(); err != nil {
		return fmt.Errorf("up: env file for the service processes: %w", err)
	}
	for _, d := range []string{ProcsDir(s.cfg.StateDir), filepath.Join(s.cfg.StateDir, "logs")} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return fmt.Errorf("up: %w", err)
		}
	}
	exe, err := s.serviceExecutable()
	if err != nil {
		return err
	}
	var extra []string
	for _, k := range slices.Sorted(maps.Keys(s.cfg.ServiceEnv)) {
		extra = append(extra, k+"="+s.cfg.ServiceEnv[k])
	}
	for _, spec := range s.cfg.Services {
		for i := range s.cfg.Replicas {
			name := fmt.Sprintf("%s-%d", spec.Name, i)
			s.supervise(runCtx, child{
				name: name,
				exe:  exe,
				args: []string{"serve", spec.Name, "--state-dir", s.cfg.StateDir},
				// Health and metrics on a port of their own each, written to
				// <procs>/<name>.health.
				env: append([]string{"PODVISOR_HEALTH_ADDR=" + net.JoinHostPort(s.cfg.Host, "0"),
					"PODVISOR_HEALTH_ADDR_FILE=" + filepath.Join(ProcsDir(s.cfg.StateDir), name+".health")}, extra...),
			})
		}
	}
	s.log.Info("service processes started", "services", len(s.cfg.Services), "replicas", s.cfg.Replicas, "executable", exe)
	return nil
}

// ErrNoCluster: --nats-nodes needs the embedded NATS.
var ErrNoCluster = errors.New("up: --nats-nodes runs an embedded cluster; it cannot be combined with an external NATS (--nats-url)")
