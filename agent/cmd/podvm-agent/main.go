// Command podvm-agent is the pod VM agent: PID 1 of a pod VM's guest. It
// mounts the VM's disks, runs the pod's containers with an OCI runtime and
// reports them to the host over the guest channel. See package doc of
// github.com/podvisor/podvisor/agent for the whole picture.
//
//	podvm-agent --boot-config /path/boot.json [--log-level debug]
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/agent/bootconfig"
	"github.com/podvisor/podvisor/agent/channel"
	"github.com/podvisor/podvisor/agent/diskcrypt"
	"github.com/podvisor/podvisor/agent/disks"
	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/internal/reaper"
	"github.com/podvisor/podvisor/agent/logs"
	"github.com/podvisor/podvisor/agent/nics"
	"github.com/podvisor/podvisor/agent/runtime"
	"github.com/podvisor/podvisor/agent/supervisor"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	bootFile := flag.String("boot-config", "", "boot configuration JSON (BootConfig with the pod spec)")
	level := flag.String("log-level", "info", "debug, info, warn or error")
	flag.Parse()
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(os.Stderr, "podvm-agent: --log-level: %v\n", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv}))
	if *bootFile == "" {
		fmt.Fprintln(os.Stderr, "podvm-agent: --boot-config: required")
		os.Exit(2)
	}
	if err := run(log, bootconfig.FileSource{Path: *bootFile}); err != nil {
		log.Error("agent", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, src bootconfig.Source) error {
	begun := time.Now()
	reaper.Run()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Power-off: also what ends a wait for the disk key.
	stopCtx, stopSignals := signal.NotifyContext(ctx, unix.SIGTERM, unix.SIGINT)
	defer stopSignals()

	cfg, err := src.Load(ctx)
	if err != nil {
		return err
	}
	var sb *standby
	if cfg.Boot.Takeover != "" {
		if sb, cfg, err = standBy(stopCtx, log, cfg); err != nil {
			if stopCtx.Err() != nil {
				return nil // a standby powered off before any VM took it over
			}
			return fmt.Errorf("standby: %w", err)
		}
		begun = time.Now() // a standby's boot counts from its takeover
	} else if err := initGuest(log, hostname(cfg.Spec), cfg.Boot.StateDir); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	// A template's VM runs the template's pod until a forked child's
	// configuration shows (watcher), then the child's, on the same guest.
	for {
		next, err := runPod(ctx, stopCtx, log, cfg, sb, begun)
		if next == nil {
			return err
		}
		cfg, sb, begun = next.cfg, next.standby, time.Now()
	}
}

// handedOver is what a template's pod leaves to the forked child that
// takes its VM: the child's configuration and the disks still mounted.
type handedOver struct {
	cfg     *bootconfig.Config
	standby *standby
}

// runPod runs cfg's pod until the guest is powered off (stopCtx), or, in a
// template's VM, until a forked child's configuration shows: then it stops
// the template's containers and hands the guest over.
func runPod(ctx, stopCtx context.Context, log *slog.Logger, cfg *bootconfig.Config, sb *standby, begun time.Time) (*handedOver, error) {
	// Where a boot's time goes (docs/bench.md): init, then disks (in
	// start), then each container's start (package supervisor).
	log.Info("boot phase", "phase", "init", "ms", ms(time.Since(begun)))
	a := &agent{board: supervisor.NewBoard(cfg.Spec), spec: cfg.Spec, log: log, standby: sb, begun: begun, cards: guestCards}
	defer func() {
		// A standby's disks the pod never took (it ended before start
		// mounted its disks): nothing else unmounts them.
		if a.standby != nil {
			if err := a.standby.mounted.Unmount(); err != nil {
				log.Warn("standby: disks not unmounted", "err", err)
			}
		}
	}()
	if fd, err := cfg.Boot.UpdatesFD(); err != nil {
		return nil, err
	} else if fd >= 0 {
		a.updates = readUpdates(fd, log.With("part", "updates"))
	}
	var w *watcher
	var forked <-chan struct{} // nil: never
	if watching(cfg) {
		w = newWatcher(cfg, log.With("part", "watch"))
		a.updates, forked = w.updates, w.forked
	}
	if cfg.Spec.Encryption != nil {
		var err error
		if a.keys, err = newKeyWait(cfg.Boot.VMUUID, cfg.Spec.Encryption.Nonce, log.With("part", "diskkey")); err != nil {
			return nil, err
		}
	}
	podCtx, endPod := context.WithCancel(ctx)
	defer endPod()
	srv := &channel.Server{
		Addr: cfg.Boot.Channel,
		Hello: guestchannel.Hello{Protocol: guestchannel.Protocol, AgentVersion: version,
			PodUID: cfg.Spec.UID, Namespace: cfg.Spec.Namespace, Name: cfg.Spec.Name,
			VMUUID: cfg.Boot.VMUUID, BootID: newBootID(), ChannelToken: cfg.Spec.ChannelToken,
			// Logs are served here (agent.Logs), so the log store's
			// capabilities are announced here too.
			Capabilities: []string{guestchannel.CapLogsFromEnd, guestchannel.CapLogsAcrossBoots, guestchannel.CapLogsTimestamps}},
		Pod: a, Log: log.With("part", "channel"),
	}
	if w != nil && cfg.Spec.Template {
		srv.BeforeGreet = w.beforeGreet
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Run(podCtx)
	}()
	if w != nil {
		go w.run(podCtx)
	}

	mounted, unlocked, err := a.start(stopCtx, cfg)
	if err != nil {
		log.Error("pod cannot start", "err", err)
		a.board.SetPending("ContainerCreating", err.Error())
	}
	select {
	case <-forked:
		// The template's channel ends before anything else is done, so
		// that it sends nothing more. It may have sent some already: the
		// statuses its session pushed between the child's resume and the
		// read that found the child can reach the child's line (a hello
		// only if the clone caught a greeting between its read of the
		// source and its send: beforeGreet reads first). The child's own
		// hello and full status follow on its channel. A template has no
		// encrypted disk to lock (PodSpec.Validate refuses one): unlocked
		// is nil here.
		endPod()
		<-served
		return a.handOver(cfg, w.child, mounted), nil
	case <-stopCtx.Done():
	}
	log.Info("shutting down")
	grace := time.Duration(cfg.Spec.TerminationGracePeriodSeconds) * time.Second
	a.Stop(grace)
	var errs []error
	if pod := a.currentPod(); pod != nil {
		errs = append(errs, pod.Close())
	}
	if unlocked != nil {
		errs = append(errs, unlocked.Lock())
	}
	if mounted != nil {
		errs = append(errs, mounted.Unmount())
	}
	endPod()
	<-served
	return nil, errors.Join(errs...)
}

// start mounts the disks (an encrypted ephemeral disk is opened once its
// key has come, or start gives up when ctx ends), creates the pod's
// containers, then configures the NICs and starts the containers: what
// does not need the network is done before it (docs/architecture.md, "Pod
// VM agent").
func (a *agent) start(ctx context.Context, cfg *bootconfig.Config) (*disks.Mounted, *diskcrypt.Unlocked, error) {
	state := cfg.Boot.StateDir
	// The disks first, whatever fails after: a standby's (a.standby) are
	// then the caller's to unmount or to hand over, as any mounted here.
	t := time.Now()
	mounted, err := a.mount(cfg)
	if err != nil {
		return nil, nil, err
	}
	a.log.Info("boot phase", "phase", "disks", "ms", ms(time.Since(t)), "total_ms", ms(time.Since(a.begun)), "formatted", mounted.Formatted)
	rt, err := runtime.New(cfg.Boot.Runtime, filepath.Join(state, "runtime"))
	if err != nil {
		return mounted, nil, err
	}
	a.log.Info("runtime", "name", rt.Name(), "path", rt.Bin)
	var unlocked *diskcrypt.Unlocked
	if a.keys != nil {
		if unlocked, err = a.unlockEphemeral(ctx, mounted); err != nil {
			return mounted, nil, err
		}
	}
	pod, err := supervisor.New(supervisor.Config{
		Spec: cfg.Spec, Board: a.board, Runtime: rt, Disks: mounted, StateDir: state,
		CgroupParent: cfg.Boot.CgroupParent, Backoff: cfg.RestartBackoff(), MaxBackoff: cfg.MaxRestartBackoff(),
		LogMaxBytes: cfg.LogMaxBytes(), VolumeCheck: cfg.VolumeCheck(), Log: a.log.With("part", "supervisor"),
	})
	if err != nil {
		return mounted, unlocked, err
	}
	a.mu.Lock()
	if a.stopping {
		a.mu.Unlock()
		_ = pod.Close()
		return mounted, unlocked, nil
	}
	a.pod = pod
	a.mu.Unlock()
	if cfg.Spec.NetworkPending {
		// The network is awaited (a fork made before its attach): the
		// containers' create overlaps that wait. A pod whose cards are
		// there at boot waits for nothing, and `run` costs less than a
		// `create` and a `start` (measured: about 45 ms per pod idle).
		pod.Create()
	}
	go func() {
		// From here on the pod's Run (or Abandon) ends it: a stop waits
		// for one of them.
		if err := a.network(pod, cfg); err != nil {
			if errors.Is(err, errStopping) {
				pod.Abandon()
				return
			}
			a.log.Error("pod cannot start", "err", err)
			a.board.SetPending("ContainerCreating", err.Error())
			pod.Abandon()
			return
		}
		pod.Run()
	}()
	return mounted, unlocked, nil
}

// errStopping: the pod was stopped while it waited for its network.
var errStopping = errors.New("stopped while waiting for the network")

// network configures the pod's NICs. A pod whose spec waits for its
// network (NetworkPending: forked before its network was attached) first
// waits for the spec that has it, on the hypervisor's updates, then binds
// the cards again: the attach that came with that spec gave them the
// pod's MACs, which a driver reads only when it binds, and the spec's
// NICs are found by those MACs.
func (a *agent) network(pod *supervisor.Pod, cfg *bootconfig.Config) error {
	spec := cfg.Spec
	t := time.Now()
	if spec.NetworkPending {
		a.log.Info("waiting for the pod's network")
		next, err := a.awaitNetwork(pod, spec)
		if err != nil {
			return err
		}
		if err := pod.SetDNS(next.DNS); err != nil {
			return err
		}
		spec = next
		a.log.Info("network attached", "waited_ms", ms(time.Since(t)))
		t = time.Now()
		a.rebindCards("network attached")
	}
	if err := a.cards.configure(spec.NICs); err != nil {
		return err
	}
	a.log.Info("boot phase", "phase", "network", "ms", ms(time.Since(t)), "nics", len(spec.NICs))
	return nil
}

// awaitNetwork waits for an update of the pod's spec that no longer waits
// for its network, or for the pod to be stopped (errStopping).
func (a *agent) awaitNetwork(pod *supervisor.Pod, spec *guestchannel.PodSpec) (*guestchannel.PodSpec, error) {
	if a.updates == nil {
		return nil, errors.New("network: the spec waits for the pod's network and the boot configuration names no updates to bring it")
	}
	for {
		select {
		case <-pod.Stopping():
			return nil, errStopping
		case u, ok := <-a.updates:
			switch {
			case !ok:
				return nil, errors.New("network: the hypervisor's updates ended before the pod's network came")
			case u.UID != spec.UID:
				a.log.Warn("spec update of another pod ignored", "uid", u.UID)
			case !u.NetworkPending:
				return u, nil
			}
		}
	}
}

// readUpdates delivers the specs the hypervisor writes on fd (one JSON
// document a line, the guestinfo value or a string holding it) until it
// closes it; a malformed one is logged and skipped.
func readUpdates(fd int, log *slog.Logger) <-chan *guestchannel.PodSpec {
	out := make(chan *guestchannel.PodSpec, 4)
	f := os.NewFile(uintptr(fd), "updates")
	go func() {
		defer close(out)
		defer f.Close()
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			raw := sc.Bytes()
			var asString string
			if json.Unmarshal(raw, &asString) == nil {
				raw = []byte(asString)
			}
			spec, err := guestchannel.UnmarshalSpec(raw)
			if err != nil {
				log.Warn("spec update refused", "err", err)
				continue
			}
			out <- spec
		}
	}()
	return out
}

