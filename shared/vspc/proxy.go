package vspc

import (
	"bytes"
	"context"
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
// over it, and the caller has nothing more to do with it. A Conn whose
// connection turns out to be such a target's after its opening (the host
// sent VMOTION-PEER late) ends with it too.
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
	// DrainTimeout bounds how long after VMOTION-COMPLETE the source's
	// connection is still read for what the VM wrote on it, the target's
	// data waiting behind it (default 3s). A source host that closes its
	// connection sooner ends the wait sooner.
	DrainTimeout time.Duration

	mu      sync.Mutex
	pending map[string]*Conn // moves under way, by sequence and secret (move.key)
}

// Conn is one VM's serial port as the proxy serves it: a net.Conn of the
// port's data, which goes on across vMotions.
type Conn struct {
	p  *Proxy
	id Identity

	wmu sync.Mutex // one writer of the port's data at a time

	mu   sync.Mutex
	cur  *link // where the port's data goes
	move *move // a vMotion after its GOAHEAD
	// links are the connections whose data is still to be Read, oldest
	// first: a source being drained after a move, then the current link,
	// then a peered target. What the VM wrote reaches the reader in the
	// order it wrote it only if each link is read out before the next.
	links    []*link
	end      error // the line ended
	gone     bool  // its one connection was handed to another port (late VMOTION-PEER)
	deadline time.Time
	notify   chan struct{} // a Read waiting has something to look at
	room     *sync.Cond    // (on mu) a link reader waiting for its buffer to be Read
	closed   bool
}

// link is one host connection of a port.
type link struct {
	nc  net.Conn
	opt options
	wmu sync.Mutex // a telnet command is written whole
	// shut (under wmu): the proxy ended its side of the connection after
	// the port moved on, so nothing is written to it any more.
	shut bool

	// Under Conn.mu:
	in        []byte    // read, not yet Read
	delivered bool      // some data came over it: it is a line, not a late target
	dead      bool      // its connection ended
	dropped   bool      // taken off the port (an aborted move's target): its data goes nowhere
	draining  bool      // a moved-from source, read only for its last data
	drainBy   time.Time // when a draining link stops being read
}

func (l *link) write(b []byte) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.shut {
		return nil
	}
	_, err := l.nc.Write(b)
	return err
}

