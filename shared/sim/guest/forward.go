package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/vishvananda/netns"

	"github.com/podvisor/podvisor/shared/sim/segment"
)

// The hypervisor's way into a guest's network (simulator only). A
// simulated guest's network namespace is reachable from this machine only
// through its segment's bridge, which carries no address here; a port of
// a service inside a guest is reached the way a load balancer in front of
// a VM reaches it on vSphere: Publish listens on this machine's loopback
// and dials every connection into the guest's namespace, at the guest's
// own loopback. The guest is looked up by its VM's key at each connection,
// so a published port follows the VM across power cycles (each boot is a
// new namespace).

// DialGuest dials addr from inside the network namespace of the VM's
// running guest: the socket is created there and stays there.
func (m *Manager) DialGuest(ctx context.Context, key, network, addr string) (net.Conn, error) {
	m.mu.Lock()
	g, ok := m.guests[key]
	var pid int
	if ok {
		pid = g.cmd.Process.Pid
	}
	m.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("guest of %s: not running", key)
	}
	ns, err := netns.GetFromPid(pid)
	if err != nil {
		return nil, fmt.Errorf("guest of %s: network namespace: %w", key, err)
	}
	defer ns.Close()
	var c net.Conn
	err = segment.InNamespace(ns, func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("guest of %s: dial %s: %w", key, addr, err)
	}
	return c, nil
}

// A Published port: connections to Addr (this machine's loopback) reach
// port Port on the loopback of the VM's guest, whichever boot of it runs.
type Published struct {
	Addr string
	Key  string
	Port int

	listener
}

// forwarder is what the manager closes on its Close.
type forwarder interface{ Close() }

// listener accepts on this machine's loopback and splices each connection
// with the one its dial makes, tracking them so that Close ends them.
type listener struct {
	m     *Manager
	self  forwarder
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// listen opens the listener, at address at of this machine's loopback
// when that is free (a published port keeps its address when it is
// published again after a restart), else at any free port, and registers
// self with the manager.
func (m *Manager) listen(l *listener, self forwarder, at string) error {
	ln, err := listenLoopback(at)
	if err != nil {
		return err
	}
	*l = listener{m: m, self: self, ln: ln, conns: map[net.Conn]struct{}{}}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		ln.Close()
		return errClosed
	}
	if m.published == nil {
		m.published = map[forwarder]struct{}{}
	}
	m.published[self] = struct{}{}
	return nil
}

// listenLoopback listens at at when it is an address of this machine's
// loopback that is free, else at a free port of 127.0.0.1.
func listenLoopback(at string) (net.Listener, error) {
	if host, _, err := net.SplitHostPort(at); err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
			if ln, err := net.Listen("tcp", at); err == nil {
				return ln, nil
			}
		}
	}
	return net.Listen("tcp", "127.0.0.1:0")
}

// Publish makes port of the VM's guest reachable on this machine's
// loopback (see Published). It runs until Close, or the manager's Close.
// The guest need not run yet: a connection made while it does not is
// closed at once.
func (m *Manager) Publish(key string, port int) (*Published, error) {
	return m.PublishAt(key, port, "")
}

// PublishAt is Publish at address at of this machine's loopback when it
// is free ("" or taken: any free port).
func (m *Manager) PublishAt(key string, port int, at string) (*Published, error) {
	if port <= 0 || port > 65535 {
		return nil, fmt.Errorf("publish a port of %s: port %d: want 1 to 65535", key, port)
	}
	p := &Published{Key: key, Port: port}
	if err := m.listen(&p.listener, p, at); err != nil {
		return nil, fmt.Errorf("publish port %d of %s: %w", port, key, err)
	}
	p.Addr = p.ln.Addr().String()
	target := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	p.wg.Go(func() {
		p.serve(func() (net.Conn, error) { return m.DialGuest(context.Background(), key, "tcp", target) })
	})
	return p, nil
}

