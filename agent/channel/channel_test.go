package channel

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/podvisor/podvisor/agent/guestchannel"
)

// pod is a scripted Pod: the channel's session logic under the race
// detector, which the static agent binary of the guest tests cannot run.
type pod struct {
	mu      sync.Mutex
	status  guestchannel.Status
	changed chan struct{}
	seq     uint64
	follow  chan []byte
	// exec, when set, runs the execs instead of the echo below.
	exec func(ctx context.Context, stdin io.Reader, out func(string, []byte)) (int32, error)
}

func newPod() *pod {
	return &pod{changed: make(chan struct{}), follow: make(chan []byte, 8), status: guestchannel.Status{
		Phase:      guestchannel.PhasePending,
		Containers: []guestchannel.ContainerStatus{{Name: "a"}, {Name: "b"}},
	}}
}

func (p *pod) set(name, kind string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range p.status.Containers {
		if p.status.Containers[i].Name == name {
			p.status.Containers[i].State.Kind = kind
		}
	}
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *pod) Status() (guestchannel.Status, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.status
	s.Containers = append([]guestchannel.ContainerStatus(nil), s.Containers...)
	return s, p.changed
}

func (p *pod) NextSeq() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seq++
	return p.seq
}

func (p *pod) Logs(ctx context.Context, req guestchannel.LogsRequest, send func([]byte) error) error {
	for {
		select {
		case b := <-p.follow:
			if err := send(b); err != nil {
				return err
			}
		case <-ctx.Done():
			return nil
		}
	}
}

func (p *pod) Exec(ctx context.Context, req guestchannel.ExecRequest, stdin io.Reader, out func(string, []byte)) (int32, error) {
	if p.exec != nil {
		return p.exec(ctx, stdin, out)
	}
	in, _ := io.ReadAll(stdin)
	out("stdout", in)
	return 5, nil
}

func (p *pod) Stop(time.Duration) guestchannel.Stopped {
	p.set("a", guestchannel.StateTerminated)
	return guestchannel.Stopped{Killed: []string{"a"}}
}

// listenUnix listens on a new unix socket until the test ends, and returns
// the listener and the address a Server dials it by.
func listenUnix(t *testing.T) (net.Listener, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "c.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, "unix:" + sock
}

// serve runs srv until the test ends.
func serve(t *testing.T, srv *Server) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
}

