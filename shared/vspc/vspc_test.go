package vspc

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// rig is a proxy on a loopback listener whose accepted Conns (or Accept's
// errors) arrive on conns.
type rig struct {
	t     testing.TB
	ln    net.Listener
	p     *Proxy
	conns chan *Conn
	errs  chan error
}

func newRig(t testing.TB) *rig { return newRigTimeout(t, 5*time.Second) }

func newRigTimeout(t testing.TB, handshake time.Duration) *rig {
	t.Helper()
	return newRigProxy(t, &Proxy{HandshakeTimeout: handshake})
}

func newRigProxy(t testing.TB, p *Proxy) *rig {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, ln: ln, p: p, conns: make(chan *Conn, 4), errs: make(chan error, 4)}
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				c, err := r.p.Accept(nc)
				if err != nil {
					r.errs <- err
					return
				}
				r.conns <- c
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return r
}

var vm = Identity{Direction: 'S', ServiceURI: "podvisor", VCUUID: "50 2b 6e 1a 9d 7f 41 2c-8a 3e 11 22 33 44 55 66", Name: "pv-abc"}

func (r *rig) dial(id Identity) *HostConn {
	r.t.Helper()
	nc, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		r.t.Fatal(err)
	}
	h, err := Dial(nc, id, 5*time.Second)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { h.Close() })
	return h
}

func (r *rig) conn() *Conn {
	r.t.Helper()
	select {
	case c := <-r.conns:
		r.t.Cleanup(func() { c.Close() })
		return c
	case err := <-r.errs:
		r.t.Fatalf("accept: %v", err)
	case <-time.After(5 * time.Second):
		r.t.Fatal("no connection accepted")
	}
	return nil
}

// peerTarget opens a vMotion target's connection for the move (seq,
// secret) and waits for the proxy to join it to the move's port.
func (r *rig) peerTarget(seq, secret []byte) *HostConn {
	r.t.Helper()
	nc, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		r.t.Fatal(err)
	}
	dst, err := DialPeer(nc, vm, seq, secret, 5*time.Second)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { dst.Close() })
	select {
	case err := <-r.errs:
		if !errors.Is(err, ErrPeered) {
			r.t.Fatalf("accept of the target's connection: %v", err)
		}
	case c := <-r.conns:
		r.t.Fatalf("the target's connection made a second line %+v", c.Identity())
	case <-time.After(5 * time.Second):
		r.t.Fatal("the target's connection was not accepted")
	}
	return dst
}

// beginMove opens a line for vm and begins a vMotion of it as seq: the
// source host's connection, the proxy's Conn and the move's secret.
func (r *rig) beginMove(seq []byte) (*HostConn, *Conn, []byte) {
	r.t.Helper()
	src := r.dial(vm)
	c := r.conn()
	secret, err := src.BeginVMotion(seq, 5*time.Second)
	if err != nil {
		r.t.Fatal(err)
	}
	return src, c, secret
}

// refused waits for Accept to refuse a connection.
func (r *rig) refused() {
	r.t.Helper()
	select {
	case err := <-r.errs:
		if errors.Is(err, ErrPeered) {
			r.t.Errorf("accept: %v, want a refusal", err)
		}
	case <-time.After(5 * time.Second):
		r.t.Error("the connection was not refused")
	}
}

// readWithin reads n bytes of c, failing the test when they take more than
// a few seconds rather than hanging it.
func readWithin(t *testing.T, c *Conn, n int) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	return readN(t, c, n)
}

// sourceTold waits until the proxy has ended its side of a source's
// connection: it has taken VMOTION-COMPLETE.
func sourceTold(t *testing.T, src *HostConn) {
	t.Helper()
	_ = src.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(src); err != nil {
		t.Fatalf("source connection after VMOTION-COMPLETE: %v, want its end", err)
	}
}

func readN(t *testing.T, r io.Reader, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

func TestOpeningNamesTheVMAndCarriesEveryByte(t *testing.T) {
	r := newRig(t)
	h := r.dial(vm)
	c := r.conn()
	if got := c.Identity(); got != vm {
		t.Errorf("identity %+v, want %+v", got, vm)
	}
	if NormalUUID(c.Identity().VCUUID) != "502b6e1a9d7f412c8a3e112233445566" {
		t.Errorf("normal uuid %q", NormalUUID(c.Identity().VCUUID))
	}
	// Every byte value, 0xFF (IAC) included, both ways.
	all := make([]byte, 512)
	for i := range all {
		all[i] = byte(i)
	}
	if _, err := h.Write(all); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, c, len(all)); !bytes.Equal(got, all) {
		t.Errorf("proxy read %x, want %x", got, all)
	}
	if _, err := c.Write(all); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, h, len(all)); !bytes.Equal(got, all) {
		t.Errorf("host read %x, want %x", got, all)
	}
	// The host's end ends the line.
	h.Close()
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("read after the host closed: %v, want EOF", err)
	}
}

