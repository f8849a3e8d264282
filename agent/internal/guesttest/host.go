package guesttest

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
)

// Host is the host side of a guest's channel: it listens, accepts the
// agent's connections one at a time, folds status reports into a view and
// routes answers to requests.
type Host struct {
	t       testing.TB
	ln      net.Listener
	mu      sync.Mutex
	conn    *guestchannel.Conn
	Hellos  []guestchannel.Hello
	Reports []guestchannel.Status // every status received, in order
	view    guestchannel.Status
	changed chan struct{}
	reqs    map[string]chan guestchannel.Envelope
	nextID  int
	errs    []string
}

// Listen starts the host side on a unix socket.
func Listen(t testing.TB, sock string) *Host {
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	h := &Host{t: t, ln: ln, changed: make(chan struct{}), reqs: map[string]chan guestchannel.Envelope{}}
	t.Cleanup(func() { ln.Close(); h.Drop() })
	go h.accept()
	return h
}

func (h *Host) accept() {
	for {
		c, err := h.ln.Accept()
		if err != nil {
			return
		}
		conn := guestchannel.NewConn(c)
		h.mu.Lock()
		if h.conn != nil {
			h.conn.Close()
		}
		h.conn = conn
		h.mu.Unlock()
		go h.read(conn)
	}
}

func (h *Host) read(conn *guestchannel.Conn) {
	for {
		env, err := conn.Receive()
		if err != nil {
			return
		}
		h.mu.Lock()
		switch env.Type {
		case guestchannel.TypeHello:
			var hello guestchannel.Hello
			if err := env.Decode(&hello); err != nil {
				h.errs = append(h.errs, err.Error())
			}
			h.Hellos = append(h.Hellos, hello)
		case guestchannel.TypeStatus:
			var st guestchannel.Status
			if err := env.Decode(&st); err != nil {
				h.errs = append(h.errs, err.Error())
			}
			h.Reports = append(h.Reports, st)
			h.fold(st)
		default:
			if ch := h.reqs[env.ID]; ch != nil {
				ch <- env
			} else {
				h.errs = append(h.errs, fmt.Sprintf("unexpected %s %s: %s", env.Type, env.ID, env.Body))
			}
		}
		close(h.changed)
		h.changed = make(chan struct{})
		h.mu.Unlock()
	}
}

// fold applies a report to the view; h.mu held.
func (h *Host) fold(st guestchannel.Status) {
	if st.Full {
		h.view = st
		// The view is changed in place by later reports; the report kept in
		// Reports must not be.
		h.view.InitContainers = append([]guestchannel.ContainerStatus(nil), st.InitContainers...)
		h.view.Containers = append([]guestchannel.ContainerStatus(nil), st.Containers...)
		return
	}
	h.view.Seq, h.view.Phase, h.view.Reason, h.view.Message = st.Seq, st.Phase, st.Reason, st.Message
	merge := func(into []guestchannel.ContainerStatus, from []guestchannel.ContainerStatus) []guestchannel.ContainerStatus {
		for _, c := range from {
			found := false
			for i := range into {
				if into[i].Name == c.Name {
					into[i], found = c, true
				}
			}
			if !found {
				into = append(into, c)
			}
		}
		return into
	}
	h.view.InitContainers = merge(h.view.InitContainers, st.InitContainers)
	h.view.Containers = merge(h.view.Containers, st.Containers)
}

// Drop closes the current connection, as a host agent restart or a
// migration would.
func (h *Host) Drop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.conn != nil {
		h.conn.Close()
		h.conn = nil
	}
}

// View is the pod as the host sees it.
type View struct{ guestchannel.Status }

// Container returns the status of a container or init container by name.
func (v View) Container(name string) guestchannel.ContainerStatus {
	for _, c := range append(append([]guestchannel.ContainerStatus{}, v.InitContainers...), v.Containers...) {
		if c.Name == name {
			return c
		}
	}
	return guestchannel.ContainerStatus{}
}

// Wait polls the view until cond holds, failing after timeout.
func (h *Host) Wait(what string, timeout time.Duration, cond func(View) bool) View {
	h.t.Helper()
	deadline := time.After(timeout)
	for {
		h.mu.Lock()
		v := h.viewNow()
		ch := h.changed
		h.mu.Unlock()
		if cond(v) {
			return v
		}
		select {
		case <-ch:
		case <-deadline:
			h.t.Fatalf("waiting for %s: not within %s; view: %s", what, timeout, describe(v))
		}
	}
}

// Snapshot returns the current view and reports.
func (h *Host) Snapshot() (View, []guestchannel.Status, []guestchannel.Hello) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.viewNow(), append([]guestchannel.Status(nil), h.Reports...), append([]guestchannel.Hello(nil), h.Hellos...)
}

// viewNow copies the view, its containers included: fold changes them in
// place as reports come; h.mu held.
func (h *Host) viewNow() View {
	v := View{h.view}
	v.InitContainers = slices.Clone(h.view.InitContainers)
	v.Containers = slices.Clone(h.view.Containers)
	return v
}

func describe(v View) string {
	var b strings.Builder
	fmt.Fprintf(&b, "phase=%s reason=%s msg=%q", v.Phase, v.Reason, v.Message)
	for _, c := range append(append([]guestchannel.ContainerStatus{}, v.InitContainers...), v.Containers...) {
		fmt.Fprintf(&b, " | %s: %s/%s exit=%d restarts=%d ready=%v started=%v msg=%q", c.Name, c.State.Kind, c.State.Reason,
			c.State.ExitCode, c.RestartCount, c.Ready, c.Started, c.State.Message)
	}
	return b.String()
}