// agent serves the channel from the supervisor, also before the pod exists
// (disks still mounting) or when it could not start.
type agent struct {
	board   *supervisor.Board
	spec    *guestchannel.PodSpec
	log     *slog.Logger
	keys    *keyWait // nil unless the ephemeral disk is encrypted
	standby *standby // the disks a standby mounted, until the pod has them
	// updates are the hypervisor's updates of the spec (nil: none).
	updates  <-chan *guestchannel.PodSpec
	begun    time.Time
	cards    cards
	mu       sync.Mutex
	pod      *supervisor.Pod
	stopping bool
}

// cards is what the agent does to the guest's network cards: guestCards,
// or a test's stand-in.
type cards struct {
	// configure gives the cards the spec's addresses (configureNICs).
	configure func([]guestchannel.NIC) error
	// rebind binds the PCI cards to their drivers again and says how
	// many (reprobeNICs).
	rebind func() (int, error)
}

var guestCards = cards{configure: configureNICs, rebind: reprobeNICs}

// rebindCards binds the guest's cards again (cards.rebind), so that each
// reads the address the hypervisor gives it now; after says what changed
// them. A card not bound again is logged, not fatal: configuring the
// spec's NICs then says which card is missing.
func (a *agent) rebindCards(after string) {
	if n, err := a.cards.rebind(); err != nil {
		a.log.Warn(after+": network cards not bound again", "bound", n, "err", err)
	} else {
		a.log.Info(after+": network cards bound again", "cards", n)
	}
}