func TestReadDeadline(t *testing.T) {
	r := newRig(t)
	h := r.dial(vm)
	c := r.conn()
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v, want a timeout", err)
	}
	// A deadline in the past interrupts a read under way.
	_ = c.SetReadDeadline(time.Time{})
	got := make(chan error, 1)
	go func() { _, err := c.Read(make([]byte, 1)); got <- err }()
	_ = c.SetReadDeadline(time.Now())
	if err := <-got; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("interrupted read: %v", err)
	}
	_ = c.SetReadDeadline(time.Time{})
	_, _ = h.Write([]byte("x"))
	if b := readN(t, c, 1); string(b) != "x" {
		t.Errorf("read %q after the deadline was lifted", b)
	}
}

func TestVMotionMovesThePortWithoutEndingTheLine(t *testing.T) {
	r := newRig(t)
	src := r.dial(vm)
	c := r.conn()
	if _, err := c.Write([]byte("before ")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, src, 7); string(got) != "before " {
		t.Fatalf("source read %q", got)
	}
	seq := []byte{0, 1, 0xFF, 3}
	secret, err := src.BeginVMotion(seq, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Written during the move: held for the target.
	if _, err := c.Write([]byte("during\xff")); err != nil {
		t.Fatal(err)
	}
	// The VM writes on the source until the switch.
	_, _ = src.Write([]byte("from-src "))
	if got := readN(t, c, 9); string(got) != "from-src " {
		t.Fatalf("proxy read %q from the source", got)
	}
	nc, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	dst, err := DialPeer(nc, vm, seq, secret, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	select {
	case err := <-r.errs:
		if !errors.Is(err, ErrPeered) {
			t.Fatalf("accept of the target's connection: %v", err)
		}
	case c := <-r.conns:
		t.Fatalf("the target's connection made a second line %+v", c.Identity())
	case <-time.After(5 * time.Second):
		t.Fatal("the target's connection was not accepted")
	}
	if err := dst.Complete(seq); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, dst, 7); string(got) != "during\xff" {
		t.Errorf("target read %q, want what was held", got)
	}
	// The proxy ends its side of the source's connection, and the source
	// host closes it, as a host does once the port has moved.
	_ = src.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(src); err != nil {
		t.Errorf("source connection: %v, want it ended", err)
	}
	src.Close()
	_, _ = dst.Write([]byte("from-dst"))
	if got := readN(t, c, 8); string(got) != "from-dst" {
		t.Errorf("proxy read %q from the target", got)
	}
	if _, err := c.Write([]byte("after")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, dst, 5); string(got) != "after" {
		t.Errorf("target read %q", got)
	}
}

func TestVMotionAbortedStaysOnTheSource(t *testing.T) {
	r := newRig(t)
	seq := []byte("seq-1")
	src, c, secret := r.beginMove(seq)
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	if err := src.Abort(seq); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, src, 4); string(got) != "held" {
		t.Errorf("source read %q after the abort, want what was held", got)
	}
	// The aborted move's secret no longer peers.
	nc, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DialPeer(nc, vm, seq, secret, 2*time.Second); err == nil {
		t.Error("a target peered with the secret of an aborted move")
	}
}

