package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/agent/bundle"
	"github.com/podvisor/podvisor/agent/disks"
	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/internal/reaper"
	"github.com/podvisor/podvisor/agent/logs"
	"github.com/podvisor/podvisor/agent/runtime"
)

// Config is what a Pod needs.
type Config struct {
	Spec *guestchannel.PodSpec
	// Board receives the pod's state (NewBoard(Spec)).
	Board   *Board
	Runtime *runtime.Runtime
	// Disks are the mounted disks (the ephemeral disk and the image disks).
	Disks *disks.Mounted
	// StateDir holds the bundles and the overlay mountpoints.
	StateDir string
	// CgroupParent is the cgroup the containers' cgroups go under.
	CgroupParent string
	// Backoff and MaxBackoff bound the restart delay.
	Backoff, MaxBackoff time.Duration
	// LogMaxBytes is the log rotation size.
	LogMaxBytes int64
	// VolumeCheck is how often emptyDir volumes with a sizeLimit on the
	// ephemeral disk are measured (0: never).
	VolumeCheck time.Duration
	Log         *slog.Logger
}

// Pod supervises the containers of one pod.
type Pod struct {
	cfg     Config
	board   *Board
	logs    *logs.Store
	volumes map[string]string
	tmpfs   []string
	// resolvConf is the pod's /etc/resolv.conf on the ephemeral disk, ""
	// when the spec has no DNS.
	resolvConf string
	// cpuCapacity is the VM's CPU in millicores (cpuCapacityMilli), read
	// once: a pod VM's CPUs do not change while it runs.
	cpuCapacity int64

	mu       sync.Mutex
	running  map[string]*instance // by container name
	created  map[string]*launched // made ahead by Create, not started yet
	stopping chan struct{}        // closed by Stop
	stopOnce sync.Once
	grace    time.Duration // of the stop, set before stopping closes
	stopped  chan struct{} // closed once every container loop returned
	killed   []string
	wg       sync.WaitGroup
}

// instance is one running container process.
type instance struct {
	id   string
	proc *runtime.Process
	kill chan killRequest
	// as is whom its exec commands and probes run as: the container's
	// process's user and working directory.
	as runtime.ExecAs
}

type killRequest struct {
	// reason is stopReason, or why a probe ends the instance (its
	// terminated state's message).
	reason string
	grace  time.Duration
}

// stopReason is the reason of the kills a stop of the pod sends.
const stopReason = "stop"

// New prepares a pod: the log store and the emptyDir volumes on the
// ephemeral disk.
func New(cfg Config) (*Pod, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	eph := cfg.Disks.Ephemeral
	store, err := logs.NewStore(filepath.Join(eph, "logs"), cfg.LogMaxBytes)
	if err != nil {
		return nil, err
	}
	p := &Pod{
		cfg: cfg, board: cfg.Board, logs: store, volumes: map[string]string{},
		running: map[string]*instance{}, created: map[string]*launched{}, stopping: make(chan struct{}), stopped: make(chan struct{}),
	}
	p.cpuCapacity = cpuCapacityMilli("/sys/fs/cgroup", p.cgroupParent())
	for i, v := range cfg.Spec.Volumes {
		dir := filepath.Join(eph, "volumes", v.Name)
		// An emptyDir starts empty with the pod.
		if err := os.RemoveAll(dir); err != nil {
			return nil, fmt.Errorf("volumes[%d] (%s): %w", i, v.Name, err)
		}
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return nil, fmt.Errorf("volumes[%d] (%s): %w", i, v.Name, err)
		}
		if v.EmptyDir != nil && v.EmptyDir.Medium == "Memory" {
			opt := "mode=1777"
			if v.EmptyDir.SizeLimitBytes > 0 {
				opt += fmt.Sprintf(",size=%d", v.EmptyDir.SizeLimitBytes)
			}
			if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opt); err != nil {
				return nil, fmt.Errorf("volumes[%d] (%s): tmpfs: %w", i, v.Name, err)
			}
			p.tmpfs = append(p.tmpfs, dir)
		}
		p.volumes[v.Name] = dir
	}
	if d := cfg.Spec.DNS; d != nil || cfg.Spec.NetworkPending {
		// A pod waiting for its network gets the file now, empty, so that
		// containers created before it mount it; SetDNS fills it in place.
		p.resolvConf = filepath.Join(eph, "etc", "resolv.conf")
		if err := os.MkdirAll(filepath.Dir(p.resolvConf), 0o755); err != nil {
			return nil, fmt.Errorf("dns: %w", err)
		}
		var content []byte
		if d != nil {
			content = d.ResolvConf()
		}
		if err := os.WriteFile(p.resolvConf, content, 0o644); err != nil {
			return nil, fmt.Errorf("dns: %w", err)
		}
	}
	return p, nil
}

