package vspc

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// Identity is what a host says of the VM whose serial port it connects.
type Identity struct {
	// Direction is the port's direction as DO-PROXY gives it: 'S' (the VM
	// is the server) or 'C'.
	Direction byte
	// ServiceURI is the port's service URI (DO-PROXY).
	ServiceURI string
	// VCUUID is the VM's vCenter instance uuid (VM-VC-UUID), as the host
	// sends it (vSphere writes it as hex pairs with spaces and a dash).
	VCUUID string
	// Name is the VM's name (VM-NAME), "" if the host did not say.
	Name string
}

// NormalUUID is a uuid in any of the forms hosts write them ("52 1b …-…",
// with or without dashes, any case) as 32 lowercase hex digits, for
// comparing.
func NormalUUID(s string) string {
	var b bytes.Buffer
	for _, r := range s {
		switch {
		case r >= '0' && r <= '9', r >= 'a' && r <= 'f':
			b.WriteRune(r)
		case r >= 'A' && r <= 'F':
			b.WriteRune(r - 'A' + 'a')
		}
	}
	return b.String()
}

// ErrPeered is Accept's answer for a connection that a vMotion's target
// host made for a port the proxy already serves: the port's Conn goes on
// over it, and the caller has nothing more to do with it.
var ErrPeered = errors.New("vspc: the connection carries on a port's line after a vMotion")

// Proxy accepts hosts' connections and pairs the two connections of a
// vMotion. One Proxy serves every connection of a listener.
type Proxy struct {
	// HandshakeTimeout bounds a connection's opening (default 10s).
	HandshakeTimeout time.Duration
	// MoveTimeout bounds a vMotion from VMOTION-GOAHEAD to its end: a
	// move that neither completes nor is aborted by then leaves the port
	// on its source connection (default 2m).
	MoveTimeout time.Duration

	mu      sync.Mutex
	pending map[string]*Conn // moves under way, by sequence and secret (move.key)
}

// Conn is one VM's serial port as the proxy serves it: a net.Conn of the
// port's data, which goes on across vMotions.
type Conn struct {
	p  *Proxy
	id Identity

	wmu sync.Mutex // one writer of the port's data at a time

	mu       sync.Mutex
	cur      *link  // where the port's data goes
	move     *move  // a vMotion after its GOAHEAD
	buf      []byte // read, not yet Read
	end      error  // the line ended
	deadline time.Time
	notify   chan struct{}
	closed   bool
}

// link is one host connection of a port.
type link struct {
	nc  net.Conn
	opt options
	wmu sync.Mutex // a telnet command is written whole
	// dead: its connection ended (under Conn.mu).
	dead bool
}

func (l *link) write(b []byte) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	_, err := l.nc.Write(b)
	return err
}

// move is a vMotion of a port under way.
type move struct {
	key    string // the sequence and the secret, as VMOTION-PEER says them
	seq    []byte
	target *link    // the target host's connection, once it has peered
	held   [][]byte // data for the VM since the GOAHEAD
	timer  *time.Timer
}

const maxHeld = 1 << 20 // bytes held for a VM during a vMotion

func (p *Proxy) handshakeTimeout() time.Duration {
	if p.HandshakeTimeout <= 0 {
		return 10 * time.Second
	}
	return p.HandshakeTimeout
}

func (p *Proxy) moveTimeout() time.Duration {
	if p.MoveTimeout <= 0 {
		return 2 * time.Minute
	}
	return p.MoveTimeout
}

