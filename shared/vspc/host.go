package vspc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// ErrNotNow is BeginVMotion's answer when the proxy asks for the move to
// wait (VMOTION-NOTNOW).
var ErrNotNow = errors.New("vspc: the proxy answered VMOTION-NOTNOW")

// HostConn is a host's connection of a VM's serial port to a proxy: what
// a vSphere host makes for a port whose backing names a proxy URI. Read and
// Write carry the port's data.
type HostConn struct {
	nc      net.Conn
	id      Identity
	opt     options
	wmu     sync.Mutex
	pr      *io.PipeReader
	pw      *io.PipeWriter
	replies chan event // the proxy's answers to this side's requests
	done    chan struct{}
}

// Dial opens a port's connection on nc: the opening of the VMware telnet
// extension, the proxy asked to proxy the port of id. It fails if the
// proxy refuses (WONT-PROXY) or says nothing within timeout.
func Dial(nc net.Conn, id Identity, timeout time.Duration) (*HostConn, error) {
	h := open(nc, id)
	if err := h.await(timeout, func(ev event) (bool, error) {
		switch ev.sub {
		case WillProxy:
			return true, nil
		case WontProxy:
			return true, errors.New("vspc: the proxy will not proxy the port (WONT-PROXY)")
		}
		return false, nil
	}); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// DialPeer opens a vMotion target's connection for the port that the
// source's BeginVMotion moves (seq, secret); Complete then tells the proxy
// to use it.
func DialPeer(nc net.Conn, id Identity, seq, secret []byte, timeout time.Duration) (*HostConn, error) {
	h := open(nc, id)
	if err := h.write(sub(VMotionPeer, seq, secret)); err != nil {
		h.Close()
		return nil, err
	}
	if err := h.await(timeout, func(ev event) (bool, error) {
		return ev.sub == VMotionPeerOK && bytes.Equal(ev.params, seq), nil
	}); err != nil {
		h.Close()
		return nil, fmt.Errorf("vspc: VMOTION-PEER: %w", err)
	}
	return h, nil
}

// open sends a connection's opening and starts reading it.
func open(nc net.Conn, id Identity) *HostConn {
	pr, pw := io.Pipe()
	h := &HostConn{nc: nc, id: id, opt: options{}, pr: pr, pw: pw, replies: make(chan event, 16), done: make(chan struct{})}
	dir := id.Direction
	if dir == 0 {
		dir = 'S'
	}
	opening := h.opt.say(cmdWILL, optVMware)
	opening = append(opening, sub(KnownSuboptions1, known)...)
	opening = append(opening, sub(DoProxy, []byte{dir}, []byte(id.ServiceURI))...)
	go h.read()
	_ = h.write(opening)
	return h
}

// await waits for the proxy's answer that done accepts.
func (h *HostConn) await(timeout time.Duration, done func(event) (bool, error)) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case ev := <-h.replies:
			if ok, err := done(ev); ok || err != nil {
				return err
			}
		case <-h.done:
			return errors.New("the connection ended")
		case <-t.C:
			return fmt.Errorf("no answer within %s", timeout)
		}
	}
}

// read reads the proxy's side until the connection ends.
func (h *HostConn) read() {
	defer close(h.done)
	tr := newReader(h.nc)
	for {
		ev, err := tr.next()
		if err != nil {
			h.pw.CloseWithError(err)
			return
		}
		switch {
		case ev.data != nil:
			if _, err := h.pw.Write(ev.data); err != nil {
				return
			}
		case !ev.isSub:
			if b := h.opt.answer(ev.verb, ev.option); b != nil {
				_ = h.write(b)
			}
		case ev.sub == GetVMVCUUID:
			_ = h.write(sub(VMVCUUID, []byte(h.id.VCUUID)))
		case ev.sub == GetVMName:
			_ = h.write(sub(VMName, []byte(h.id.Name)))
		case ev.sub == KnownSuboptions2 || ev.sub == UnknownSuboptionRcvd2:
		default:
			select {
			case h.replies <- ev:
			default: // nobody waits for it
			}
		}
	}
}

func (h *HostConn) write(b []byte) error {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	_, err := h.nc.Write(b)
	return err
}

// BeginVMotion asks the proxy whether the port may move, as the source
// host does before a vMotion: the secret of its VMOTION-GOAHEAD, or
// ErrNotNow, or an error when it says nothing within timeout (vSphere then
// fails the vMotion).
func (h *HostConn) BeginVMotion(seq []byte, timeout time.Duration) ([]byte, error) {
	if err := h.write(sub(VMotionBegin, seq)); err != nil {
		return nil, err
	}
	var secret []byte
	err := h.await(timeout, func(ev event) (bool, error) {
		switch {
		case ev.sub == VMotionNotNow:
			return true, ErrNotNow
		case ev.sub == VMotionGoahead && bytes.HasPrefix(ev.params, seq) && len(ev.params) > len(seq):
			secret = append([]byte(nil), ev.params[len(seq):]...)
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("vspc: VMOTION-BEGIN: %w", err)
	}
	return secret, nil
}

// Complete tells the proxy, on the target's connection, that the move is
// done: the port's data goes over this connection from now on.
func (h *HostConn) Complete(seq []byte) error { return h.write(sub(VMotionComplete, seq)) }

// Abort tells the proxy, on the source's connection, that the move failed.
func (h *HostConn) Abort(seq []byte) error { return h.write(sub(VMotionAbort, seq)) }

// Read reads what the proxy sends to the VM.
func (h *HostConn) Read(p []byte) (int, error) { return h.pr.Read(p) }

// Write sends what the VM writes.
func (h *HostConn) Write(p []byte) (int, error) {
	if err := h.write(escape(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close ends the connection.
func (h *HostConn) Close() error {
	err := h.nc.Close()
	h.pr.Close()
	return err
}