func TestSession(t *testing.T) {
	ln, addr := listenUnix(t)
	p := newPod()
	serve(t, &Server{Addr: addr, Hello: guestchannel.Hello{PodUID: "u", BootID: "b1"}, Pod: p, MinRetry: 10 * time.Millisecond})

	accept := func() *guestchannel.Conn {
		t.Helper()
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return guestchannel.NewConn(c)
	}
	recv := func(c *guestchannel.Conn, typ string) guestchannel.Envelope {
		t.Helper()
		env, err := c.Receive()
		if err != nil || env.Type != typ {
			t.Fatalf("receive: %+v, %v; want %s", env, err, typ)
		}
		return env
	}
	var st guestchannel.Status
	c := accept()
	recv(c, guestchannel.TypeHello)
	if recv(c, guestchannel.TypeStatus).Decode(&st); !st.Full || len(st.Containers) != 2 {
		t.Fatalf("first status = %+v, want full", st)
	}
	firstSeq := st.Seq

	p.set("b", guestchannel.StateRunning)
	if recv(c, guestchannel.TypeStatus).Decode(&st); st.Full || len(st.Containers) != 1 || st.Containers[0].Name != "b" || st.Seq <= firstSeq {
		t.Fatalf("partial = %+v, want only b with a higher seq", st)
	}

	// Logs stream until cancelled; exec takes stdin; unknown types get an error.
	c.Send(guestchannel.TypeLogs, "l1", guestchannel.LogsRequest{Container: "a", Follow: true})
	p.follow <- []byte("line\n")
	var chunk guestchannel.LogChunk
	if recv(c, guestchannel.TypeLogChunk).Decode(&chunk); string(chunk.Data) != "line\n" {
		t.Fatalf("chunk = %+v", chunk)
	}
	c.Send(guestchannel.TypeCancel, "", guestchannel.Cancel{Target: "l1"})
	env := recv(c, guestchannel.TypeLogChunk)
	if env.Decode(&chunk); !chunk.EOF || env.ID != "l1" {
		t.Fatalf("after cancel: %+v", chunk)
	}
	c.Send(guestchannel.TypeExec, "e1", guestchannel.ExecRequest{Container: "a", Command: []string{"cat"}, Stdin: true})
	c.Send(guestchannel.TypeExecStdin, "e1", guestchannel.ExecStdin{Data: []byte("in"), EOF: true})
	var out guestchannel.ExecOutput
	if recv(c, guestchannel.TypeExecOutput).Decode(&out); string(out.Data) != "in" {
		t.Fatalf("exec output = %+v", out)
	}
	var exit guestchannel.ExecExit
	if recv(c, guestchannel.TypeExecExit).Decode(&exit); exit.ExitCode != 5 {
		t.Fatalf("exec exit = %+v", exit)
	}
	c.Send("reboot", "x1", nil)
	if env := recv(c, guestchannel.TypeError); env.ID != "x1" {
		t.Fatalf("error for unknown type: %+v", env)
	}

	// Stop: the statuses it led to come before stopped.
	c.Send(guestchannel.TypeStop, "s1", guestchannel.StopRequest{GracePeriodSeconds: 1})
	if recv(c, guestchannel.TypeStatus).Decode(&st); st.Containers[0].State.Kind != guestchannel.StateTerminated {
		t.Fatalf("status before stopped = %+v", st)
	}
	var stopped guestchannel.Stopped
	if recv(c, guestchannel.TypeStopped).Decode(&stopped); len(stopped.Killed) != 1 {
		t.Fatalf("stopped = %+v", stopped)
	}

	// A dropped connection is redialled: hello and a full status again.
	c.Close()
	c = accept()
	defer c.Close()
	recv(c, guestchannel.TypeHello)
	if recv(c, guestchannel.TypeStatus).Decode(&st); !st.Full || st.Containers[1].State.Kind != guestchannel.StateRunning {
		t.Fatalf("status after redial = %+v, want full with b running", st)
	}
}