// Request sends a request and returns its id and the channel of answers.
func (h *Host) Request(typ string, body any) (string, <-chan guestchannel.Envelope) {
	h.t.Helper()
	h.mu.Lock()
	h.nextID++
	id := "r" + strconv.Itoa(h.nextID)
	ch := make(chan guestchannel.Envelope, 1024)
	h.reqs[id] = ch
	conn := h.conn
	h.mu.Unlock()
	if conn == nil {
		h.t.Fatalf("%s: no agent connected", typ)
	}
	if err := conn.Send(typ, id, body); err != nil {
		h.t.Fatalf("send %s: %v", typ, err)
	}
	return id, ch
}

// Send sends a message on the current connection.
func (h *Host) Send(typ, id string, body any) {
	h.t.Helper()
	if err := h.TrySend(typ, id, body); err != nil {
		h.t.Fatalf("send %s: %v", typ, err)
	}
}

// TrySend sends on the current connection and returns its error: for a
// message the agent may have made pointless by closing the connection
// first, as a real host's would fail and it would wait for the next one.
func (h *Host) TrySend(typ, id string, body any) error {
	h.mu.Lock()
	conn := h.conn
	h.mu.Unlock()
	return conn.Send(typ, id, body)
}

func next(t testing.TB, ch <-chan guestchannel.Envelope, timeout time.Duration) guestchannel.Envelope {
	t.Helper()
	select {
	case env := <-ch:
		return env
	case <-time.After(timeout):
		t.Fatalf("no answer within %s", timeout)
		return guestchannel.Envelope{}
	}
}

// Logs reads a log to its end; it returns the text and the stream's error.
func (h *Host) Logs(req guestchannel.LogsRequest) (string, string) {
	h.t.Helper()
	_, ch := h.Request(guestchannel.TypeLogs, req)
	var b strings.Builder
	for {
		env := next(h.t, ch, 10*time.Second)
		var c guestchannel.LogChunk
		if err := env.Decode(&c); err != nil {
			h.t.Fatalf("log chunk: %v", err)
		}
		b.Write(c.Data)
		if c.EOF {
			return b.String(), c.Error
		}
	}
}

// Follow starts a follow; Text returns what arrived so far.
type Follow struct {
	ID   string
	mu   sync.Mutex
	text strings.Builder
	eof  chan struct{}
}

// Follow follows a container's log.
func (h *Host) Follow(container string) *Follow {
	h.t.Helper()
	id, ch := h.Request(guestchannel.TypeLogs, guestchannel.LogsRequest{Container: container, Follow: true})
	f := &Follow{ID: id, eof: make(chan struct{})}
	go func() {
		for env := range ch {
			var c guestchannel.LogChunk
			_ = env.Decode(&c)
			f.mu.Lock()
			f.text.Write(c.Data)
			f.mu.Unlock()
			if c.EOF {
				close(f.eof)
				return
			}
		}
	}()
	return f
}

// Text is what the follow received so far.
func (f *Follow) Text() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.text.String()
}

// Ended is closed when the stream ended.
func (f *Follow) Ended() <-chan struct{} { return f.eof }

// WaitText polls a follow until it holds every want.
func (f *Follow) WaitText(t testing.TB, timeout time.Duration, want ...string) {
	t.Helper()
	ok := waitFor(timeout, func() bool {
		text := f.Text()
		for _, w := range want {
			if !strings.Contains(text, w) {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("follow: want %q within %s, got %q", want, timeout, f.Text())
	}
}

// ExecResult is what an exec returned.
type ExecResult struct {
	Stdout, Stderr string
	ExitCode       int32
	Error          string
}

// Exec runs a command in a container; stdin, when not nil, is sent in two
// pieces and closed.
func (h *Host) Exec(container string, stdin []byte, cmd ...string) ExecResult {
	h.t.Helper()
	id, ch := h.Request(guestchannel.TypeExec, guestchannel.ExecRequest{Container: container, Command: cmd, Stdin: stdin != nil})
	if stdin != nil {
		half := len(stdin) / 2
		h.Send(guestchannel.TypeExecStdin, id, guestchannel.ExecStdin{Data: stdin[:half]})
		h.Send(guestchannel.TypeExecStdin, id, guestchannel.ExecStdin{Data: stdin[half:], EOF: true})
	}
	var r ExecResult
	for {
		env := next(h.t, ch, 20*time.Second)
		switch env.Type {
		case guestchannel.TypeExecOutput:
			var o guestchannel.ExecOutput
			_ = env.Decode(&o)
			if o.Stream == "stderr" {
				r.Stderr += string(o.Data)
			} else {
				r.Stdout += string(o.Data)
			}
		case guestchannel.TypeExecExit:
			var x guestchannel.ExecExit
			_ = env.Decode(&x)
			r.ExitCode, r.Error = x.ExitCode, x.Error
			return r
		default:
			h.t.Fatalf("exec: unexpected %s: %s", env.Type, env.Body)
		}
	}
}

// Stop asks the agent to stop every container and waits for stopped.
func (h *Host) Stop(grace int64, timeout time.Duration) guestchannel.Stopped {
	h.t.Helper()
	_, ch := h.Request(guestchannel.TypeStop, guestchannel.StopRequest{GracePeriodSeconds: grace})
	env := next(h.t, ch, timeout)
	var s guestchannel.Stopped
	if env.Type != guestchannel.TypeStopped {
		h.t.Fatalf("stop: got %s: %s", env.Type, env.Body)
	}
	if err := env.Decode(&s); err != nil && len(env.Body) > 0 {
		h.t.Fatal(err)
	}
	return s
}

// Errors lists protocol errors the host saw.
func (h *Host) Errors() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.errs...)
}