// shutWrite ends the proxy's side of a link the port moved from: it tells
// the source host the port is served elsewhere now (a host that reads the
// end closes its connection, which ends the drain at once) while what the
// host still sends is read.
func (l *link) shutWrite() {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.shut = true
	if cw, ok := l.nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// move is a vMotion of a port under way.
type move struct {
	key    string // the sequence and the secret, as VMOTION-PEER says them
	seq    []byte
	target *link  // the target host's connection, once it has peered
	held   []byte // data for the VM since the GOAHEAD, escaped; its length is the running total against maxHeld
	timer  *time.Timer
}

const (
	maxHeld = 1 << 20 // bytes held for a VM during a vMotion
	// maxBuf bounds what one link has read and the Conn's reader has not:
	// past it the link's reader stops reading, so a slow reader slows the
	// host (TCP's window) instead of growing the proxy's memory.
	maxBuf = 1 << 20
)

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

func (p *Proxy) drainTimeout() time.Duration {
	if p.DrainTimeout <= 0 {
		return 3 * time.Second
	}
	return p.DrainTimeout
}

// Accept is AcceptContext without a context of its own: the opening is
// bounded by HandshakeTimeout only.
func (p *Proxy) Accept(nc net.Conn) (*Conn, error) {
	return p.AcceptContext(context.Background(), nc)
}

// AcceptContext runs the opening of a host's connection: it returns the
// port's Conn once the host has asked for proxying and said the VM's uuid
// (data the host sent before that is kept), or ErrPeered for a vMotion
// target's connection joined to a port's Conn, or an error (the connection
// is then closed). It gives up, closing the connection, when ctx ends
// before the opening does, so a caller shutting down does not wait out
// HandshakeTimeout; ctx does not bound the Conn returned.
func (p *Proxy) AcceptContext(ctx context.Context, nc net.Conn) (*Conn, error) {
	l := &link{nc: nc, opt: options{}}
	c := &Conn{p: p, cur: l, links: []*link{l}, notify: make(chan struct{}, 1)}
	c.room = sync.NewCond(&c.mu)
	tr := newReader(nc)
	_ = nc.SetReadDeadline(time.Now().Add(p.handshakeTimeout()))
	// Closing the connection ends a read or a write of the opening under
	// way, whichever it is waiting in.
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	fail := func(err error) (*Conn, error) {
		stop()
		nc.Close()
		if ctx.Err() != nil {
			err = fmt.Errorf("vspc: opening: %w", ctx.Err())
		}
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
			l.in = append(l.in, ev.data...)
			l.delivered = true
			if len(l.in) > maxHeld {
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
			if !stop() {
				return fail(ctx.Err())
			}
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
	if !stop() {
		return fail(ctx.Err())
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
		c.abort(l, ev.params)
		return nil
	default:
		return l.write(sub(UnknownSuboptionRcvd2, []byte{ev.sub}))
	}
}

// readLink reads one host connection of the port until it ends, or until
// it turns out to belong to another port's vMotion.
func (c *Conn) readLink(l *link, tr *reader) {
	for {
		ev, err := tr.next()
		if err != nil {
			c.linkEnded(l, err)
			return
		}
		if ev.data != nil {
			if !c.deliver(l, ev.data) {
				c.linkEnded(l, net.ErrClosed)
				return
			}
			continue
		}
		c.mu.Lock()
		draining := l.draining
		c.mu.Unlock()
		if draining {
			// The host was told the port moved on: nothing it says now
			// changes the line, and nothing is written back.
			continue
		}
		switch {
		case !ev.isSub:
			err = c.optionCmd(l, ev)
		case ev.sub == VMotionPeer:
			// A target host that answered the opening's questions before
			// it said VMOTION-PEER looked like a new line to Accept.
			if to := c.handOver(l, ev.params); to != nil {
				go to.readLink(l, tr)
				return
			}
		default:
			err = c.subCmd(l, ev)
		}
		if err != nil {
			l.nc.Close()
		}
	}
}

// deliver adds data read on l to what Read gives, waiting while l already
// holds maxBuf unread: the link's connection is not read meanwhile, which
// is the back-pressure on the host. It reports false when the data goes
// nowhere (the Conn closed, or l was taken off it).
func (c *Conn) deliver(l *link, data []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(l.in) >= maxBuf && !c.closed && !l.dropped {
		// DrainTimeout is the source host's time to finish, not the
		// reader's to catch up: the wait for room does not count against
		// it, or data the host sent in time would be cut off.
		wasDraining, left := l.draining, time.Until(l.drainBy)
		c.room.Wait()
		if l.draining {
			if !wasDraining {
				left = c.p.drainTimeout() // the move completed during the wait
			}
			l.drainBy = time.Now().Add(max(left, 0))
			_ = l.nc.SetReadDeadline(l.drainBy)
		}
	}
	if c.closed || l.dropped {
		return false
	}
	l.in = append(l.in, data...)
	l.delivered = true
	c.poke()
	return true
}

// linkEnded: the line ends with the connection it writes to, unless a
// vMotion is moving it (the source host closes its connection once the
// target has the port; a target that leaves aborts the move).
func (c *Conn) linkEnded(l *link, err error) {
	l.nc.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	l.dead = true
	c.poke() // a drained source no longer holds back the links after it
	if m := c.move; m != nil {
		if l == m.target {
			c.dropTarget(m)
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
}

// dropTarget takes a move's target connection off the port (under mu):
// what it read is not the VM's line, which stays on the source.
func (c *Conn) dropTarget(m *move) {
	t := m.target
	if t == nil {
		return
	}
	m.target = nil
	t.dropped = true
	for i, l := range c.links {
		if l == t {
			c.links = append(c.links[:i:i], c.links[i+1:]...)
			break
		}
	}
	c.room.Broadcast()
}

// begin answers a VMOTION-BEGIN on the port's connection: nothing is
// queued (every Write is written through), so the answer is go-ahead with
// a secret the target host must show. A move whose target never came is
// given up for the new one: vSphere does not always say ABORT when it
// gives up a vMotion, and waiting out MoveTimeout would hold the VM's
// data and refuse the next try for that long.
func (c *Conn) begin(l *link, seq []byte) error {
	secret := make([]byte, 16)
	_, _ = rand.Read(secret)
	key := string(seq) + string(secret)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	old := c.move
	if l != c.cur || c.closed || (old != nil && old.target != nil) {
		c.mu.Unlock()
		return l.write(sub(VMotionNotNow, seq))
	}
	m := &move{key: key, seq: append([]byte(nil), seq...)}
	m.timer = time.AfterFunc(c.p.moveTimeout(), func() { c.abandon(m) })
	c.move = m
	c.mu.Unlock()
	if old != nil {
		c.forget(old)
		// What was held for the VM goes out before the new move holds
		// anything (writers wait on wmu), so it keeps its order.
		if err := l.write(old.held); err != nil {
			return err
		}
	}
	c.p.mu.Lock()
	if c.p.pending == nil {
		c.p.pending = map[string]*Conn{}
	}
	c.p.pending[key] = c
	c.p.mu.Unlock()
	return l.write(sub(VMotionGoahead, seq, secret))
}

// peer joins a target host's connection to the port whose move its
// sequence and secret name, and reads it for that port.
func (p *Proxy) peer(l *link, tr *reader, params []byte) error {
	c, seq, err := p.join(l, params)
	if err != nil {
		return err
	}
	// Read even if the answer fails: the reader's end takes the target
	// off the move.
	go c.readLink(l, tr)
	return l.write(sub(VMotionPeerOK, seq))
}

// join makes l the target of the move that params (VMOTION-PEER's
// sequence and secret) name, and returns the move's port and sequence.
func (p *Proxy) join(l *link, params []byte) (*Conn, []byte, error) {
	p.mu.Lock()
	c := p.pending[string(params)]
	delete(p.pending, string(params))
	p.mu.Unlock()
	if c == nil {
		return nil, nil, errors.New("vspc: VMOTION-PEER for no vMotion under way")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.move == nil || c.move.key != string(params) || c.move.target != nil {
		return nil, nil, errors.New("vspc: VMOTION-PEER for a vMotion that has ended")
	}
	c.move.target = l
	c.links = append(c.links, l)
	return c, c.move.seq, nil
}

// handOver gives l, the one connection of c, to the port whose move a
// late VMOTION-PEER names, and ends c with ErrPeered; it returns that
// port, or nil where l is not a target's (it carried data, or c has a move
// of its own) or the peer is refused (c then ends with the refusal).
func (c *Conn) handOver(l *link, params []byte) *Conn {
	c.wmu.Lock() // nothing more of c's is written to l
	defer c.wmu.Unlock()
	c.mu.Lock()
	ok := l == c.cur && !l.delivered && len(c.links) == 1 && c.move == nil && !c.closed && c.end == nil
	c.mu.Unlock()
	if !ok {
		return nil
	}
	to, seq, err := c.p.join(l, params)
	c.mu.Lock()
	if err != nil {
		c.end = err
	} else {
		c.end, c.gone, c.links = ErrPeered, true, nil
	}
	c.poke()
	c.mu.Unlock()
	if err == nil {
		err = l.write(sub(VMotionPeerOK, seq))
	}
	if err != nil {
		l.nc.Close()
	}
	return to
}

// complete moves the port to the target's connection l. The source's
// connection is not closed: the host may still be sending what the VM
// wrote before it moved, so it is read until the host closes it or
// DrainTimeout passes, and the target's data is Read only after it.
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
	if !old.dead {
		old.draining = true
		old.drainBy = time.Now().Add(c.p.drainTimeout())
		_ = old.nc.SetReadDeadline(old.drainBy)
	}
	c.mu.Unlock()
	if len(m.held) > 0 {
		if err := l.write(m.held); err != nil {
			l.nc.Close()
		}
	}
	old.shutWrite()
}

// abort leaves the port on its source connection l, if the move seq is
// the one under way: a target's connection has no say in it.
func (c *Conn) abort(l *link, seq []byte) {
	c.mu.Lock()
	m := c.move
	ok := m != nil && l == c.cur && bytes.Equal(m.seq, seq)
	c.mu.Unlock()
	if ok {
		c.abandon(m)
	}
}

// abandon ends the move m, if it is still under way, leaving the port on
// its source connection.
func (c *Conn) abandon(m *move) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	if c.move != m {
		c.mu.Unlock()
		return
	}
	c.move = nil
	cur := c.cur
	if cur.dead && c.end == nil {
		// The source left during the move that did not complete.
		c.end = io.EOF
		c.poke()
	}
	c.mu.Unlock()
	c.forget(m)
	if len(m.held) > 0 {
		if err := cur.write(m.held); err != nil {
			cur.nc.Close()
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
	c.mu.Lock()
	t := m.target
	c.dropTarget(m)
	c.mu.Unlock()
	if t != nil {
		t.nc.Close()
	}
}

func (c *Conn) poke() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// Read reads the port's data: what the VM wrote, on whichever host
// connection carries it, each connection's in turn.
func (c *Conn) Read(p []byte) (int, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return 0, net.ErrClosed
		}
		dl := c.deadline
		// As net.Conn: a deadline that has passed fails the Read even
		// when data is waiting.
		if !dl.IsZero() && !time.Now().Before(dl) {
			c.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		}
		for len(c.links) > 0 {
			h := c.links[0]
			if len(h.in) > 0 {
				n := copy(p, h.in)
				h.in = h.in[n:]
				if len(h.in) == 0 {
					h.in = nil
				}
				c.room.Broadcast()
				c.mu.Unlock()
				return n, nil
			}
			if h == c.cur || !h.dead {
				break
			}
			c.links = c.links[1:] // a source read out after its move
		}
		if c.end != nil && (len(c.links) == 0 || c.links[0] == c.cur) {
			err := c.end
			c.mu.Unlock()
			return 0, err
		}
		c.mu.Unlock()
		if dl.IsZero() {
			<-c.notify
			continue
		}
		t := time.NewTimer(time.Until(dl))
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
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	if c.closed || c.end != nil {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	if m := c.move; m != nil {
		if len(m.held)+len(b) > maxHeld {
			c.mu.Unlock()
			return 0, errors.New("vspc: more than 1 MiB for the VM held during a vMotion")
		}
		m.held = append(m.held, b...)
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
	links, m := c.links, c.move
	c.links, c.move = nil, nil
	c.room.Broadcast()
	c.mu.Unlock()
	if m != nil {
		c.forget(m)
	}
	c.poke()
	var err error
	for _, l := range links {
		if e := l.nc.Close(); e != nil && err == nil && !errors.Is(e, net.ErrClosed) {
			err = e
		}
	}
	return err
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
