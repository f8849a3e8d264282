package hostagent

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/vspc"
)

// Concentrator is the host side of pod VMs' network serial ports: where a
// hypervisor host has no agent of its own to take the guests' vsock
// connections (a vSphere host runs no podvisor code), each pod VM gets a
// serial port whose backing is a network connection from its host to the
// concentrator (VirtualSerialPortURIBackingInfo, direction client: the
// host dials). One listener serves every host agent of the process: a
// channel arrives without saying which host sent it, so the concentrator
// reads its hello, checks the pod's channel token, finds the pod's record
// and hands the channel to the agent of the host the pod is placed on.
//
// Where the ports name the concentrator as their proxy (Proxy set: a
// telnet:// address, ProxyURI in the port's backing), it is the ports'
// virtual serial port concentrator (vSPC): each host connection opens with
// the VMware telnet extension, in which the host names the VM, and a
// vMotion moves the port from the source host's connection to the
// target's without ending the line (package vspc). vSphere vMotions a VM
// whose network serial port connects to a remote system only through such
// a proxy.
//
// A serial port stays open in the guest while the connection behind it is
// made again (a host agent restarted, the VM moved to another host), so the
// agent cannot see a new connection: the concentrator sends a resync first
// on every channel it accepts, and the agent answers with hello and a full
// status. Lines before the hello that do not decode (the tail of a frame a
// reconnection cut) are skipped.
type Concentrator struct {
	// Listener receives the hosts' connections (TCP; TLS where the
	// listener is a TLS one).
	Listener net.Listener
	// Key checks each hello's channel token (guestchannel.ChannelToken):
	// anyone who reaches the port could say hello, only the pod's VM
	// knows its token. Required.
	Key []byte
	// Agents are the host agents of this process, by host name; Add adds
	// one while the concentrator runs.
	Agents map[string]*Service
	mu     sync.Mutex
	lines  map[string]*line // by pod record key
	// HelloTimeout is how long a line may stay silent before it is asked
	// for a hello again (default 10s).
	HelloTimeout time.Duration
	// WriteTimeout bounds every write to a line (DefaultWriteTimeout when
	// 0): a line whose guest does not read for that long is closed, as an
	// agent's socket is (Config.WriteTimeout).
	WriteTimeout time.Duration
	// MaxGreeting bounds the lines connected at once that have not said
	// hello yet; more are closed at once (DefaultMaxGreeting).
	MaxGreeting int
	// Proxy, when set, makes the concentrator the ports' proxy: every
	// connection opens with the VMware telnet extension (vspc.Proxy).
	Proxy *vspc.Proxy
	Log   *slog.Logger
}

// ListenConcentrator loads the channel key and listens where cfg says
// (TLS with cfg's certificate), for agents (by host).
func ListenConcentrator(cfg ConcentratorConfig, agents map[string]*Service, log *slog.Logger) (*Concentrator, error) {
	key, err := guestchannel.LoadChannelKey(cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("hostagent concentrator: %w", err)
	}
	var tlsConf *tls.Config
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("hostagent concentrator: %s, %s: %w", EnvConcentratorTLSCert, EnvConcentratorTLSKey, err)
		}
		tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("hostagent concentrator: %w", err)
	}
	if tlsConf != nil {
		ln = tls.NewListener(ln, tlsConf)
	}
	c := &Concentrator{Listener: ln, Key: key, Agents: agents, Log: log}
	if cfg.Proxy {
		c.Proxy = &vspc.Proxy{}
	}
	return c, nil
}

// Limits on lines that have not said hello yet: anyone who reaches the
// port can open one.
const (
	// maxMalformedBeforeHello bounds the lines that do not decode before a
	// hello (what a reconnection cut, a console's noise).
	maxMalformedBeforeHello = 64
	// helloBudget bounds the bytes a line sends before its first hello.
	helloBudget = 256 << 10
	// DefaultMaxGreeting is Concentrator.MaxGreeting's default.
	DefaultMaxGreeting = 256
)

// errTooMuchBeforeHello ends a line that sent helloBudget without a hello.
var errTooMuchBeforeHello = errors.New("too much before a hello")

// budgetConn is a line whose reads are bounded until its hello is in.
type budgetConn struct {
	net.Conn
	left atomic.Int64 // bytes it may still send; below 0, no bound
}