// SetDNS writes the pod's resolver configuration once its network is
// known (a spec with NetworkPending had none), in place: the containers
// created ahead mount this very file. nil leaves it empty.
func (p *Pod) SetDNS(d *guestchannel.DNSConfig) error {
	if p.resolvConf == "" || d == nil {
		return nil
	}
	f, err := os.OpenFile(p.resolvConf, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("dns: %w", err)
	}
	_, err = f.Write(d.ResolvConf())
	return errors.Join(err, f.Close())
}

// Board is the pod's reported state.
func (p *Pod) Board() *Board { return p.board }

// Logs is the pod's log store.
func (p *Pod) Logs() *logs.Store { return p.logs }

// Run runs the init containers, then the containers, and returns when every
// container loop has ended (all terminated for good, or stopped). What
// Create made and Run did not start (a stop came first) is removed.
func (p *Pod) Run() {
	defer close(p.stopped)
	defer p.discardCreated()
	if limited := p.sizedVolumes(); len(limited) > 0 && p.cfg.VolumeCheck > 0 {
		go p.watchVolumes(limited)
	}
	spec := p.cfg.Spec
	for i := range spec.InitContainers {
		c := &spec.InitContainers[i]
		if !p.runLoop(c, true) {
			for j := i + 1; j < len(spec.InitContainers); j++ {
				p.logs.Final(spec.InitContainers[j].Name)
			}
			for j := range spec.Containers {
				p.logs.Final(spec.Containers[j].Name)
			}
			p.updatePhase()
			return
		}
	}
	for i := range spec.Containers {
		c := &spec.Containers[i]
		if c.Completed != nil {
			continue
		}
		p.board.update(c.Name, func(s *guestchannel.ContainerStatus) { s.State.Reason = "ContainerCreating" })
	}
	for i := range spec.Containers {
		c := &spec.Containers[i]
		if c.Completed != nil {
			// It terminated for good in an earlier boot (the board says
			// how from the start): nothing of it runs, and no log of it
			// will be written in this boot.
			p.logs.Final(c.Name)
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.runLoop(c, false)
		}()
	}
	p.wg.Wait()
	p.updatePhase()
}

// Abandon ends a pod that will not run (its network could not be
// configured): what Create made is removed and a Stop returns at once.
// Call it instead of Run, never with it.
func (p *Pod) Abandon() {
	defer close(p.stopped)
	p.discardCreated()
}

// Stopping is closed once Stop was called.
func (p *Pod) Stopping() <-chan struct{} { return p.stopping }

func (p *Pod) isStopping() bool {
	select {
	case <-p.stopping:
		return true
	default:
		return false
	}
}

