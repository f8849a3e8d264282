package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
)

// Line is the host side of one pod VM's guest channel on a network serial
// port: a TCP port on the loopback that QEMU's second serial port connects
// to (Port: direction client, again a second after a connection ends), as
// a vSphere host connects a pod VM's to the host agents' concentrator. It
// asks for a hello as the concentrator does (a resync on each connection,
// and again after every 10 s of silence before one: what reaches
// the port before the agent opens it is lost) and keeps what the agent
// sends for WaitRunning. It checks no token and serves no request: it is
// what a measurement needs to see a pod's container running, on the same
// reports the concentrator passes on.
type Line struct {
	// helloTimeout is the silence after which a hello is asked for again.
	helloTimeout time.Duration

	ln     net.Listener
	wg     sync.WaitGroup
	signal chan struct{} // a message was queued (capacity one)

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]bool
	queue  []message
}

// message is an envelope the agent sent, with the pod of the last hello
// on its connection ("" before one) and when it arrived.
type message struct {
	pod string
	env guestchannel.Envelope
	at  time.Time
}

// Listen opens a Line on a port of its own.
func Listen() (*Line, error) { return listen(helloTimeout) }

// helloTimeout is the concentrator's (hostagent.Concentrator.HelloTimeout).
const helloTimeout = 10 * time.Second

func listen(helloTimeout time.Duration) (*Line, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &Line{helloTimeout: helloTimeout, ln: ln, signal: make(chan struct{}, 1), conns: map[net.Conn]bool{}}
	l.wg.Add(1)
	go l.accept()
	return l, nil
}

// Port is QEMU's second serial port connected to the line (direction
// client), and again a second after the connection ends.
func (l *Line) Port() []string {
	port := strconv.Itoa(l.ln.Addr().(*net.TCPAddr).Port)
	return []string{"-chardev", "socket,id=channel,host=127.0.0.1,port=" + port + ",server=off,reconnect=1",
		"-serial", "chardev:channel"}
}

// Close stops listening and ends the connections.
func (l *Line) Close() error {
	l.mu.Lock()
	l.closed = true
	for c := range l.conns {
		_ = c.Close()
	}
	l.mu.Unlock()
	err := l.ln.Close()
	l.wg.Wait()
	return err
}

func (l *Line) accept() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			_ = c.Close()
			return
		}
		l.conns[c] = true
		l.mu.Unlock()
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.read(c)
			l.mu.Lock()
			delete(l.conns, c)
			l.mu.Unlock()
			_ = c.Close()
		}()
	}
}

// read asks for a hello and queues what the connection carries until it
// ends. A line carries what an earlier session cut short, and the bytes a
// guest wrote before the port was connected: a frame that does not decode
// is skipped.
func (l *Line) read(c net.Conn) {
	conn := guestchannel.NewConn(c)
	ask := func() error {
		_ = c.SetReadDeadline(time.Now().Add(l.helloTimeout))
		return conn.Send(guestchannel.TypeResync, "", nil)
	}
	if ask() != nil {
		return
	}
	greeted, pod := false, ""
	for {
		env, err := conn.Receive()
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout() && !greeted:
			if ask() != nil {
				return
			}
			continue
		case errors.Is(err, guestchannel.ErrMalformedFrame) || errors.Is(err, guestchannel.ErrFrameTooLarge):
			continue
		case err != nil:
			return
		}
		if env.Type == guestchannel.TypeHello {
			var h guestchannel.Hello
			pod = ""
			if env.Decode(&h) == nil {
				pod = h.PodUID
			}
			if !greeted {
				greeted = true
				_ = c.SetReadDeadline(time.Time{})
			}
		}
		l.mu.Lock()
		l.queue = append(l.queue, message{pod: pod, env: env, at: time.Now()})
		l.mu.Unlock()
		select {
		case l.signal <- struct{}{}:
		default:
		}
	}
}

// next waits for the next message the agent sent.
func (l *Line) next(ctx context.Context) (message, error) {
	for {
		l.mu.Lock()
		if len(l.queue) > 0 {
			m := l.queue[0]
			l.queue = l.queue[1:]
			l.mu.Unlock()
			return m, nil
		}
		l.mu.Unlock()
		select {
		case <-l.signal:
		case <-ctx.Done():
			return message{}, ctx.Err()
		}
	}
}

// WaitRunning waits until the agent of pod uid reports its container
// running, after a hello for that pod on the same connection (a hello of
// another pod, such as a template's in a VM its child has taken, does not
// count), and returns when that report arrived. It fails when the pod
// reports a reason it cannot go on (a disk that does not mount) or the
// container ends before it was seen running, and when ctx ends first.
func (l *Line) WaitRunning(ctx context.Context, uid, container string) (time.Time, error) {
	for {
		m, err := l.next(ctx)
		if err != nil {
			return time.Time{}, fmt.Errorf("pod %s's container %s not reported running: %w", uid, container, err)
		}
		if m.env.Type == guestchannel.TypeStatus && m.pod == uid {
			var st guestchannel.Status
			if err := m.env.Decode(&st); err != nil {
				return time.Time{}, fmt.Errorf("pod %s: status: %w", uid, err)
			}
			if st.Reason != "" {
				return time.Time{}, fmt.Errorf("pod %s: the agent reports %s (%s): %s", uid, st.Phase, st.Reason, st.Message)
			}
			for _, cs := range st.Containers {
				if cs.Name != container {
					continue
				}
				switch cs.State.Kind {
				case guestchannel.StateRunning:
					return m.at, nil
				case guestchannel.StateTerminated:
					return time.Time{}, fmt.Errorf("pod %s: container %s terminated before it was seen running: %s, exit code %d: %s",
						uid, container, cs.State.Reason, cs.State.ExitCode, cs.State.Message)
				}
			}
		}
	}
}