func (b *budgetConn) Read(p []byte) (int, error) {
	left := b.left.Load()
	if left == 0 {
		return 0, errTooMuchBeforeHello
	}
	if left > 0 && int64(len(p)) > left {
		p = p[:left]
	}
	n, err := b.Conn.Read(p)
	if left > 0 {
		b.left.Add(-int64(n))
	}
	return n, err
}

// Run accepts channels until ctx ends (or the listener fails for good),
// then closes the listener and ends the lines it serves.
func (c *Concentrator) Run(ctx context.Context) error {
	if len(c.Key) < guestchannel.ChannelKeySize {
		return fmt.Errorf("hostagent concentrator: channel key of %d bytes, want %d", len(c.Key), guestchannel.ChannelKeySize)
	}
	log := c.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("service", Name, "concentrator", c.Listener.Addr().String())
	max := c.MaxGreeting
	if max <= 0 {
		max = DefaultMaxGreeting
	}
	greeting := make(chan struct{}, max)
	var wg sync.WaitGroup
	defer wg.Wait()
	// Whatever ends Run ends the lines too.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(wctx, func() { c.Listener.Close() })
	defer stop()
	wg.Go(func() { c.followMoves(wctx, log) })
	log.Info("guest channel concentrator listening")
	backoff := 5 * time.Millisecond
	for {
		nc, err := c.Listener.Accept()
		if err != nil {
			if wctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ECONNABORTED) {
				// Out of descriptors for now: as net/http does, wait and
				// accept again.
				log.Warn("concentrator: accept", "err", err, "retry_in", backoff)
				select {
				case <-time.After(backoff):
				case <-wctx.Done():
					return nil
				}
				backoff = min(2*backoff, time.Second)
				continue
			}
			return fmt.Errorf("hostagent concentrator: accept: %w", err)
		}
		backoff = 5 * time.Millisecond
		select {
		case greeting <- struct{}{}:
		default:
			log.Warn("concentrator: too many lines waiting for their hello; one refused", "peer", nc.RemoteAddr().String(), "max", max)
			nc.Close()
			continue
		}
		wg.Go(func() {
			greeted := sync.OnceFunc(func() { <-greeting })
			defer greeted()
			llog := log.With("peer", nc.RemoteAddr().String())
			var line net.Conn = nc
			var vm *vspc.Identity
			if c.Proxy != nil {
				vc, err := c.Proxy.AcceptContext(wctx, nc)
				switch {
				case errors.Is(err, vspc.ErrPeered):
					llog.Info("guest channel: a vMotion's target host took over a line")
					return
				case err != nil:
					llog.Warn("guest channel refused", "err", err)
					return
				}
				id := vc.Identity()
				line, vm, llog = vc, &id, llog.With("vm", id.Name)
			}
			bc := &budgetConn{Conn: line}
			bc.left.Store(helloBudget)
			c.serve(wctx, bc, vm, greeted, llog)
		})
	}
}

// serve runs one line: its hello, then the sessions of the agents it is
// routed to, until it closes. greeted frees its place among the lines
// waiting for a hello. vm is what the line's host said of its VM, where
// the concentrator is the ports' proxy.
func (c *Concentrator) serve(ctx context.Context, bc *budgetConn, vm *vspc.Identity, greeted func(), log *slog.Logger) {
	conn := guestchannel.NewConn(bc)
	conn.SetWriteTimeout(cmp.Or(c.WriteTimeout, DefaultWriteTimeout))
	defer conn.Close()
	// The concentrator's end ends its lines, whatever agent serves them.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	h, err := c.hello(ctx, bc, conn)
	for err == nil {
		bc.left.Store(-1)
		greeted()
		agent, rec, rerr := c.route(ctx, h)
		if rerr == nil {
			rerr = sameVM(vm, rec)
		}
		if rerr != nil && !errors.Is(rerr, ErrRefused) && ctx.Err() == nil {
			// No agent for the pod's host yet (a restart of a process
			// serving every host: its lines come back before its agents),
			// or the bus did not answer: the line is kept, asked again.
			log.Info("guest channel not routed yet", "err", rerr)
			select {
			case <-time.After(c.helloTimeout()):
			case <-ctx.Done():
				return
			}
			h, err = c.hello(ctx, bc, conn)
			continue
		}
		if rerr != nil {
			err = rerr
			break
		}
		l := &line{nc: bc, host: rec.Host}
		key := events.PodRecordKey(rec.Namespace, rec.Name)
		c.track(key, l)
		// A move recorded between the route and the tracking is not seen
		// by followMoves: look once more.
		if now, err := agent.record(ctx, rec.Namespace, rec.Name); err == nil && now.Host != "" && now.Host != rec.Host {
			c.markMoved(key, l)
		}
		next := agent.serveGreeted(ctx, conn, h, rec, l)
		c.untrack(key, l)
		switch {
		case next == nil:
			return
		case l.moved.Load():
			// The pod was placed on another host: ask the line again, and
			// route the hello to that host's agent with a full status.
			h, err = c.hello(ctx, bc, conn)
		default:
			// The guest booted again behind a line that stayed connected.
			h, err = *next, c.check(*next)
		}
	}
	log.Warn("guest channel refused", "err", err)
	_ = conn.Send(guestchannel.TypeError, "", guestchannel.Error{Message: err.Error()})
}