// Accept runs the opening of a host's connection: it returns the port's
// Conn once the host has asked for proxying and said the VM's uuid (data
// the host sent before that is kept), or ErrPeered for a vMotion target's
// connection joined to a port's Conn, or an error (the connection is then
// closed).
func (p *Proxy) Accept(nc net.Conn) (*Conn, error) {
	l := &link{nc: nc, opt: options{}}
	c := &Conn{p: p, cur: l, notify: make(chan struct{}, 1)}
	tr := newReader(nc)
	_ = nc.SetReadDeadline(time.Now().Add(p.handshakeTimeout()))
	fail := func(err error) (*Conn, error) {
		nc.Close()
		return nil, err
	}
	proxied, named := false, false
	for !proxied || c.id.VCUUID == "" || !named {
		ev, err := tr.next()
		if err != nil {
			return fail(fmt.Errorf("vspc: opening: %w", err))
		}
		switch {
		case ev.data != nil:
			c.buf = append(c.buf, ev.data...)
			if len(c.buf) > maxHeld {
				return fail(errors.New("vspc: opening: too much data before the VM was named"))
			}
		case !ev.isSub:
			if err := c.optionCmd(l, ev); err != nil {
				return fail(err)
			}
		case ev.sub == KnownSuboptions1:
			if err := l.write(append(append(sub(KnownSuboptions2, known), sub(GetVMVCUUID)...), sub(GetVMName)...)); err != nil {
				return fail(err)
			}
		case ev.sub == DoProxy:
			if len(ev.params) < 1 {
				return fail(errors.New("vspc: DO-PROXY without a direction"))
			}
			c.id.Direction, c.id.ServiceURI = ev.params[0], string(ev.params[1:])
			if err := l.write(sub(WillProxy)); err != nil {
				return fail(err)
			}
			proxied = true
		case ev.sub == VMVCUUID:
			c.id.VCUUID = string(ev.params)
		case ev.sub == VMName:
			c.id.Name, named = string(ev.params), true
		case ev.sub == UnknownSuboptionRcvd1 && len(ev.params) == 1 && ev.params[0] == GetVMName:
			named = true // a host that does not name VMs
		case ev.sub == VMotionPeer:
			_ = nc.SetReadDeadline(time.Time{})
			if err := p.peer(l, tr, ev.params); err != nil {
				return fail(err)
			}
			return nil, ErrPeered
		default:
			if err := c.subCmd(l, ev); err != nil {
				return fail(err)
			}
		}
	}
	_ = nc.SetReadDeadline(time.Time{})
	go c.readLink(l, tr)
	return c, nil
}

// Identity is what the host said of the port's VM.
func (c *Conn) Identity() Identity { return c.id }

// optionCmd answers an option command on l.
func (c *Conn) optionCmd(l *link, ev event) error {
	if b := l.opt.answer(ev.verb, ev.option); b != nil {
		return l.write(b)
	}
	return nil
}

// subCmd handles a subcommand on l after the opening.
func (c *Conn) subCmd(l *link, ev event) error {
	switch ev.sub {
	case KnownSuboptions1:
		return l.write(sub(KnownSuboptions2, known))
	case DoProxy:
		return l.write(sub(WillProxy))
	case VMVCUUID, VMName, UnknownSuboptionRcvd1, KnownSuboptions2:
		return nil
	case VMotionBegin:
		return c.begin(l, ev.params)
	case VMotionComplete:
		c.complete(l, ev.params)
		return nil
	case VMotionAbort:
		c.abort(ev.params)
		return nil
	default:
		return l.write(sub(UnknownSuboptionRcvd2, []byte{ev.sub}))
	}
}

// readLink reads one host connection of the port until it ends.
func (c *Conn) readLink(l *link, tr *reader) {
	for {
		ev, err := tr.next()
		if err != nil {
			c.linkEnded(l, err)
			return
		}
		switch {
		case ev.data != nil:
			c.mu.Lock()
			c.buf = append(c.buf, ev.data...)
			c.mu.Unlock()
			c.poke()
		case !ev.isSub:
			err = c.optionCmd(l, ev)
		default:
			err = c.subCmd(l, ev)
		}
		if err != nil {
			l.nc.Close()
		}
	}
}

// linkEnded: the line ends with the connection it writes to, unless a
// vMotion is moving it (the source host closes its connection once the
// target has the port; a target that leaves aborts the move).
func (c *Conn) linkEnded(l *link, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l.dead = true
	if m := c.move; m != nil {
		if l == m.target {
			m.target = nil
			return
		}
		if l == c.cur {
			return // the source left during the move: the target takes over
		}
	}
	if l != c.cur || c.end != nil {
		return
	}
	if err == nil || errors.Is(err, net.ErrClosed) {
		err = io.EOF
	}
	c.end = err
	c.poke()
}

// begin answers a VMOTION-BEGIN on the port's connection: nothing is
// queued (every Write is written through), so the answer is go-ahead with
// a secret the target host must show.
func (c *Conn) begin(l *link, seq []byte) error {
	secret := make([]byte, 16)
	_, _ = rand.Read(secret)
	key := string(seq) + string(secret)
	c.wmu.Lock()
	c.mu.Lock()
	if c.move != nil || l != c.cur {
		c.mu.Unlock()
		c.wmu.Unlock()
		return l.write(sub(VMotionNotNow, seq))
	}
	m := &move{key: key, seq: append([]byte(nil), seq...)}
	m.timer = time.AfterFunc(c.p.moveTimeout(), func() { c.abort(m.seq) })
	c.move = m
	c.mu.Unlock()
	c.wmu.Unlock()
	c.p.mu.Lock()
	if c.p.pending == nil {
		c.p.pending = map[string]*Conn{}
	}
	c.p.pending[key] = c
	c.p.mu.Unlock()
	return l.write(sub(VMotionGoahead, seq, secret))
}