var _ channel.Pod = (*agent)(nil)

func (a *agent) currentPod() *supervisor.Pod {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.pod
}

func (a *agent) Status() (guestchannel.Status, <-chan struct{}) { return a.board.Snapshot() }
func (a *agent) NextSeq() uint64                                { return a.board.NextSeq() }

func (a *agent) Logs(ctx context.Context, req guestchannel.LogsRequest, send func([]byte) error) error {
	pod := a.currentPod()
	if pod == nil {
		return errors.New("the pod's containers have not started")
	}
	if !a.known(req.Container) {
		return fmt.Errorf("container %q is not in the pod", req.Container)
	}
	if err := req.Validate(); err != nil {
		return err
	}
	if cs, _ := a.board.Container(req.Container); !req.Previous &&
		cs.State.Kind == guestchannel.StateWaiting && cs.LastState == nil && cs.RestartCount == 0 {
		// Never started in this boot, so there is no log to read (an
		// empty answer would say it ran and wrote nothing); the kubelet
		// answers the same. A follow waits for its first instance,
		// unless the pod has ended (an init container failed): none
		// will come.
		status, _ := a.board.Snapshot()
		if status.Phase == guestchannel.PhaseFailed || status.Phase == guestchannel.PhaseSucceeded {
			return fmt.Errorf("container %q never started (%s) and will not: the pod has %s", req.Container, cs.State.Reason, status.Phase)
		}
		if !req.Follow {
			return fmt.Errorf("container %q is waiting to start: %s", req.Container, cs.State.Reason)
		}
	}
	return pod.Logs().Read(ctx, req.Container, logs.ChannelRequest(req), guestchannel.ChunkSize, send)
}