// serve accepts until the listener closes and splices each connection
// with dial's.
func (l *listener) serve(dial func() (net.Conn, error)) {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.wg.Go(func() {
			defer c.Close()
			g, err := dial()
			if err != nil {
				l.m.log.Debug("forwarded port", "addr", l.ln.Addr(), "err", err)
				return
			}
			defer g.Close()
			if !l.track(c, g) {
				return
			}
			defer l.untrack(c, g)
			splice(c, g)
		})
	}
}

func (l *listener) track(cs ...net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns == nil {
		return false // closed
	}
	for _, c := range cs {
		l.conns[c] = struct{}{}
	}
	return true
}

func (l *listener) untrack(cs ...net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range cs {
		delete(l.conns, c)
	}
}

// splice copies both ways until either side ends, then closes both.
func splice(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	a.Close()
	b.Close()
	<-done
}

// Close stops listening, ends the connections under way and waits for
// them.
func (l *listener) Close() {
	l.m.mu.Lock()
	delete(l.m.published, l.self)
	l.m.mu.Unlock()
	l.ln.Close()
	l.mu.Lock()
	conns := l.conns
	l.conns = nil
	l.mu.Unlock()
	for c := range conns {
		c.Close()
	}
	l.wg.Wait()
}

// A Balanced address: connections to Addr (this machine's loopback) reach
// port Port on the loopback of one of several VMs' guests, the way a load
// balancer in front of VMs does on vSphere. Each connection tries the VMs
// in turn, starting after the one the previous connection went to, and
// goes to the first whose guest runs and accepts it at Port; a VM that is
// off, or whose guest does not listen, is passed over. VMs are named by
// their VM's name, looked up at each connection, so the balancer follows
// them across power cycles.
type Balanced struct {
	Addr string
	Port int

	listener
	vmsMu sync.Mutex
	vms   []string
	next  int
}

// Balance starts a balancer in front of port of the named VMs' guests
// (see Balanced). It runs until Close, or the manager's Close.
func (m *Manager) Balance(vms []string, port int) (*Balanced, error) {
	return m.BalanceAt(vms, port, "")
}

// BalanceAt is Balance at address at of this machine's loopback when it
// is free ("" or taken: any free port).
func (m *Manager) BalanceAt(vms []string, port int, at string) (*Balanced, error) {
	if port <= 0 || port > 65535 {
		return nil, fmt.Errorf("balance port %d of %v: want 1 to 65535", port, vms)
	}
	b := &Balanced{Port: port, vms: slices.Clone(vms)}
	if err := m.listen(&b.listener, b, at); err != nil {
		return nil, fmt.Errorf("balance port %d of %v: %w", port, vms, err)
	}
	b.Addr = b.ln.Addr().String()
	b.wg.Go(func() { b.serve(b.dial) })
	return b, nil
}

// Set replaces the VMs the balancer sends connections to; connections
// under way stay where they are.
func (b *Balanced) Set(vms []string) {
	b.vmsMu.Lock()
	b.vms = slices.Clone(vms)
	b.vmsMu.Unlock()
}

// VMs are the VMs the balancer sends connections to.
func (b *Balanced) VMs() []string {
	b.vmsMu.Lock()
	defer b.vmsMu.Unlock()
	return slices.Clone(b.vms)
}