// peer joins a target host's connection to the port whose move its
// sequence and secret name.
func (p *Proxy) peer(l *link, tr *reader, params []byte) error {
	p.mu.Lock()
	c := p.pending[string(params)]
	delete(p.pending, string(params))
	p.mu.Unlock()
	if c == nil {
		return errors.New("vspc: VMOTION-PEER for no vMotion under way")
	}
	c.mu.Lock()
	if c.move == nil || c.move.key != string(params) {
		c.mu.Unlock()
		return errors.New("vspc: VMOTION-PEER for a vMotion that has ended")
	}
	c.move.target = l
	seq := c.move.seq
	c.mu.Unlock()
	if err := l.write(sub(VMotionPeerOK, seq)); err != nil {
		return err
	}
	go c.readLink(l, tr)
	return nil
}

// complete moves the port to the target's connection l.
func (c *Conn) complete(l *link, seq []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	m := c.move
	if m == nil || m.target != l || !bytes.Equal(m.seq, seq) {
		c.mu.Unlock()
		return
	}
	m.timer.Stop()
	old := c.cur
	c.cur, c.move = l, nil
	held := m.held
	c.mu.Unlock()
	for _, b := range held {
		if err := l.write(b); err != nil {
			l.nc.Close()
			break
		}
	}
	if old != nil {
		old.nc.Close()
	}
}

// abort leaves the port on its source connection.
func (c *Conn) abort(seq []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	m := c.move
	if m == nil || !bytes.Equal(m.seq, seq) {
		c.mu.Unlock()
		return
	}
	m.timer.Stop()
	c.move = nil
	cur, held := c.cur, m.held
	if cur.dead && c.end == nil {
		// The source left during the move that did not complete.
		c.end = io.EOF
		c.poke()
	}
	c.mu.Unlock()
	c.forget(m)
	for _, b := range held {
		if err := cur.write(b); err != nil {
			cur.nc.Close()
			break
		}
	}
}

// forget ends a move that will not complete (taken off the Conn already):
// its secret no longer peers, and its target's connection is closed.
func (c *Conn) forget(m *move) {
	m.timer.Stop()
	c.p.mu.Lock()
	delete(c.p.pending, m.key)
	c.p.mu.Unlock()
	if m.target != nil {
		m.target.nc.Close()
	}
}

func (c *Conn) poke() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// Read reads the port's data: what the VM wrote, on whichever host
// connection carries it.
func (c *Conn) Read(p []byte) (int, error) {
	for {
		c.mu.Lock()
		if len(c.buf) > 0 {
			n := copy(p, c.buf)
			c.buf = c.buf[n:]
			c.mu.Unlock()
			return n, nil
		}
		if c.closed {
			c.mu.Unlock()
			return 0, net.ErrClosed
		}
		if c.end != nil {
			err := c.end
			c.mu.Unlock()
			return 0, err
		}
		dl := c.deadline
		c.mu.Unlock()
		if dl.IsZero() {
			<-c.notify
			continue
		}
		wait := time.Until(dl)
		if wait <= 0 {
			return 0, os.ErrDeadlineExceeded
		}
		t := time.NewTimer(wait)
		select {
		case <-c.notify:
		case <-t.C:
		}
		t.Stop()
	}
}

// Write sends data to the VM, held while a vMotion moves the port.
func (c *Conn) Write(p []byte) (int, error) {
	b := escape(p)
	if len(b) == len(p) {
		b = append([]byte(nil), p...)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	if c.closed || c.end != nil {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	if m := c.move; m != nil {
		size := len(b)
		for _, h := range m.held {
			size += len(h)
		}
		if size > maxHeld {
			c.mu.Unlock()
			return 0, errors.New("vspc: more than 1 MiB for the VM held during a vMotion")
		}
		m.held = append(m.held, b)
		c.mu.Unlock()
		return len(p), nil
	}
	cur := c.cur
	c.mu.Unlock()
	if err := cur.write(b); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close ends the port's line and its host connections.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	cur, m := c.cur, c.move
	c.move = nil
	c.mu.Unlock()
	if m != nil {
		c.forget(m)
	}
	c.poke()
	return cur.nc.Close()
}

// LocalAddr is the address of the connection the port is on.
func (c *Conn) LocalAddr() net.Addr { return c.link().nc.LocalAddr() }

// RemoteAddr is the host's address of the connection the port is on.
func (c *Conn) RemoteAddr() net.Addr { return c.link().nc.RemoteAddr() }

func (c *Conn) link() *link {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

// SetDeadline sets the read deadline; writes have none of their own.
func (c *Conn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

// SetReadDeadline makes a Read waiting (or to come) fail with
// os.ErrDeadlineExceeded at t; the zero time waits for ever.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	c.poke()
	return nil
}

// SetWriteDeadline does nothing: a write goes to a host's connection or is
// held during a move.
func (c *Conn) SetWriteDeadline(time.Time) error { return nil }