// TestResyncOnASerialLine: on a serial port the agent's end stays open
// while the host side behind it changes (the hypervisor's connection to a
// concentrator made again), so the agent cannot see a new connection; the
// host side's resync gets hello and a full status on the same line, and
// ends the requests the host side before it had made.
func TestResyncOnASerialLine(t *testing.T) {
	master, slave, err := pty.Open()
	if err != nil {
		t.Fatalf("open a pseudo-terminal (every Linux has /dev/ptmx): %v", err)
	}
	defer master.Close()
	// The agent opens the device itself, by name; this end only keeps the
	// line open, as a hypervisor's serial port is.
	defer slave.Close()
	p := newPod()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		(&Server{Addr: "serial:" + slave.Name(), Hello: guestchannel.Hello{PodUID: "u", BootID: "b1", ChannelToken: "tok"}, Pod: p,
			MinRetry: 10 * time.Millisecond}).Run(ctx)
	}()
	defer func() { cancel(); master.Close(); <-done }()

	c := guestchannel.NewConn(master)
	recv := func(typ string) guestchannel.Envelope {
		t.Helper()
		for {
			env, err := c.Receive()
			if err != nil {
				t.Fatalf("receive %s: %v", typ, err)
			}
			if env.Type == typ {
				return env
			}
			if typ == guestchannel.TypeHello || env.Type != guestchannel.TypeStatus {
				t.Fatalf("receive: %+v; want %s", env, typ)
			}
		}
	}
	var hello guestchannel.Hello
	if recv(guestchannel.TypeHello).Decode(&hello); hello.ChannelToken != "tok" || hello.PodUID != "u" {
		t.Fatalf("hello = %+v, want the pod's uid and channel token", hello)
	}
	var st guestchannel.Status
	if recv(guestchannel.TypeStatus).Decode(&st); !st.Full {
		t.Fatalf("first status = %+v, want full", st)
	}
	first := st.Seq
	if err := c.Send(guestchannel.TypeLogs, "l1", guestchannel.LogsRequest{Container: "a", Follow: true}); err != nil {
		t.Fatal(err)
	}
	p.follow <- []byte("line\n")
	recv(guestchannel.TypeLogChunk)

	// The host side changes behind the line: a change made meanwhile is in
	// the full status the resync brings, and the follow it had asked for
	// ends.
	p.set("b", guestchannel.StateRunning)
	// What a reconnection may leave on the line first: the end of a frame
	// cut short. It is skipped.
	if _, err := master.Write([]byte(`e":"status","body":{"fu` + "\n")); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(guestchannel.TypeResync, "", nil); err != nil {
		t.Fatal(err)
	}
	// After the resync, in whatever order the session's goroutines send
	// them: the follow's end, hello, then a full status.
	var chunk guestchannel.LogChunk
	sawEnd, sawHello, sawFull := false, false, false
	for !sawEnd || !sawFull {
		env, err := c.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch env.Type {
		case guestchannel.TypeLogChunk:
			if env.Decode(&chunk); chunk.EOF && env.ID == "l1" {
				sawEnd = true
			}
		case guestchannel.TypeHello:
			sawHello = true
		case guestchannel.TypeStatus:
			if env.Decode(&st); !st.Full {
				continue // b's partial report, made before the resync
			}
			if !sawHello || st.Seq <= first || st.Containers[1].State.Kind != guestchannel.StateRunning {
				t.Fatalf("full status after resync = %+v (hello before it: %v), want it after a hello, newer than %d, with b running", st, sawHello, first)
			}
			sawFull = true
		default:
			t.Fatalf("after resync: %+v", env)
		}
	}
	// The session goes on on the same line: partial reports follow (b's
	// may still be on its way, or come with a's: it was made before the
	// resync).
	p.set("a", guestchannel.StateRunning)
	for sawA := false; !sawA; {
		if recv(guestchannel.TypeStatus).Decode(&st); st.Full {
			t.Fatalf("status after resync = %+v, want a partial one", st)
		}
		for _, c := range st.Containers {
			sawA = sawA || c.Name == "a" && c.State.Kind == guestchannel.StateRunning
		}
	}
}

// BeforeGreet runs before every hello; once it fails, a connection gets
// no hello and is closed (a template's VM taken by a forked child must
// never greet as the template).
func TestBeforeGreetFailingEndsTheSessionWithoutHello(t *testing.T) {
	ln, addr := listenUnix(t)
	var refuse atomic.Bool
	calls := atomic.Int32{}
	serve(t, &Server{Addr: addr, Hello: guestchannel.Hello{PodUID: "template"}, Pod: newPod(), MinRetry: 10 * time.Millisecond,
		BeforeGreet: func() error {
			calls.Add(1)
			if refuse.Load() {
				return errors.New("forked")
			}
			return nil
		}})

	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if env, err := guestchannel.NewConn(c).Receive(); err != nil || env.Type != guestchannel.TypeHello {
		t.Fatalf("first message %+v, %v; want hello", env, err)
	}
	refuse.Store(true)
	c.Close()
	c2, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if env, err := guestchannel.NewConn(c2).Receive(); err == nil {
		t.Fatalf("received %s %s after BeforeGreet failed, want the connection closed without a hello", env.Type, env.Body)
	}
	if n := calls.Load(); n < 2 {
		t.Fatalf("BeforeGreet called %d times, want once per connection", n)
	}
}