// runLoop runs container c until it terminates for good. For an init
// container it reports whether it completed successfully.
func (p *Pod) runLoop(c *guestchannel.Container, isInit bool) bool {
	log := p.cfg.Log.With("container", c.Name)
	policy := p.cfg.Spec.RestartPolicy
	if isInit && policy == "Always" {
		policy = "OnFailure" // an init container must complete; Always means retry it
	}
	backoff := p.cfg.Backoff
	// crashed: the container was restarted since its slate was last clean
	// (its first start, or the last time it was forgiven), so its next
	// restart waits backoff. The first restart after a clean slate is
	// immediate, as the kubelet's: that restart is what arms its back-off.
	crashed := false
	defer p.logs.Final(c.Name)
	for instanceNo := 0; ; instanceNo++ {
		if p.isStopping() {
			return false
		}
		started := time.Now()
		term, err := p.runInstance(c, instanceNo)
		if configErr := (*bundle.ConfigError)(nil); errors.As(err, &configErr) {
			// As the kubelet: the container waits, whatever the restart
			// policy (no process ran, so none ended), and is tried again
			// after a back-off; the attempt is no restart.
			log.Error("create container", "err", err)
			instanceNo--
			p.board.update(c.Name, func(s *guestchannel.ContainerStatus) {
				s.State = guestchannel.ContainerState{Kind: guestchannel.StateWaiting, Reason: "CreateContainerConfigError", Message: err.Error()}
				s.Ready, s.Started = false, false
			})
			p.updatePhase()
			delay := backoff
			backoff = min(backoff*2, p.cfg.MaxBackoff)
			select {
			case <-time.After(delay):
				continue
			case <-p.stopping:
				return false
			}
		}
		if err != nil {
			log.Error("start container", "err", err)
			now := time.Now().UTC()
			term = guestchannel.ContainerState{Kind: guestchannel.StateTerminated, Reason: guestchannel.ReasonStartError,
				Message: err.Error(), ExitCode: 128, StartedAt: &now, FinishedAt: &now}
			// Every attempt after the first is a restart, as in
			// Kubernetes, whether or not it got the process started: a
			// crash loop of a container that cannot start counts up.
			p.restarting(c.Name, instanceNo)
			p.board.update(c.Name, func(s *guestchannel.ContainerStatus) {
				if instanceNo > 0 {
					restarted(s)
				}
				s.State, s.Ready, s.Started = term, false, false
			})
		}
		p.updatePhase()
		if p.isStopping() {
			return false
		}
		if guestchannel.TerminatedForGood(policy, term.ExitCode) {
			return term.ExitCode == 0
		}
		if time.Since(started) > 2*p.cfg.MaxBackoff {
			backoff, crashed = p.cfg.Backoff, false // it ran long enough: forgive earlier crashes
		}
		if !crashed {
			// Restarted at once: its ended state stays the state until the
			// next instance is there (restarted), as the kubelet's, and the
			// log's previous instance stays the one before it.
			crashed = true
			continue
		}
		delay := backoff
		backoff = min(backoff*2, p.cfg.MaxBackoff)
		// The log first: a host that sees the last state asks for its log.
		p.logs.Restarting(c.Name, instanceNo)
		p.board.update(c.Name, func(s *guestchannel.ContainerStatus) {
			last := s.State
			s.LastState = &last
			s.State = guestchannel.ContainerState{Kind: guestchannel.StateWaiting, Reason: "CrashLoopBackOff",
				Message: fmt.Sprintf("back-off %s restarting failed container=%s", delay, c.Name)}
		})
		select {
		case <-time.After(delay):
		case <-p.stopping:
			return false
		}
	}
}

// restarting tells the log, before the status shows instance instanceNo
// of container name (running, or failed to start), that the instance
// before it ended: the status's last state names that one from then on
// (restarted), and so does a --previous read, even when the new instance
// wrote no log (its start failed). After a back-off it was said already.
func (p *Pod) restarting(name string, instanceNo int) {
	if instanceNo > 0 {
		p.logs.Restarting(name, instanceNo-1)
	}
}

// restarted counts a restart on s, and makes the ended instance's state
// the last state where it is still the state: a restart without back-off
// left it there (runLoop); after a back-off it is the last state already.
func restarted(s *guestchannel.ContainerStatus) {
	s.RestartCount++
	if s.State.Kind == guestchannel.StateTerminated {
		last := s.State
		s.LastState = &last
	}
}

// launched is an instance of a container the runtime has set up: created
// (its init waiting for Start) or running.
type launched struct {
	proc        *runtime.Process
	rootfs      string
	cgroupsPath string
	as          runtime.ExecAs
	// pumped is closed once the container's output is all in its log.
	pumped chan struct{}
	// begun and prepared time its root and bundle, for the logs.
	begun, prepared time.Time
}