func (c *Concentrator) helloTimeout() time.Duration {
	if c.HelloTimeout <= 0 {
		return 10 * time.Second
	}
	return c.HelloTimeout
}

// hello asks for a hello (resync) and reads it, skipping what does not
// decode and anything but a hello; it checks the channel token. A line is
// silent until its guest's agent runs (a host connects the port at
// power-on, before the guest has booted), and what reaches the port before
// the agent opens it is lost: so the resync is sent again after every
// HelloTimeout of silence, for as long as the line stays connected. Only
// lines that do not decode count against the line
// (maxMalformedBeforeHello); before the first hello the bytes it may send
// are bounded too (helloBudget).
func (c *Concentrator) hello(ctx context.Context, nc net.Conn, conn *guestchannel.Conn) (guestchannel.Hello, error) {
	var h guestchannel.Hello
	stop := context.AfterFunc(ctx, func() { _ = nc.SetReadDeadline(time.Now()) })
	defer stop()
	ask := func() error {
		_ = nc.SetReadDeadline(time.Now().Add(c.helloTimeout()))
		if err := conn.Send(guestchannel.TypeResync, "", nil); err != nil {
			return fmt.Errorf("resync: %w", err)
		}
		return nil
	}
	if err := ask(); err != nil {
		return h, err
	}
	for malformed := 0; ; {
		env, err := conn.Receive()
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil:
			if err := ask(); err != nil { // silent so far: ask again
				return h, err
			}
		case errors.Is(err, guestchannel.ErrMalformedFrame):
			if malformed++; malformed > maxMalformedBeforeHello {
				return h, fmt.Errorf("%d lines that do not decode and no hello", malformed)
			}
		case err != nil:
			return h, fmt.Errorf("read hello: %w", err)
		case env.Type == guestchannel.TypeHello:
			if err := env.Decode(&h); err != nil {
				return h, err
			}
			_ = nc.SetReadDeadline(time.Time{})
			return h, c.check(h)
		}
		// Anything else is the rest of an earlier session on the line.
	}
}

// check checks a hello that arrived through the concentrator: it must name
// its pod and carry the pod's channel token.
func (c *Concentrator) check(h guestchannel.Hello) error {
	switch {
	case h.PodUID == "" || h.BootID == "":
		return errors.New("hello without pod uid or boot id")
	case h.Namespace == "" || h.Name == "":
		return fmt.Errorf("hello of pod uid %s without its namespace and name (a channel through the concentrator must name its pod)", h.PodUID)
	case h.ChannelToken == "":
		return fmt.Errorf("hello of pod %s/%s without a channel token", h.Namespace, h.Name)
	case !guestchannel.CheckChannelToken(c.Key, h.ChannelToken, h.PodUID, h.Namespace, h.Name):
		return fmt.Errorf("hello of pod %s/%s: the channel token is not the pod's", h.Namespace, h.Name)
	}
	return nil
}

// sameVM checks a hello routed to rec against what the line's host said of
// its VM: a port's line may say only the hello of the pod of the VM it
// belongs to (a template's standby taken over by a forked child greets as
// the child on the child's port). A record that does not name its VM yet
// is not checked. This catches a line and a pod that do not match; it
// proves nothing against whoever reaches the port, who can say any name.
func sameVM(vm *vspc.Identity, rec *events.PodRecord) error {
	if vm == nil || vm.Name == "" || rec.VMName == "" || vm.Name == rec.VMName {
		return nil
	}
	return fmt.Errorf("hello of pod %s on the port of VM %s, whose VM is %s: %w", rec.Key(), vm.Name, rec.VMName, ErrRefused)
}