// startSession runs a Server for p on a new socket until the test ends and
// returns the host side's end of its first connection, hello and full
// status read, its reads bounded by a deadline (a test fails rather than
// hang on a channel the agent stopped serving).
func startSession(t *testing.T, p *pod) (*guestchannel.Conn, net.Conn) {
	t.Helper()
	ln, addr := listenUnix(t)
	serve(t, &Server{Addr: addr, Hello: guestchannel.Hello{PodUID: "u", BootID: "b1"}, Pod: p, MinRetry: 10 * time.Millisecond})
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	c := guestchannel.NewConn(nc)
	for _, typ := range []string{guestchannel.TypeHello, guestchannel.TypeStatus} {
		if env, err := c.Receive(); err != nil || env.Type != typ {
			t.Fatalf("receive: %+v, %v; want %s", env, err, typ)
		}
	}
	return c, nc
}

// untilAnswered reads the channel until every id of want has had a message
// of its type, and returns those messages.
func untilAnswered(t *testing.T, c *guestchannel.Conn, want map[string]string) map[string]guestchannel.Envelope {
	t.Helper()
	got := map[string]guestchannel.Envelope{}
	for len(got) < len(want) {
		env, err := c.Receive()
		if err != nil {
			t.Fatalf("waiting for %v (have %v): %v", want, got, err)
		}
		if typ, ok := want[env.ID]; ok && env.Type == typ {
			got[env.ID] = env
		}
	}
	return got
}