// launch sets up instance instanceNo of c: its root (an overlay of its
// image disks, the upper directory on the ephemeral disk), its bundle, and
// the runtime's create (create) or run. On error nothing of it is left.
func (p *Pod) launch(c *guestchannel.Container, instanceNo int, create bool) (_ *launched, err error) {
	id := c.Name
	eph := p.cfg.Disks.Ephemeral
	ctrDir := filepath.Join(eph, "containers", c.Name)
	upper, work := filepath.Join(ctrDir, "upper"), filepath.Join(ctrDir, "work")
	l := &launched{rootfs: p.rootfs(c.Name), begun: time.Now(),
		cgroupsPath: path.Join(p.cgroupParent(), c.Name)}
	bundleDir := filepath.Join(p.cfg.StateDir, "bundles", c.Name)

	// Every instance starts from the image, as a restarted Kubernetes
	// container does.
	if err := os.RemoveAll(ctrDir); err != nil {
		return nil, fmt.Errorf("container dir: %w", err)
	}
	for _, d := range []string{upper, work, l.rootfs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("container dir: %w", err)
		}
	}
	lower := make([]string, len(c.Chain))
	for i, chain := range c.Chain {
		dir, ok := p.cfg.Disks.Images[chain]
		if !ok {
			return nil, fmt.Errorf("chain[%d]: image disk %s is not mounted", i, chain)
		}
		lower[i] = dir
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", strings.Join(lower, ":"), upper, work)
	if err := unix.Mount("overlay", l.rootfs, "overlay", 0, opts); err != nil {
		return nil, fmt.Errorf("overlay root: %w", err)
	}
	defer func() {
		if err != nil {
			p.unmountRoot(c.Name, l.rootfs)
		}
	}()
	s, err := bundle.Spec(c, bundle.Params{Rootfs: l.rootfs, Hostname: p.hostname(), CgroupsPath: l.cgroupsPath, Volumes: p.volumes, ResolvConf: p.resolvConf,
		CPUCapacityMilli: p.cpuCapacity})
	if err != nil {
		return nil, err
	}
	if err := bundle.Write(bundleDir, s); err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	l.as = runtime.ExecAs{UID: s.Process.User.UID, GID: s.Process.User.GID, Cwd: s.Process.Cwd}
	if p.cfg.Runtime.Exists(id) {
		_ = p.cfg.Runtime.Delete(id) // a leftover of a crashed agent
	}

	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	l.pumped = make(chan struct{})
	go func() {
		defer close(l.pumped)
		if err := p.logs.Copy(c.Name, instanceNo, r); err != nil {
			p.cfg.Log.Warn("container log", "container", c.Name, "err", err)
		}
		r.Close()
	}()
	l.prepared = time.Now()
	if create {
		l.proc, err = p.cfg.Runtime.Create(id, bundleDir, w)
	} else {
		l.proc, err = p.cfg.Runtime.Run(id, bundleDir, w)
	}
	w.Close()
	if err != nil {
		<-l.pumped
		return nil, err
	}
	return l, nil
}

func (p *Pod) unmountRoot(name, rootfs string) {
	if err := disks.Unmount(rootfs); err != nil {
		p.cfg.Log.Warn("unmount container root", "container", name, "err", err)
	}
}

// Create makes the first instance of each of the pod's containers ahead of
// Run (the runtime's create: namespaces, mounts, cgroup, the init waiting)
// so that Run only has to start them: what a pod VM can do before its
// network is there. A pod with init containers gets nothing ahead (its
// containers may only be made once those completed), and a container
// whose create fails is made by Run as usual, which reports the failure.
// Call it at most once, before Run.
func (p *Pod) Create() {
	spec := p.cfg.Spec
	if len(spec.InitContainers) > 0 {
		return
	}
	for i := range spec.Containers {
		c := &spec.Containers[i]
		if c.Completed != nil {
			continue // never started in this boot (Run)
		}
		p.board.update(c.Name, func(s *guestchannel.ContainerStatus) { s.State.Reason = "ContainerCreating" })
		l, err := p.launch(c, 0, true)
		if err != nil {
			p.cfg.Log.Warn("create container ahead; it is made at its start instead", "container", c.Name, "err", err)
			continue
		}
		p.cfg.Log.Info("container created", "container", c.Name, "runtime", p.cfg.Runtime.Name(),
			"prepare_ms", l.prepared.Sub(l.begun).Milliseconds(), "runtime_ms", time.Since(l.prepared).Milliseconds())
		p.mu.Lock()
		p.created[c.Name] = l
		p.mu.Unlock()
	}
}

// takeCreated returns the instance Create made of container name, once.
func (p *Pod) takeCreated(name string) *launched {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.created[name]
	delete(p.created, name)
	return l
}

// discard removes an instance that was created and never started (or whose
// start failed): the runtime's delete kills its waiting init.
func (p *Pod) discard(name string, l *launched) {
	if err := p.cfg.Runtime.Delete(name); err != nil {
		p.cfg.Log.Warn("delete container", "container", name, "err", err)
	}
	select {
	case <-l.proc.Done:
	case <-time.After(5 * time.Second):
		p.cfg.Log.Warn("created container's init did not end after its delete", "container", name, "pid", l.proc.Pid)
	}
	<-l.pumped
	p.unmountRoot(name, l.rootfs)
}

