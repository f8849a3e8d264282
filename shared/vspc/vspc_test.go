package vspc

import (
	"bytes"
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
	t     *testing.T
	ln    net.Listener
	p     *Proxy
	conns chan *Conn
	errs  chan error
}

func newRig(t *testing.T) *rig { return newRigTimeout(t, 5*time.Second) }

func newRigTimeout(t *testing.T, handshake time.Duration) *rig {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, ln: ln, p: &Proxy{HandshakeTimeout: handshake}, conns: make(chan *Conn, 4), errs: make(chan error, 4)}
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
	// The source's connection is closed by the proxy.
	_ = src.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(src); err != nil {
		t.Errorf("source connection: %v, want it closed", err)
	}
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
	src := r.dial(vm)
	c := r.conn()
	seq := []byte("seq-1")
	secret, err := src.BeginVMotion(seq, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// A second move while one is under way waits.
	if _, err := src.BeginVMotion([]byte("seq-2"), 5*time.Second); !errors.Is(err, ErrNotNow) {
		t.Errorf("second VMOTION-BEGIN: %v, want NOTNOW", err)
	}
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
