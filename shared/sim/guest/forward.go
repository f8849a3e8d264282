package guest

import (
	"context"
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

	m     *Manager
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// Publish makes port of the VM's guest reachable on this machine's
// loopback (see Published). It runs until Close, or the manager's Close.
// The guest need not run yet: a connection made while it does not is
// closed at once.
func (m *Manager) Publish(key string, port int) (*Published, error) {
	if port <= 0 || port > 65535 {
		return nil, fmt.Errorf("publish a port of %s: port %d: want 1 to 65535", key, port)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("publish port %d of %s: %w", port, key, err)
	}
	p := &Published{Addr: ln.Addr().String(), Key: key, Port: port, m: m, ln: ln, conns: map[net.Conn]struct{}{}}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		ln.Close()
		return nil, errClosed
	}
	if m.published == nil {
		m.published = map[*Published]struct{}{}
	}
	m.published[p] = struct{}{}
	m.mu.Unlock()
	p.wg.Go(p.serve)
	return p, nil
}

func (p *Published) serve() {
	target := net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Port))
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() {
			defer c.Close()
			g, err := p.m.DialGuest(context.Background(), p.Key, "tcp", target)
			if err != nil {
				p.m.log.Debug("published port", "vm", p.Key, "port", p.Port, "err", err)
				return
			}
			defer g.Close()
			if !p.track(c, g) {
				return
			}
			defer p.untrack(c, g)
			splice(c, g)
		})
	}
}

func (p *Published) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false // closed
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *Published) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.conns, c)
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
func (p *Published) Close() {
	p.m.mu.Lock()
	delete(p.m.published, p)
	p.m.mu.Unlock()
	p.ln.Close()
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for c := range conns {
		c.Close()
	}
	p.wg.Wait()
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