// discardCreated discards what Create made and Run never started.
func (p *Pod) discardCreated() {
	p.mu.Lock()
	left := p.created
	p.created = map[string]*launched{}
	p.mu.Unlock()
	for name, l := range left {
		p.discard(name, l)
	}
}

// runInstance starts one instance of c (the one Create made, for the
// first) and waits for it to end.
func (p *Pod) runInstance(c *guestchannel.Container, instanceNo int) (guestchannel.ContainerState, error) {
	id := c.Name
	var zero guestchannel.ContainerState
	var l *launched
	if instanceNo == 0 {
		l = p.takeCreated(c.Name)
	}
	if l != nil {
		t := time.Now()
		if err := p.cfg.Runtime.Start(id); err != nil {
			p.discard(id, l)
			return zero, err
		}
		// Where a start's time goes (docs/bench.md): made ahead, only the
		// runtime's start is left.
		p.cfg.Log.Info("container started", "container", c.Name, "runtime", p.cfg.Runtime.Name(), "created_ahead", true,
			"prepare_ms", 0, "runtime_ms", time.Since(t).Milliseconds())
	} else {
		var err error
		if l, err = p.launch(c, instanceNo, false); err != nil {
			return zero, err
		}
		// Where a start's time goes (docs/bench.md): the root and bundle,
		// then the runtime.
		p.cfg.Log.Info("container started", "container", c.Name, "runtime", p.cfg.Runtime.Name(),
			"prepare_ms", l.prepared.Sub(l.begun).Milliseconds(), "runtime_ms", time.Since(l.prepared).Milliseconds())
	}
	defer p.unmountRoot(c.Name, l.rootfs)
	cgroupsPath, proc, pumped := l.cgroupsPath, l.proc, l.pumped
	startedAt := time.Now().UTC()
	inst := &instance{id: id, proc: proc, kill: make(chan killRequest, 4), as: l.as}
	p.mu.Lock()
	p.running[c.Name] = inst
	p.mu.Unlock()
	if p.isStopping() {
		// Stop came while this instance was being started: it did not see
		// it, so the instance stops itself.
		inst.kill <- killRequest{reason: stopReason, grace: p.stopGrace()}
	}
	p.restarting(c.Name, instanceNo)
	p.board.update(c.Name, func(s *guestchannel.ContainerStatus) {
		if instanceNo > 0 {
			restarted(s)
		}
		s.State = guestchannel.ContainerState{Kind: guestchannel.StateRunning, StartedAt: &startedAt}
		s.Started = c.StartupProbe == nil
		// An init container is ready once it has completed, as in
		// Kubernetes; while it runs it is only started.
		s.Ready = c.ReadinessProbe == nil && c.StartupProbe == nil && !p.isInit(c.Name)
	})
	p.updatePhase()
	probeCtx, stopProbes := context.WithCancel(context.Background())
	go p.probe(probeCtx, c, inst)

	st, killedWhy := p.wait(inst)
	stopProbes()
	oom := oomKilled(cgroupsPath)
	p.mu.Lock()
	delete(p.running, c.Name)
	p.mu.Unlock()
	if err := p.cfg.Runtime.Delete(id); err != nil {
		p.cfg.Log.Warn("delete container", "container", c.Name, "err", err)
	}
	<-pumped
	finishedAt := time.Now().UTC()
	term := guestchannel.ContainerState{Kind: guestchannel.StateTerminated, ExitCode: int32(st.ExitCode()),
		Signal: int32(st.Signal()), Message: killedWhy, StartedAt: &startedAt, FinishedAt: &finishedAt}
	switch {
	case oom:
		term.Reason = "OOMKilled"
	case st.ExitCode() == 0:
		term.Reason = "Completed"
	default:
		term.Reason = "Error"
	}
	p.board.update(c.Name, func(s *guestchannel.ContainerStatus) {
		s.State, s.Started = term, false
		s.Ready = p.isInit(c.Name) && term.ExitCode == 0 && term.Signal == 0 && !oom
	})
	return term, nil
}