// An exec's command that reads its input late does not hold the channel:
// the agent queues the input and serves the channel's other requests (a
// stop here) meanwhile, and the command gets all of it once it reads.
func TestAnExecReadingItsInputLateDoesNotHoldTheChannel(t *testing.T) {
	p := newPod()
	read := make(chan struct{})
	p.exec = func(ctx context.Context, stdin io.Reader, out func(string, []byte)) (int32, error) {
		select {
		case <-read:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		in, err := io.ReadAll(stdin)
		out("stdout", []byte(fmt.Sprint(len(in))))
		return 0, err
	}
	c, _ := startSession(t, p)
	chunk := []byte(strings.Repeat("i", guestchannel.ChunkSize))
	c.Send(guestchannel.TypeExec, "e1", guestchannel.ExecRequest{Container: "a", Command: []string{"cat"}, Stdin: true})
	for range 4 {
		c.Send(guestchannel.TypeExecStdin, "e1", guestchannel.ExecStdin{Data: chunk})
	}
	c.Send(guestchannel.TypeExecStdin, "e1", guestchannel.ExecStdin{EOF: true})
	c.Send(guestchannel.TypeStop, "s1", guestchannel.StopRequest{GracePeriodSeconds: 1})
	// Stopped while the command has read nothing of its input yet.
	untilAnswered(t, c, map[string]string{"s1": guestchannel.TypeStopped})
	close(read)
	got := untilAnswered(t, c, map[string]string{"e1": guestchannel.TypeExecOutput})
	var out guestchannel.ExecOutput
	if got["e1"].Decode(&out); string(out.Data) != fmt.Sprint(4*len(chunk)) {
		t.Fatalf("the command read %s bytes of its input, want %d", out.Data, 4*len(chunk))
	}
	var exit guestchannel.ExecExit
	if untilAnswered(t, c, map[string]string{"e1": guestchannel.TypeExecExit})["e1"].Decode(&exit); exit.Error != "" {
		t.Fatalf("exec exit = %+v", exit)
	}
}

// An exec's command that does not read its input fails alone once more
// than maxExecInput of it waits: its exit names why, and the channel goes
// on serving (a stop, sent after all that input, is answered).
func TestAnExecNotReadingItsInputFailsAlone(t *testing.T) {
	p := newPod()
	p.exec = func(ctx context.Context, stdin io.Reader, out func(string, []byte)) (int32, error) {
		<-ctx.Done() // never reads; ended as the agent ends a command, by its context
		return 137, nil
	}
	exit := execFedThenStopped(t, p, "sleep", maxExecInput+2*guestchannel.ChunkSize)
	if !strings.Contains(exit.Error, "does not read its input") {
		t.Fatalf("exec exit = %+v, want an error saying the command does not read its input", exit)
	}
}

// An exec's command that ends while the host still sends its input (head
// -c 10, or true, fed more than maxExecInput) exits as it did: the input
// it left unread is dropped once its side of the input is closed, not
// counted against it as input it does not read.
func TestAnExecEndingBeforeItsInputDoesNotFailForIt(t *testing.T) {
	for _, read := range []int{10, 0} {
		t.Run(fmt.Sprint("reads ", read), func(t *testing.T) {
			p := newPod()
			_, stopped := p.Status()
			p.exec = func(ctx context.Context, stdin io.Reader, out func(string, []byte)) (int32, error) {
				if _, err := io.ReadFull(stdin, make([]byte, read)); err != nil {
					return 0, err
				}
				// The command exited: the supervisor's copy into its
				// input fails and closes stdin.
				stdin.(io.Closer).Close()
				// Reaping it takes a while, meanwhile all the input
				// the host sends arrives.
				select {
				case <-stopped:
				case <-ctx.Done():
				}
				return 0, nil
			}
			if exit := execFedThenStopped(t, p, "head", 2*maxExecInput); exit.ExitCode != 0 || exit.Error != "" {
				t.Fatalf("exec exit = %+v, want 0 and no error", exit)
			}
		})
	}
}

// execFedThenStopped runs an exec of command on p with input bytes of
// stdin (whole chunks) sent after it, then a stop, and returns the exec's
// exit once both are answered.
func execFedThenStopped(t *testing.T, p *pod, command string, input int) guestchannel.ExecExit {
	t.Helper()
	c, _ := startSession(t, p)
	chunk := []byte(strings.Repeat("i", guestchannel.ChunkSize))
	sent := make(chan error, 1)
	go func() { // the host side's writes must not wait on the test's reads
		err := c.Send(guestchannel.TypeExec, "e1", guestchannel.ExecRequest{Container: "a", Command: []string{command}, Stdin: true})
		for i := 0; err == nil && i < input/len(chunk); i++ {
			err = c.Send(guestchannel.TypeExecStdin, "e1", guestchannel.ExecStdin{Data: chunk})
		}
		if err == nil {
			err = c.Send(guestchannel.TypeStop, "s1", guestchannel.StopRequest{GracePeriodSeconds: 1})
		}
		sent <- err
	}()
	got := untilAnswered(t, c, map[string]string{"e1": guestchannel.TypeExecExit, "s1": guestchannel.TypeStopped})
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	var exit guestchannel.ExecExit
	got["e1"].Decode(&exit)
	return exit
}

// An exec with a stdin window gets any amount of input at the pace its
// command reads it: the host side here sends as much as the window allows
// (never more: the agent would fail the exec, its queue over the window)
// and waits for exec.stdin.ack for more. 4 MiB through a command that
// reads slowly arrive whole, and the acknowledgements count every byte in
// fewer messages than the input's pieces.
func TestAnExecWithAStdinWindowGetsAllItsInputAtItsPace(t *testing.T) {
	const total = 4 << 20
	p := newPod()
	p.exec = func(ctx context.Context, stdin io.Reader, out func(string, []byte)) (int32, error) {
		h := sha256.New()
		buf := make([]byte, 16<<10)
		n := 0
		for {
			// A slow reader: the sender is held by the window, not by
			// the guest's memory.
			time.Sleep(200 * time.Microsecond)
			k, err := stdin.Read(buf)
			h.Write(buf[:k])
			n += k
			if err == io.EOF {
				break
			}
			if err != nil {
				return 1, err
			}
		}
		out("stdout", fmt.Appendf(nil, "%d %x", n, h.Sum(nil)))
		return 0, nil
	}
	input := make([]byte, total)
	rand.New(rand.NewSource(1)).Read(input)
	out, exit, acks := execWithWindow(t, p, input, 256<<10)
	if exit.Error != "" || exit.ExitCode != 0 {
		t.Fatalf("exec exit = %+v, want 0 and no error", exit)
	}
	if want := fmt.Sprintf("%d %x", total, sha256.Sum256(input)); out != want {
		t.Fatalf("the command read %q, want %q", out, want)
	}
	if len(acks) == 0 || acks[len(acks)-1] != total {
		t.Fatalf("last acknowledgement %v, want %d", acks[max(len(acks)-1, 0):], total)
	}
	if chunks := total / guestchannel.ChunkSize; len(acks) >= chunks {
		t.Errorf("%d acknowledgements for %d pieces of input, want them coalesced", len(acks), chunks)
	}
	t.Logf("%d bytes in %d acknowledgements", total, len(acks))
}

// A command that closes its stdin and goes on running (the agent's copy
// into its pipe fails) does not hold its sender: the input it will never
// read is dropped and acknowledged, so all of it is sent and the command's
// exit ends the exec as usual.
func TestAnExecClosingItsInputEarlyDoesNotHoldTheSender(t *testing.T) {
	const total = 1 << 20
	p := newPod()
	allSent := make(chan struct{})
	p.exec = func(ctx context.Context, stdin io.Reader, out func(string, []byte)) (int32, error) {
		if _, err := io.ReadFull(stdin, make([]byte, 10)); err != nil {
			return 1, err
		}
		stdin.(io.Closer).Close()
		select { // runs on until all the input is acknowledged
		case <-allSent:
		case <-ctx.Done():
			return 1, ctx.Err()
		}
		return 3, nil
	}
	_, exit, acks := execWithWindow(t, p, make([]byte, total), 64<<10, func(taken uint64) {
		if taken == total {
			close(allSent)
		}
	})
	if exit.Error != "" || exit.ExitCode != 3 {
		t.Fatalf("exec exit = %+v, want the command's 3 and no error", exit)
	}
	if acks[len(acks)-1] != total {
		t.Fatalf("acknowledgements %v, want the last one at %d", acks, total)
	}
}

// execWithWindow runs an exec of p with input sent under a stdin window,
// as a host side that keeps to it does, and returns its output, its exit
// and the acknowledgements in the order they came (each larger than the
// one before; onAck sees each).
func execWithWindow(t *testing.T, p *pod, input []byte, window int, onAck ...func(taken uint64)) (string, guestchannel.ExecExit, []uint64) {
	t.Helper()
	c, _ := startSession(t, p)
	if err := c.Send(guestchannel.TypeExec, "e1", guestchannel.ExecRequest{Container: "a", Command: []string{"cat"}, Stdin: true, StdinWindow: window}); err != nil {
		t.Fatal(err)
	}
	// The sender: what the window allows, then it waits for an
	// acknowledgement.
	acked := make(chan uint64, 1024)
	sent := make(chan error, 1)
	go func() {
		total, w := uint64(len(input)), uint64(window)
		var off, ack uint64
		for off < total {
			for off-ack >= w {
				ack = max(ack, <-acked)
			}
			n := min(uint64(guestchannel.ChunkSize), w-(off-ack), total-off)
			if err := c.Send(guestchannel.TypeExecStdin, "e1", guestchannel.ExecStdin{Data: input[off : off+n]}); err != nil {
				sent <- err
				return
			}
			off += n
		}
		sent <- c.Send(guestchannel.TypeExecStdin, "e1", guestchannel.ExecStdin{EOF: true})
	}()
	var acks []uint64
	var out []byte
	for {
		env, err := c.Receive()
		if err != nil {
			t.Fatalf("after %d acknowledgements: %v", len(acks), err)
		}
		if env.ID != "e1" {
			continue
		}
		switch env.Type {
		case guestchannel.TypeExecStdinAck:
			var a guestchannel.ExecStdinAck
			if err := env.Decode(&a); err != nil {
				t.Fatal(err)
			}
			if len(acks) > 0 && a.Taken <= acks[len(acks)-1] {
				t.Fatalf("acknowledgement %d after %d: the count must grow", a.Taken, acks[len(acks)-1])
			}
			acks = append(acks, a.Taken)
			acked <- a.Taken
			for _, f := range onAck {
				f(a.Taken)
			}
		case guestchannel.TypeExecOutput:
			var o guestchannel.ExecOutput
			if err := env.Decode(&o); err != nil {
				t.Fatal(err)
			}
			out = append(out, o.Data...)
		case guestchannel.TypeExecExit:
			var exit guestchannel.ExecExit
			if err := env.Decode(&exit); err != nil {
				t.Fatal(err)
			}
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
			return string(out), exit, acks
		}
	}
}

// A host that asks for a window and sends more than it allows fails the
// exec, with the reason; the channel goes on serving (a stop is answered).
func TestAnExecWhoseHostIgnoresTheWindowFails(t *testing.T) {
	const window = 64 << 10
	p := newPod()
	p.exec = func(ctx context.Context, stdin io.Reader, out func(string, []byte)) (int32, error) {
		<-ctx.Done() // never reads
		return 137, nil
	}
	c, _ := startSession(t, p)
	chunk := []byte(strings.Repeat("i", guestchannel.ChunkSize))
	go func() {
		_ = c.Send(guestchannel.TypeExec, "e1", guestchannel.ExecRequest{Container: "a", Command: []string{"sleep"}, Stdin: true, StdinWindow: window})
		for range window/len(chunk) + 1 { // one piece too many, no acknowledgement waited for
			_ = c.Send(guestchannel.TypeExecStdin, "e1", guestchannel.ExecStdin{Data: chunk})
		}
		_ = c.Send(guestchannel.TypeStop, "s1", guestchannel.StopRequest{GracePeriodSeconds: 1})
	}()
	got := untilAnswered(t, c, map[string]string{"e1": guestchannel.TypeExecExit, "s1": guestchannel.TypeStopped})
	var exit guestchannel.ExecExit
	if got["e1"].Decode(&exit); !strings.Contains(exit.Error, "more input than the stdin window allows") {
		t.Fatalf("exec exit = %+v, want an error saying the host sent more than the window", exit)
	}
}

// A window over MaxExecStdinWindow is refused; the agent's hello
// announces the capability whatever the agent's command put in Hello.
func TestTheStdinWindowIsAnnouncedAndBounded(t *testing.T) {
	ln, addr := listenUnix(t)
	serve(t, &Server{Addr: addr, Hello: guestchannel.Hello{PodUID: "u", BootID: "b1"}, Pod: newPod(), MinRetry: 10 * time.Millisecond})
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	c := guestchannel.NewConn(nc)
	env, err := c.Receive()
	var hello guestchannel.Hello
	if err != nil || env.Decode(&hello) != nil || !hello.Can(guestchannel.CapExecStdinAck) {
		t.Fatalf("hello %s (%v), want it to announce %s", env.Body, err, guestchannel.CapExecStdinAck)
	}
	c.Send(guestchannel.TypeExec, "e1", guestchannel.ExecRequest{Container: "a", Command: []string{"cat"}, Stdin: true, StdinWindow: guestchannel.MaxExecStdinWindow + 1})
	var exit guestchannel.ExecExit
	if untilAnswered(t, c, map[string]string{"e1": guestchannel.TypeExecExit})["e1"].Decode(&exit); !strings.Contains(exit.Error, "window") {
		t.Fatalf("exec exit = %+v, want the window refused", exit)
	}
}

// A host side that does not take the agent's frames for a while does not
// stop the agent reading its channel: an exec's acknowledgements wait in
// the exec's own goroutine, not in the read loop, which goes on serving
// (a stop here) meanwhile. The acknowledgement that waited goes out once
// the host side reads again, and the exec goes on (a cancel ends it).
func TestTheReadLoopServesWhileAnExecsAcknowledgementWaits(t *testing.T) {
	p := newPod()
	_, stopped := p.Status()
	inputClosed, cancelled := make(chan struct{}), make(chan struct{})
	p.exec = func(ctx context.Context, stdin io.Reader, out func(string, []byte)) (int32, error) {
		if _, err := io.ReadFull(stdin, make([]byte, 1)); err != nil {
			return 1, err
		}
		stdin.(io.Closer).Close() // what the host sends from now on is dropped, and acknowledged
		close(inputClosed)
		<-ctx.Done()
		close(cancelled)
		return 0, nil
	}
	c := pipeSession(t, p)
	if err := c.Send(guestchannel.TypeExec, "e1", guestchannel.ExecRequest{Container: "a", Command: []string{"head"}, Stdin: true, StdinWindow: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(guestchannel.TypeExecStdin, "e1", guestchannel.ExecStdin{Data: []byte("ab")}); err != nil {
		t.Fatal(err)
	}
	<-inputClosed
	// The exec's goroutine reported the input taken: the host side reads
	// that report, then nothing more for now.
	env, err := c.Receive()
	var a guestchannel.ExecStdinAck
	if err != nil || env.Type != guestchannel.TypeExecStdinAck || env.Decode(&a) != nil || a.Taken != 2 {
		t.Fatalf("received %+v (%v), want exec.stdin.ack {taken: 2}", env, err)
	}
	chunk := []byte(strings.Repeat("i", guestchannel.ChunkSize))
	sent := make(chan error, 1)
	go func() { // the host side's writes must not wait on the test
		err := c.Send(guestchannel.TypeExecStdin, "e1", guestchannel.ExecStdin{Data: chunk}) // dropped: an acknowledgement the host does not take
		if err == nil {
			err = c.Send(guestchannel.TypeStop, "s1", guestchannel.StopRequest{GracePeriodSeconds: 1})
		}
		sent <- err
	}()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the stop was not served while an acknowledgement waited for the host side")
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	// The host side reads again: the acknowledgement and the stop's
	// answer come.
	want := uint64(2 + len(chunk))
	for acked, answered := false, false; !acked || !answered; {
		env, err := c.Receive()
		if err != nil {
			t.Fatalf("waiting for the acknowledgement of %d and the stop's answer: %v", want, err)
		}
		switch env.Type {
		case guestchannel.TypeExecStdinAck:
			if err := env.Decode(&a); err != nil || a.Taken != want {
				t.Fatalf("acknowledgement %+v (%v), want %d", a, err, want)
			}
			acked = true
		case guestchannel.TypeStopped:
			answered = true
		}
	}
	if err := c.Send(guestchannel.TypeCancel, "", guestchannel.Cancel{Target: "e1"}); err != nil {
		t.Fatal(err)
	}
	untilAnswered(t, c, map[string]string{"e1": guestchannel.TypeExecExit})
	<-cancelled
}

// pipeSession serves p on one end of an in-memory pipe until the test
// ends and returns the host side's end, hello and full status read. A
// pipe holds every write until the other end reads it: a host side that
// does not read takes nothing at all. Reads are bounded by a deadline.
func pipeSession(t *testing.T, p *pod) *guestchannel.Conn {
	t.Helper()
	host, agent := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = (&Server{Addr: "pipe", Hello: guestchannel.Hello{PodUID: "u", BootID: "b1"}, Pod: p}).serve(ctx, agent)
	}()
	t.Cleanup(func() { cancel(); host.Close(); <-done })
	_ = host.SetReadDeadline(time.Now().Add(20 * time.Second))
	c := guestchannel.NewConn(host)
	for _, typ := range []string{guestchannel.TypeHello, guestchannel.TypeStatus} {
		if env, err := c.Receive(); err != nil || env.Type != typ {
			t.Fatalf("receive: %+v, %v; want %s", env, err, typ)
		}
	}
	return c
}