func TestVMotionPeerWithAWrongSecretIsRefused(t *testing.T) {
	r := newRig(t)
	src := r.dial(vm)
	r.conn()
	seq := []byte("s")
	if _, err := src.BeginVMotion(seq, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	nc, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DialPeer(nc, vm, seq, []byte("guessed-secret!!"), 2*time.Second); err == nil {
		t.Fatal("a target peered with a wrong secret")
	}
	select {
	case err := <-r.errs:
		if errors.Is(err, ErrPeered) {
			t.Errorf("accept: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("the wrong peer's connection was not refused")
	}
}

func TestOpeningWithoutTheVMsUUIDTimesOut(t *testing.T) {
	r := newRigTimeout(t, 200*time.Millisecond)
	nc, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// Plain data, no telnet: a raw serial port pointed at the proxy.
	_, _ = nc.Write([]byte("{\"type\":\"hello\"}\n"))
	select {
	case err := <-r.errs:
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("accept: %v, want a timeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a connection that named no VM was not refused")
	}
}

// The source host may still be passing on what the VM wrote before it
// moved when the target says VMOTION-COMPLETE: those bytes come first, the
// target's wait behind them.
func TestVMotionDeliversTheSourcesLastBytesBeforeTheTargets(t *testing.T) {
	r := newRig(t)
	seq := []byte("seq")
	src, c, secret := r.beginMove(seq)
	dst := r.peerTarget(seq, secret)
	if err := dst.Complete(seq); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.Write([]byte("target-first")); err != nil {
		t.Fatal(err)
	}
	sourceTold(t, src)
	if _, err := src.Write([]byte("source-last ")); err != nil {
		t.Fatalf("the source's last bytes: %v", err)
	}
	src.Close()
	want := "source-last target-first"
	if got := readWithin(t, c, len(want)); string(got) != want {
		t.Errorf("read %q, want %q", got, want)
	}
}

// A source host that keeps its connection open after the move holds the
// target's data back for DrainTimeout only.
func TestVMotionDrainOfASilentSourceIsBounded(t *testing.T) {
	r := newRigProxy(t, &Proxy{HandshakeTimeout: 5 * time.Second, DrainTimeout: 100 * time.Millisecond})
	seq := []byte("seq")
	_, c, secret := r.beginMove(seq) // the source stays open and silent
	dst := r.peerTarget(seq, secret)
	if err := dst.Complete(seq); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.Write([]byte("after")); err != nil {
		t.Fatal(err)
	}
	if got := readWithin(t, c, 5); string(got) != "after" {
		t.Errorf("read %q from the target", got)
	}
}

// The source sends more than the proxy buffers while nothing reads the
// line, and the move completes meanwhile: the move does not wait for the
// reader, the wait for room does not count against the drain, and every
// byte comes in order once the line is read.
func TestVMotionCompletesWhileTheSourceWaitsForTheReader(t *testing.T) {
	const drain = 500 * time.Millisecond
	r := newRigProxy(t, &Proxy{HandshakeTimeout: 5 * time.Second, DrainTimeout: drain})
	seq := []byte("full")
	src, c, secret := r.beginMove(seq)
	dst := r.peerTarget(seq, secret)
	stream := pattern(maxBuf + 256<<10)
	wrote := make(chan error, 1)
	go func() {
		_, err := src.Write(stream)
		// Half-close: the source's end must stay open to be told.
		_ = src.nc.(*net.TCPConn).CloseWrite()
		wrote <- err
	}()
	if err := dst.Complete(seq); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.Write([]byte("target")); err != nil {
		t.Fatal(err)
	}
	sourceTold(t, src)
	// What is under test is time: the drain's own bound passing while
	// the source waits for the reader.
	<-time.After(2 * drain)
	want := append(append([]byte(nil), stream...), "target"...)
	if got := readWithin(t, c, len(want)); !bytes.Equal(got, want) {
		t.Errorf("read %d bytes not as the source and then the target sent them", len(got))
	}
	if err := <-wrote; err != nil {
		t.Errorf("source write: %v", err)
	}
}

// pattern is n bytes without 0xFF, so that they go over telnet unescaped.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// vSphere may give a vMotion up without VMOTION-ABORT; its next try is
// answered at once, and the data held for the VM goes to the source.
func TestVMotionBeginGivesUpAMoveWhoseTargetNeverCame(t *testing.T) {
	r := newRig(t)
	src := r.dial(vm)
	c := r.conn()
	seq1, seq2 := []byte("seq-1"), []byte("seq-2")
	first, err := src.BeginVMotion(seq1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	// The host's reader passes data on before answers: read it meanwhile.
	held := make(chan []byte, 1)
	go func() {
		b := make([]byte, 4)
		_ = src.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _ := io.ReadFull(src, b)
		held <- b[:n]
	}()
	second, err := src.BeginVMotion(seq2, 5*time.Second)
	if err != nil {
		t.Fatalf("VMOTION-BEGIN after a move whose target never came: %v, want GOAHEAD", err)
	}
	if got := <-held; string(got) != "held" {
		t.Errorf("source read %q, want what the given-up move held", got)
	}
	// The given-up move's secret no longer peers.
	nc, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DialPeer(nc, vm, seq1, first, 2*time.Second); err == nil {
		t.Error("a target peered with the secret of a given-up move")
	}
	r.refused()
	// The new move goes on; while its target is there, a further
	// VMOTION-BEGIN waits.
	dst := r.peerTarget(seq2, second)
	if _, err := src.BeginVMotion([]byte("seq-3"), 5*time.Second); !errors.Is(err, ErrNotNow) {
		t.Errorf("VMOTION-BEGIN during a move with a target: %v, want NOTNOW", err)
	}
	if err := dst.Complete(seq2); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("moved")); err != nil {
		t.Fatal(err)
	}
	_ = dst.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got := readN(t, dst, 5); string(got) != "moved" {
		t.Errorf("target read %q", got)
	}
}

// Nothing reads the line: the proxy stops reading the host's connection
// once it holds maxBuf, so the host is slowed instead of the proxy's memory
// growing; reading lets the host go on with nothing lost; and Close ends a
// line whose reader waits for room.
func TestReadBufferHoldsBackTheHost(t *testing.T) {
	p := &Proxy{HandshakeTimeout: 5 * time.Second}
	// A pipe has no buffer of its own: a write returns once the proxy has
	// read it. The host here is raw bytes: the opening, then data; what
	// the proxy answers is read and dropped.
	a, b := net.Pipe()
	t.Cleanup(func() { b.Close() })
	go func() { _, _ = io.Copy(io.Discard, b) }()
	accepted := make(chan *Conn, 1)
	go func() {
		c, _ := p.Accept(a)
		accepted <- c
	}()
	if _, err := b.Write(opening(nil)); err != nil {
		t.Fatal(err)
	}
	c := <-accepted
	if c == nil {
		t.Fatal("not accepted")
	}
	t.Cleanup(func() { c.Close() })

	stream := pattern(4 * maxBuf)
	sent := 0
	send := func(limit int) error {
		for sent < limit {
			n, err := b.Write(stream[sent:min(sent+64<<10, limit)])
			sent += n
			if err != nil {
				return err
			}
		}
		return nil
	}
	_ = b.SetWriteDeadline(time.Now().Add(time.Second))
	if err := send(len(stream)); err == nil {
		t.Fatalf("the host wrote %d bytes that nothing read: the proxy buffers without bound", sent)
	} else if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal(err)
	}
	if sent > maxBuf+128<<10 {
		t.Errorf("the proxy read %d bytes ahead of its reader, want about %d at most", sent, maxBuf)
	}
	_ = b.SetWriteDeadline(time.Time{})
	rest := make(chan error, 1)
	go func() { rest <- send(len(stream)) }()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got := readN(t, c, len(stream)); !bytes.Equal(got, stream) {
		t.Error("the line's data is not what the host sent")
	}
	if err := <-rest; err != nil {
		t.Fatal(err)
	}

	// Full again, then closed.
	sent = 0
	_ = b.SetWriteDeadline(time.Now().Add(time.Second))
	if err := send(len(stream)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("filling the buffer again: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	_ = b.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := b.Write([]byte("x")); !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("host write after Close: %v, want the proxy's end closed", err)
	}
}

// A target host may answer the proxy's questions (GET-VM-VC-UUID, …)
// before it says VMOTION-PEER, and so look like a new line to Accept: it
// joins the move all the same, and the Conn Accept gave for it ends.
func TestVMotionPeerAfterTheOpeningJoinsTheMove(t *testing.T) {
	r := newRig(t)
	seq := []byte("late")
	src, c, secret := r.beginMove(seq)
	dst := r.dial(vm)
	orphan := r.conn()
	if err := dst.write(sub(VMotionPeer, seq, secret)); err != nil {
		t.Fatal(err)
	}
	if err := dst.await(5*time.Second, func(ev event) (bool, error) {
		return ev.sub == VMotionPeerOK && bytes.Equal(ev.params, seq), nil
	}); err != nil {
		t.Fatalf("VMOTION-PEER after the opening: %v, want PEER-OK", err)
	}
	if _, err := orphan.Read(make([]byte, 1)); !errors.Is(err, ErrPeered) {
		t.Errorf("read of the Conn Accept gave for the target: %v, want ErrPeered", err)
	}
	if err := dst.Complete(seq); err != nil {
		t.Fatal(err)
	}
	sourceTold(t, src)
	src.Close()
	if _, err := dst.Write([]byte("on-target")); err != nil {
		t.Fatal(err)
	}
	if got := readWithin(t, c, 9); string(got) != "on-target" {
		t.Errorf("read %q from the target", got)
	}
	if _, err := c.Write([]byte("back")); err != nil {
		t.Fatal(err)
	}
	_ = dst.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got := readN(t, dst, 4); string(got) != "back" {
		t.Errorf("target read %q", got)
	}
}

// As net.Conn: a deadline that has passed fails a Read even while data is
// waiting, and the data is there once the deadline is lifted.
func TestReadDeadlinePassedWinsOverWaitingData(t *testing.T) {
	r := newRig(t)
	nc, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// Data before the VM is named waits in the Conn when Accept returns.
	if _, err := nc.Write(opening([]byte("early"))); err != nil {
		t.Fatal(err)
	}
	c := r.conn()
	_ = c.SetReadDeadline(time.Now().Add(-time.Second))
	n, err := c.Read(make([]byte, 8))
	var ne net.Error
	if n != 0 || !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline with data waiting: %d bytes, %v; want none and a timeout", n, err)
	}
	if got := readWithin(t, c, 5); string(got) != "early" {
		t.Errorf("read %q after the deadline was lifted", got)
	}
}

// opening is a host's opening as raw bytes, with data before the VM is
// named.
func opening(data []byte) []byte {
	var b []byte
	b = append(b, option(cmdWILL, optVMware)...)
	b = append(b, sub(DoProxy, []byte{vm.Direction}, []byte(vm.ServiceURI))...)
	b = append(b, data...)
	b = append(b, sub(VMVCUUID, []byte(vm.VCUUID))...)
	return append(b, sub(VMName, []byte(vm.Name))...)
}

// Only the source, which began the move, may abort it.
func TestVMotionAbortFromTheTargetIsIgnored(t *testing.T) {
	r := newRig(t)
	seq := []byte("s")
	_, c, secret := r.beginMove(seq)
	dst := r.peerTarget(seq, secret)
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	if err := dst.Abort(seq); err != nil {
		t.Fatal(err)
	}
	if err := dst.Complete(seq); err != nil {
		t.Fatal(err)
	}
	_ = dst.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got := readN(t, dst, 4); string(got) != "held" {
		t.Errorf("target read %q, want what was held", got)
	}
}

// BenchmarkHeldWrite is the cost of a write held during a move: the held
// data is one buffer whose length is its running total, so a write costs
// the same however much is held before it. A new move begins every
// maxHeld writes, the most one holds.
func BenchmarkHeldWrite(b *testing.B) {
	var c *Conn
	one := []byte{'x'}
	for i := 0; b.Loop(); i++ {
		if i%maxHeld == 0 {
			b.StopTimer()
			if c != nil {
				c.Close()
			}
			_, c, _ = newRig(b).beginMove([]byte("s"))
			b.StartTimer()
		}
		if _, err := c.Write(one); err != nil {
			b.Fatal(err)
		}
	}
}

// AcceptContext gives up an opening when its context ends, rather than
// waiting out HandshakeTimeout.
func TestAcceptContextEndsWithItsContext(t *testing.T) {
	p := &Proxy{HandshakeTimeout: time.Minute}
	a, b := net.Pipe()
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan error, 1)
	go func() {
		_, err := p.AcceptContext(ctx, a)
		got <- err
	}()
	cancel()
	select {
	case err := <-got:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("accept: %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("AcceptContext went on after its context ended")
	}
	if _, err := b.Write([]byte{cmdIAC}); !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("host write after the opening was given up: %v, want the connection closed", err)
	}
}

// The reader takes any bytes a host or a hostile peer sends: it never
// panics, never yields more data than it read, and gives every byte that is
// not part of a command back exactly once.
func FuzzReader(f *testing.F) {
	f.Add([]byte("plain"))
	f.Add([]byte{cmdIAC, cmdIAC, 'a'})
	f.Add(append(option(cmdWILL, optVMware), sub(DoProxy, []byte("S"), []byte("podvisor"))...))
	f.Add(sub(VMotionBegin, []byte{0xFF, 0, 0xFF}))
	f.Add([]byte{cmdIAC, cmdSB, optVMware, VMName, 'x', cmdIAC})
	f.Add([]byte{cmdIAC})
	f.Fuzz(func(t *testing.T, in []byte) {
		tr := newReader(bytes.NewReader(in))
		var data int
		for {
			ev, err := tr.next()
			if err != nil {
				break
			}
			data += len(ev.data)
			if len(ev.params) > maxSubneg {
				t.Fatalf("a subnegotiation of %d bytes", len(ev.params))
			}
		}
		if data > len(in) {
			t.Fatalf("%d data bytes from %d read", data, len(in))
		}
		if bytes.IndexByte(in, cmdIAC) < 0 && data != len(in) {
			t.Fatalf("%d data bytes from %d bytes without a command", data, len(in))
		}
	})
}

// What escape writes, the reader gives back as it was.
func TestEscapeRoundTrip(t *testing.T) {
	in := []byte{0, cmdIAC, cmdIAC, 'a', cmdSE, cmdIAC}
	tr := newReader(bytes.NewReader(escape(in)))
	var out []byte
	for {
		ev, err := tr.next()
		if err != nil {
			break
		}
		out = append(out, ev.data...)
	}
	if !bytes.Equal(out, in) {
		t.Fatalf("read back %x, want %x", out, in)
	}
}