// isInit reports whether name is one of the pod's init containers.
func (p *Pod) isInit(name string) bool {
	for _, c := range p.cfg.Spec.InitContainers {
		if c.Name == name {
			return true
		}
	}
	return false
}

// wait waits for the instance's process, serving kill requests: SIGTERM,
// then SIGKILL once the grace period is over. It returns the process's
// status and why the agent ended it, for its terminated state's message
// ("" when it ended by itself, or on a stop's SIGTERM: the container's own
// end, as the kubelet reports it).
func (p *Pod) wait(inst *instance) (reaper.Status, string) {
	var deadline <-chan time.Time
	var reason, message string
	var grace time.Duration
	for {
		select {
		case st := <-inst.proc.Done:
			return st, message
		case k := <-inst.kill:
			if deadline != nil {
				if k.reason == stopReason {
					reason = k.reason // a stop that comes during a probe's kill owns it
				}
				continue // already terminating
			}
			reason, grace = k.reason, k.grace
			if reason != stopReason {
				message = reason
			}
			p.cfg.Log.Info("stop container", "container", inst.id, "reason", k.reason, "grace", k.grace)
			if k.grace <= 0 {
				_ = inst.proc.Signal(unix.SIGKILL)
				message = killedMessage(message, grace)
			} else {
				_ = inst.proc.Signal(unix.SIGTERM)
			}
			deadline = time.After(k.grace)
		case <-deadline:
			_ = inst.proc.Signal(unix.SIGKILL)
			if grace > 0 { // else killed at once, and said so
				message = killedMessage(message, grace)
			}
			if reason == stopReason {
				// Stopped.Killed: the containers a stop had to kill.
				p.mu.Lock()
				p.killed = append(p.killed, inst.id)
				p.mu.Unlock()
			}
			// deadline stays set (it fires once): a kill asked for after
			// this one (a probe failing on the dying process) is not
			// another that would change the message.
		}
	}
}

// killedMessage adds to cause (a probe's failure, "" for a stop) that the
// agent had to SIGKILL the instance after grace.
func killedMessage(cause string, grace time.Duration) string {
	killed := fmt.Sprintf("killed after the grace period of %s", grace)
	if cause == "" {
		return "pod stopped; " + killed
	}
	return cause + "; " + killed
}

// killInstance asks the running instance of name to end.
func (p *Pod) killInstance(name, reason string, grace time.Duration) {
	p.mu.Lock()
	inst := p.running[name]
	p.mu.Unlock()
	if inst != nil {
		select {
		case inst.kill <- killRequest{reason: reason, grace: grace}:
		default:
		}
	}
}

// Stop stops every container (SIGTERM, grace, SIGKILL), keeps them from
// restarting and returns the containers that had to be killed. Calling it
// again waits for the first stop.
func (p *Pod) Stop(grace time.Duration) guestchannel.Stopped {
	p.stopOnce.Do(func() {
		p.board.setPhase(guestchannel.PhaseStopping, "", "")
		p.mu.Lock()
		p.grace = grace
		p.mu.Unlock()
		close(p.stopping)
		p.mu.Lock()
		names := make([]string, 0, len(p.running))
		for name := range p.running {
			names = append(names, name)
		}
		p.mu.Unlock()
		for _, name := range names {
			p.killInstance(name, stopReason, grace)
		}
	})
	<-p.stopped
	p.mu.Lock()
	defer p.mu.Unlock()
	return guestchannel.Stopped{Killed: append([]string(nil), p.killed...)}
}

func (p *Pod) stopGrace() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.grace
}

// Close releases what New set up; call after Run returned.
func (p *Pod) Close() error {
	p.logs.Close()
	var errs []error
	for _, d := range p.tmpfs {
		errs = append(errs, disks.Unmount(d))
	}
	return errors.Join(errs...)
}