// dial connects to the next VM's guest that accepts.
func (b *Balanced) dial() (net.Conn, error) {
	b.vmsMu.Lock()
	vms, start := slices.Clone(b.vms), b.next
	b.vmsMu.Unlock()
	target := net.JoinHostPort("127.0.0.1", strconv.Itoa(b.Port))
	var errs []error
	for i := range vms {
		n := (start + i) % len(vms)
		key, ok := b.m.KeyOf(vms[n])
		if !ok {
			errs = append(errs, fmt.Errorf("%s runs no guest", vms[n]))
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := b.m.DialGuest(ctx, key, "tcp", target)
		cancel()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		b.vmsMu.Lock()
		b.next = n + 1
		b.vmsMu.Unlock()
		return c, nil
	}
	return nil, fmt.Errorf("no guest of %v accepts port %d: %w", vms, b.Port, errors.Join(errs...))
}

// A Reached address: inside each boot of the VM's guest, connections to
// the guest's loopback port Port reach Target, an address of this machine
// (the way a guest on vSphere reaches a service of the management network
// through its gateway).
type Reached struct {
	Key    string
	Port   int
	Target string

	m *Manager
}

// Reach makes target (host:port of this machine) reachable inside the
// VM's guest at 127.0.0.1:port, in the guest that runs now and in every
// later boot of it, until Close or the manager's Close.
func (m *Manager) Reach(key string, port int, target string) (*Reached, error) {
	if port <= 0 || port > 65535 {
		return nil, fmt.Errorf("reach %s from %s: port %d: want 1 to 65535", target, key, port)
	}
	if _, _, err := net.SplitHostPort(target); err != nil {
		return nil, fmt.Errorf("reach %s from %s: %w", target, key, err)
	}
	r := &Reached{Key: key, Port: port, Target: target, m: m}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, errClosed
	}
	if m.reached == nil {
		m.reached = map[string][]*Reached{}
	}
	m.reached[key] = append(m.reached[key], r)
	if g, ok := m.guests[key]; ok {
		m.openReachedLocked(g, r)
	}
	return r, nil
}

// Close stops making the address reachable in later boots and closes the
// listener of the running one.
func (r *Reached) Close() {
	r.m.mu.Lock()
	defer r.m.mu.Unlock()
	rs := r.m.reached[r.Key]
	r.m.reached[r.Key] = slices.DeleteFunc(slices.Clone(rs), func(x *Reached) bool { return x == r })
	if g, ok := r.m.guests[r.Key]; ok {
		if ln := g.reachedLn[r]; ln != nil {
			ln.Close()
			delete(g.reachedLn, r)
		}
	}
}

// openReachedLocked opens the guest's listeners of every address reached
// from its VM (r alone when given). The caller holds m.mu.
func (m *Manager) openReachedLocked(g *guest, only ...*Reached) {
	rs := m.reached[g.vm.Key]
	if len(only) > 0 {
		rs = only
	}
	if len(rs) == 0 {
		return
	}
	ns, err := netns.GetFromPid(g.cmd.Process.Pid)
	if err != nil {
		m.log.Warn("reach from a guest: its network namespace", "vm", g.vm.Name, "err", err)
		return
	}
	defer ns.Close()
	if g.reachedLn == nil {
		g.reachedLn = map[*Reached]net.Listener{}
		// The listeners hold the guest's namespace: they go with its boot.
		go func() {
			<-g.exited
			m.mu.Lock()
			lns := g.reachedLn
			g.reachedLn = nil
			m.mu.Unlock()
			for _, ln := range lns {
				ln.Close()
			}
		}()
	}
	for _, r := range rs {
		if g.reachedLn[r] != nil {
			continue
		}
		var ln net.Listener
		err := segment.InNamespace(ns, func() error {
			var err error
			ln, err = net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(r.Port)))
			return err
		})
		if err != nil {
			m.log.Warn("reach from a guest", "vm", g.vm.Name, "port", r.Port, "target", r.Target, "err", err)
			continue
		}
		g.reachedLn[r] = ln
		go r.serve(ln)
	}
}

// serve forwards each connection the guest makes to the target. The
// dials run on ordinary threads, which are in this machine's namespace.
func (r *Reached) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			t, err := net.DialTimeout("tcp", r.Target, 10*time.Second)
			if err != nil {
				r.m.log.Debug("reached address", "vm", r.Key, "target", r.Target, "err", err)
				return
			}
			splice(c, t)
		}()
	}
}

// KeyOf is the key of the VM named name whose guest runs.
func (m *Manager) KeyOf(name string) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, g := range m.guests {
		if g.vm.Name == name {
			return k, true
		}
	}
	return "", false
}