// line is a channel an agent serves, as the concentrator follows it.
type line struct {
	nc   net.Conn
	host string // the host its pod was placed on when it was routed
	// moved is set when the pod's record names another host: the line's
	// read is interrupted (a deadline in the past) and the serving agent
	// gives the line back.
	moved atomic.Bool
}

func (c *Concentrator) track(key string, l *line) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lines == nil {
		c.lines = map[string]*line{}
	}
	c.lines[key] = l
}

func (c *Concentrator) untrack(key string, l *line) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lines[key] == l {
		delete(c.lines, key)
	}
}

// markMoved gives back l, the line of the pod of key, to be routed again:
// its read is interrupted (a deadline in the past). It does nothing to a
// line that key no longer names, so that a later session on the same
// connection is never cut.
func (c *Concentrator) markMoved(key string, l *line) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lines[key] != l || l.moved.Load() {
		return
	}
	l.moved.Store(true)
	_ = l.nc.SetReadDeadline(time.Now())
}

// followMoves watches the pod records (keys only) and gives back the line
// of a pod whose record names another host than the one its line was
// routed to: a migrated pod's line must reach the agent of its new host,
// which serves its logs and exec. A relocation makes the hosts connect the
// line again, but possibly before the record says where the pod is now.
// The watch is made again if it fails or ends.
func (c *Concentrator) followMoves(ctx context.Context, log *slog.Logger) {
	for delay := time.Second; ctx.Err() == nil; delay = min(2*delay, 30*time.Second) {
		if _, some := c.agents(""); some != nil {
			if err := c.watchMoves(ctx, some); err != nil && ctx.Err() == nil {
				log.Warn("concentrator: following the pods' moves", "err", err, "retry_in", delay)
			} else {
				delay = time.Second
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
	}
}

// watchMoves is one watch of followMoves, through agent's bucket handle.
func (c *Concentrator) watchMoves(ctx context.Context, agent *Service) error {
	w, err := agent.pods.WatchAll(ctx, jetstream.MetaOnly(), jetstream.UpdatesOnly(), jetstream.IgnoreDeletes())
	if err != nil {
		return err
	}
	defer w.Stop()
	for e := range w.Updates() {
		if e == nil {
			continue
		}
		c.mu.Lock()
		l := c.lines[e.Key()]
		c.mu.Unlock()
		if l == nil || l.moved.Load() {
			continue
		}
		ns, name, _ := cutKey(e.Key())
		rec, err := agent.record(ctx, ns, name)
		if err != nil || rec.Host == "" || rec.Host == l.host {
			continue
		}
		c.markMoved(e.Key(), l)
	}
	return errors.New("the watch ended")
}

// Add hands the channels of host's pods to agent from now on.
func (c *Concentrator) Add(host string, agent *Service) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.Agents == nil {
		c.Agents = map[string]*Service{}
	}
	c.Agents[host] = agent
}

// AgentOf is the agent of host, and any agent of the process (every agent
// reads the same buckets): what RunDeletes hands deletes to.
func (c *Concentrator) AgentOf(host string) (of, some *Service) { return c.agents(host) }

// agents returns the agent of host, and any agent (every agent reads the
// same bucket).
func (c *Concentrator) agents(host string) (of, some *Service) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, a := range c.Agents {
		some = a
		break
	}
	return c.Agents[host], some
}

// route finds the pod's record and the agent of the host it is placed on.
// A template's guest has no pod record: the provisioner's record of the
// template says its host, whose agent reports it.
func (c *Concentrator) route(ctx context.Context, h guestchannel.Hello) (*Service, *events.PodRecord, error) {
	_, some := c.agents("")
	if some == nil {
		return nil, nil, errors.New("no host agent runs here yet")
	}
	if h.Namespace == events.TemplateNamespace {
		host, err := some.templateHost(ctx, h.Name)
		if err != nil {
			return nil, nil, err
		}
		if some, _ = c.agents(host); some == nil {
			return nil, nil, fmt.Errorf("template %s runs on %q, which no host agent of this process serves (yet)", h.Name, host)
		}
	}
	rec, err := some.findPod(ctx, h)
	if err != nil {
		return nil, nil, err
	}
	agent, _ := c.agents(rec.Host)
	if agent == nil {
		// Not a refusal: a process serving every host adds the host's
		// agent once the host is recorded.
		return nil, nil, fmt.Errorf("pod %s is placed on %q, which no host agent of this process serves (yet)", rec.Key(), rec.Host)
	}
	return agent, rec, nil
}