// RemoveFiles removes what the pod wrote: each container's log, upper
// and work directories on the ephemeral disk and its bundle, the emptyDir
// volumes and resolv.conf. For a pod whose disks go on as another pod's
// (a template's, whose guest a forked child takes over): call once Run or
// Abandon returned, after Close.
func (p *Pod) RemoveFiles() error {
	eph := p.cfg.Disks.Ephemeral
	var paths []string
	for _, cs := range [][]guestchannel.Container{p.cfg.Spec.InitContainers, p.cfg.Spec.Containers} {
		for _, c := range cs {
			paths = append(paths, filepath.Join(eph, "logs", c.Name), filepath.Join(eph, "containers", c.Name),
				filepath.Join(p.cfg.StateDir, "bundles", c.Name))
		}
	}
	for _, dir := range p.volumes {
		paths = append(paths, dir)
	}
	if p.resolvConf != "" {
		paths = append(paths, p.resolvConf)
	}
	var errs []error
	for _, path := range paths {
		if err := os.RemoveAll(path); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Done is closed once Run returned.
func (p *Pod) Done() <-chan struct{} { return p.stopped }

func (p *Pod) hostname() string {
	if p.cfg.Spec.Hostname != "" {
		return p.cfg.Spec.Hostname
	}
	return p.cfg.Spec.Name
}

func (p *Pod) cgroupParent() string {
	if p.cfg.CgroupParent != "" {
		return p.cfg.CgroupParent
	}
	return "/" // BootConfig: empty means the root of the guest
}

// cpuCapacityMilli is the CPU the containers' parent cgroup (the pod VM's
// own, below root) may use: its CFS quota (cgroup v1 cpu.cfs_quota_us, v2
// cpu.max) where it has one, and no more than the guest's CPUs.
func cpuCapacityMilli(root, parent string) int64 {
	capacity := int64(goruntime.NumCPU()) * 1000
	read := func(f string) string {
		b, _ := os.ReadFile(filepath.Join(root, f))
		return strings.TrimSpace(string(b))
	}
	quota, period := read(filepath.Join("cpu", parent, "cpu.cfs_quota_us")), read(filepath.Join("cpu", parent, "cpu.cfs_period_us"))
	if v2 := strings.Fields(read(filepath.Join(parent, "cpu.max"))); quota == "" && len(v2) == 2 {
		quota, period = v2[0], v2[1]
	}
	q, err1 := strconv.ParseInt(quota, 10, 64)
	per, err2 := strconv.ParseInt(period, 10, 64)
	if err1 == nil && err2 == nil && q > 0 && per > 0 {
		capacity = min(capacity, q*1000/per)
	}
	return capacity
}

// updatePhase recomputes the phase (containers' updates do it already).
func (p *Pod) updatePhase() { p.board.update("", func(*guestchannel.ContainerStatus) {}) }

// oomKilled reports whether the kernel's OOM killer acted in the cgroup
// (cgroup v1 memory.oom_control or v2 memory.events).
func oomKilled(cgroupsPath string) bool {
	for _, f := range []string{
		filepath.Join("/sys/fs/cgroup/memory", cgroupsPath, "memory.oom_control"),
		filepath.Join("/sys/fs/cgroup", cgroupsPath, "memory.events"),
	} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, " "); ok && k == "oom_kill" && strings.TrimSpace(v) != "0" {
				return true
			}
		}
	}
	return false
}

// ExecOutput receives an exec's output.
type ExecOutput func(stream string, data []byte)

// ErrNotRunning is returned by Exec for a container without a running
// instance.
var ErrNotRunning = errors.New("not running")

// stateText says what a container's state is in a few words, for an
// answer that needs another state: "terminated with exit code 3, Error",
// "waiting, PodInitializing".
func stateText(s guestchannel.ContainerState) string {
	switch s.Kind {
	case guestchannel.StateTerminated:
		return fmt.Sprintf("terminated with exit code %d, %s", s.ExitCode, s.Reason)
	case guestchannel.StateWaiting:
		if s.Reason == "" {
			return "waiting"
		}
		return "waiting, " + s.Reason
	}
	return s.Kind
}