func (a *agent) Exec(ctx context.Context, req guestchannel.ExecRequest, stdin io.Reader, out func(string, []byte)) (int32, error) {
	pod := a.currentPod()
	if pod == nil {
		return 0, errors.New("the pod's containers have not started")
	}
	return pod.Exec(ctx, req.Container, req.Command, stdin, out)
}

// Stop stops the pod within grace, never longer than the pod's own
// terminationGracePeriodSeconds (0: the pod's).
func (a *agent) Stop(grace time.Duration) guestchannel.Stopped {
	podGrace := time.Duration(a.spec.TerminationGracePeriodSeconds) * time.Second
	if grace <= 0 || grace > podGrace {
		grace = podGrace
	}
	a.mu.Lock()
	a.stopping = true
	pod := a.pod
	a.mu.Unlock()
	var stopped guestchannel.Stopped
	if pod != nil {
		stopped = pod.Stop(grace)
	}
	// No pod now starts (start sees stopping), and a started one has
	// ended: the phase is final before the host hears the stop is done.
	a.board.Stopped()
	return stopped
}

func (a *agent) known(name string) bool {
	for _, cs := range [][]guestchannel.Container{a.spec.InitContainers, a.spec.Containers} {
		for _, c := range cs {
			if c.Name == name {
				return true
			}
		}
	}
	return false
}

func hostname(s *guestchannel.PodSpec) string {
	if s.Hostname != "" {
		return s.Hostname
	}
	return s.Name
}

func newBootID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// routeHandle opens netlink for links, addresses and routes alone: a
// handle of every family (netlink.NewHandle()) also opens XFRM, which a
// pod VM's kernel has only as a module it does not load, and fails there
// with "protocol not supported".
func routeHandle() (*netlink.Handle, error) { return netlink.NewHandle(unix.NETLINK_ROUTE) }

// nicWait bounds the wait for a card the hypervisor has not presented yet.
const nicWait = 10 * time.Second

// configureNICs gives the guest's cards the addresses and default route
// of the spec (package nics); a pod whose network cannot be configured
// does not start, and its status says why.
func configureNICs(list []guestchannel.NIC) error {
	if len(list) == 0 {
		return nil
	}
	h, err := routeHandle()
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	defer h.Close()
	if err := nics.Configure(h, list, nicWait); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