// Exec runs cmd in container name's namespaces, stdin from stdin (nil:
// none; closed, when an io.Closer, once the command's input ends), output
// to out, and returns its exit code. Cancelling ctx ends the command
// (SIGTERM, then SIGKILL).
func (p *Pod) Exec(ctx context.Context, name string, cmd []string, stdin io.Reader, out ExecOutput) (int32, error) {
	if len(cmd) == 0 {
		return 0, errors.New("command: empty")
	}
	p.mu.Lock()
	inst := p.running[name]
	p.mu.Unlock()
	if inst == nil {
		cs, ok := p.board.Container(name)
		if !ok {
			return 0, fmt.Errorf("container %q is not in the pod", name)
		}
		// The state says why, as the status would: terminated with its
		// exit code, or waiting and for what.
		return 0, fmt.Errorf("container %q is %w (%s)", name, ErrNotRunning, stateText(cs.State))
	}
	// A program the container's files say it cannot run: the runtimes
	// exit 255 for it, with a complaint that differs from one runtime to
	// the other (crun's says "not found in $PATH" of an absolute path),
	// and 255 is also a code a program may exit with itself. Its stderr
	// is held back: on 255 a shell's message and exit code replace the
	// runtime's; else (the program was there after all: made meanwhile)
	// it is sent as it was, at the end.
	cannot := lookProgram(p.container(name), fmt.Sprintf("/proc/%d/root", inst.proc.Pid), cmd[0])
	var held [][]byte
	send := out
	if cannot != nil {
		send = func(stream string, data []byte) {
			if stream == "stderr" {
				held = append(held, data) // one reader sends stderr: no lock
				return
			}
			out(stream, data)
		}
	}
	st, err := p.exec(ctx, inst, cmd, stdin, send)
	if err != nil {
		return 0, err
	}
	code := int32(st.ExitCode())
	if cannot != nil && code == exitRuntimeFailed {
		var message string
		code, message = cannotRun(cmd[0], cannot)
		held = [][]byte{[]byte(message)}
	}
	for _, data := range held {
		out("stderr", data)
	}
	return code, nil
}

// container is the spec of the pod's container (or init container) name.
func (p *Pod) container(name string) *guestchannel.Container {
	spec := p.cfg.Spec
	for _, cs := range [][]guestchannel.Container{spec.InitContainers, spec.Containers} {
		for i := range cs {
			if cs[i].Name == name {
				return &cs[i]
			}
		}
	}
	return nil
}

// rootfs is where container name's root is mounted in the guest.
func (p *Pod) rootfs(name string) string {
	return filepath.Join(p.cfg.StateDir, "rootfs", name)
}

func (p *Pod) exec(ctx context.Context, inst *instance, cmd []string, stdin io.Reader, out ExecOutput) (reaper.Status, error) {
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	pipe := func() (*os.File, *os.File, error) {
		r, w, err := os.Pipe()
		if err == nil {
			files = append(files, r, w)
		}
		return r, w, err
	}
	var inR *os.File
	if stdin != nil {
		r, w, err := pipe()
		if err != nil {
			return reaper.Status{}, err
		}
		inR = r
		go func() {
			_, _ = io.Copy(w, stdin)
			w.Close()
			// The copy ends when the input does or when the command's
			// side of the pipe is gone (it exited, or closed its stdin):
			// closing stdin then tells its writer that nothing more is
			// read, rather than leave it blocked on a write.
			if c, ok := stdin.(io.Closer); ok {
				c.Close()
			}
		}()
	}
	outR, outW, err := pipe()
	if err != nil {
		return reaper.Status{}, err
	}
	errR, errW, err := pipe()
	if err != nil {
		return reaper.Status{}, err
	}
	var readers sync.WaitGroup
	for _, s := range []struct {
		name string
		f    *os.File
	}{{"stdout", outR}, {"stderr", errR}} {
		readers.Add(1)
		go func() {
			defer readers.Done()
			buf := make([]byte, guestchannel.ChunkSize)
			for {
				n, err := s.f.Read(buf)
				if n > 0 {
					out(s.name, append([]byte(nil), buf[:n]...))
				}
				if err != nil {
					return
				}
			}
		}()
	}
	proc, err := p.cfg.Runtime.Exec(inst.id, cmd, inst.as, inR, outW, errW)
	outW.Close()
	errW.Close()
	if inR != nil {
		inR.Close()
	}
	if err != nil {
		return reaper.Status{}, err
	}
	var st reaper.Status
	select {
	case st = <-proc.Done:
	case <-ctx.Done():
		// The command and what it started (proctree.go): SIGTERM,
		// then SIGKILL to whatever of them is left after the grace.
		tree := treeOf(proc.Pid)
		tree.signal(unix.SIGTERM)
		deadline := time.Now().Add(2 * time.Second)
		select {
		case st = <-proc.Done:
		case <-time.After(time.Until(deadline)):
			_ = proc.Signal(unix.SIGKILL)
			st = <-proc.Done
		}
		tree.killAfter(deadline)
	}
	readers.Wait()
	return st, nil
}
