// Package channel is the agent's side of the guest channel: it dials the
// host (BootConfig.Channel), retrying with back-off for as long as the
// agent lives, and on every connection sends hello and a full status, then
// a partial status whenever the pod's state changes, while it serves the
// host's requests (logs, exec, stop, cancel). The host keeps nothing it
// cannot rebuild from a new connection's hello and full status.
package channel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/transport"
)

// Pod is what the channel serves.
type Pod interface {
	// Status returns the current state and a channel closed at its next
	// change.
	Status() (guestchannel.Status, <-chan struct{})
	// NextSeq numbers a status report.
	NextSeq() uint64
	// Logs streams a container's log to send until done.
	Logs(ctx context.Context, req guestchannel.LogsRequest, send func([]byte) error) error
	// Exec runs a command in a container and returns its exit code.
	Exec(ctx context.Context, req guestchannel.ExecRequest, stdin io.Reader, out func(stream string, data []byte)) (int32, error)
	// Stop stops every container within grace.
	Stop(grace time.Duration) guestchannel.Stopped
}

// KeyWaiter is what a Pod implements when its ephemeral disk is encrypted
// (PodSpec.Encryption): while KeyRequest returns one, every hello carries
// it, and the host's disk.key answer goes to DiskKey.
type KeyWaiter interface {
	KeyRequest() *guestchannel.KeyRequest
	DiskKey(guestchannel.DiskKey)
}

// Server dials the host and serves it.
type Server struct {
	// Addr is BootConfig.Channel.
	Addr  string
	Hello guestchannel.Hello
	Pod   Pod
	Log   *slog.Logger
	// MinRetry and MaxRetry bound the redial back-off (100 ms and 2 s when
	// zero).
	MinRetry, MaxRetry time.Duration
	// BeforeGreet, when set, runs before every hello (a connection's
	// first, and each resync's); an error ends the session instead of the
	// hello. A template's agent checks there whether its VM is a forked
	// child's now, whose hello must not be the template's.
	BeforeGreet func() error
}

// Run dials and serves until ctx ends.
func (s *Server) Run(ctx context.Context) {
	minRetry, maxRetry := s.MinRetry, s.MaxRetry
	if minRetry <= 0 {
		minRetry = 100 * time.Millisecond
	}
	if maxRetry <= 0 {
		maxRetry = 2 * time.Second
	}
	log := s.log()
	retry := minRetry
	for ctx.Err() == nil {
		rwc, err := Dial(s.Addr)
		if err == nil {
			retry = minRetry
			log.Info("channel connected", "addr", s.Addr)
			err = s.serve(ctx, rwc)
			log.Info("channel closed", "err", err)
		} else {
			log.Debug("channel dial", "addr", s.Addr, "err", err)
		}
		select {
		case <-time.After(retry):
		case <-ctx.Done():
		}
		retry = min(retry*2, maxRetry)
	}
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

// Dial connects to a channel address: unix:<path>, vsock:<cid>:<port> or
// serial:<device> (opened in raw mode, so the frames pass unchanged). See
// package transport.
func Dial(addr string) (io.ReadWriteCloser, error) {
	return transport.Dial(context.Background(), addr)
}

// session is one connection.
type session struct {
	s    *Server
	conn *guestchannel.Conn
	mu   sync.Mutex
	reqs map[string]context.CancelCauseFunc
	ins  map[string]*execInput
	wg   sync.WaitGroup
	// flush asks pushStatus to send what changed now and close the given
	// channel once sent: a stopped answer follows the statuses it implies.
	flush chan chan struct{}
}

func (s *Server) serve(ctx context.Context, rwc io.ReadWriteCloser) error {
	ctx, cancel := context.WithCancel(ctx)
	conn := guestchannel.NewConn(rwc)
	ss := &session{s: s, conn: conn, reqs: map[string]context.CancelCauseFunc{}, ins: map[string]*execInput{}, flush: make(chan chan struct{})}
	defer func() {
		cancel()
		conn.Close()
		ss.mu.Lock()
		for _, in := range ss.ins {
			in.close(errors.New("channel closed"))
		}
		ss.mu.Unlock()
		ss.wg.Wait()
	}()
	go func() {
		<-ctx.Done()
		conn.Close() // unblocks Receive
	}()
	status, changed, err := ss.greet()
	if err != nil {
		return err
	}
	ss.wg.Add(1)
	go func() {
		defer ss.wg.Done()
		defer cancel()
		ss.pushStatus(ctx, status, changed)
	}()
	// A serial line carries what a reconnection on the host side cut
	// short: a frame that does not decode is skipped there.
	serial := strings.HasPrefix(s.Addr, "serial:")
	for {
		env, err := conn.Receive()
		if serial && errors.Is(err, guestchannel.ErrMalformedFrame) {
			s.log().Warn("channel: a frame that does not decode skipped", "err", err)
			continue
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if env.Type == guestchannel.TypeResync {
			if err := ss.resync(); err != nil {
				return err
			}
			continue
		}
		ss.handle(ctx, env)
	}
}

// greet sends hello and a full status: what opens every connection, and
// what a resync asks for again.
func (ss *session) greet() (guestchannel.Status, <-chan struct{}, error) {
	if ss.s.BeforeGreet != nil {
		if err := ss.s.BeforeGreet(); err != nil {
			return guestchannel.Status{}, nil, err
		}
	}
	hello := ss.s.Hello
	if !hello.Can(guestchannel.CapExecStdinAck) {
		// This package is what serves it, whoever filled Hello.
		hello.Capabilities = append(slices.Clip(hello.Capabilities), guestchannel.CapExecStdinAck)
	}
	if kw, ok := ss.s.Pod.(KeyWaiter); ok {
		hello.KeyRequest = kw.KeyRequest()
	}
	if err := ss.conn.Send(guestchannel.TypeHello, "", hello); err != nil {
		return guestchannel.Status{}, nil, err
	}
	status, changed := ss.s.Pod.Status()
	status.Full, status.Seq = true, ss.s.Pod.NextSeq()
	if err := ss.conn.Send(guestchannel.TypeStatus, "", status); err != nil {
		return guestchannel.Status{}, nil, err
	}
	return status, changed, nil
}

// resync answers a host side that reached the agent anew on a stream the
// agent could not see close (a serial line): the requests of the host side
// that was there before are ended, since no one waits for their answers,
// and hello and a full status are sent again. Reports carry on: the full
// status holds every change a partial one might have lost meanwhile.
func (ss *session) resync() error {
	ss.mu.Lock()
	for id, cancel := range ss.reqs {
		cancel(errHostReconnected)
		delete(ss.reqs, id)
	}
	for id, in := range ss.ins {
		in.close(errHostReconnected)
		delete(ss.ins, id)
	}
	ss.mu.Unlock()
	_, _, err := ss.greet()
	return err
}

// pushStatus sends a partial status for every change after last.
func (ss *session) pushStatus(ctx context.Context, last guestchannel.Status, changed <-chan struct{}) {
	for {
		var ack chan struct{}
		select {
		case <-changed:
		case ack = <-ss.flush:
		case <-ctx.Done():
			return
		}
		var cur guestchannel.Status
		cur, changed = ss.s.Pod.Status()
		partial := guestchannel.Status{Phase: cur.Phase, Reason: cur.Reason, Message: cur.Message}
		partial.InitContainers = diff(last.InitContainers, cur.InitContainers)
		partial.Containers = diff(last.Containers, cur.Containers)
		if partial.Phase != last.Phase || partial.Reason != last.Reason || partial.Message != last.Message ||
			len(partial.InitContainers) > 0 || len(partial.Containers) > 0 {
			partial.Seq = ss.s.Pod.NextSeq()
			if err := ss.conn.Send(guestchannel.TypeStatus, "", partial); err != nil {
				if ack != nil {
					close(ack)
				}
				return
			}
			last = cur
		}
		if ack != nil {
			close(ack)
		}
	}
}

// diff lists the statuses of cur that differ from last (same order).
func diff(last, cur []guestchannel.ContainerStatus) []guestchannel.ContainerStatus {
	var out []guestchannel.ContainerStatus
	for i, c := range cur {
		if i >= len(last) || !equal(last[i], c) {
			out = append(out, c)
		}
	}
	return out
}

func equal(a, b guestchannel.ContainerStatus) bool {
	if (a.LastState == nil) != (b.LastState == nil) {
		return false
	}
	if a.LastState != nil && !stateEqual(*a.LastState, *b.LastState) {
		return false
	}
	return a.Name == b.Name && a.RestartCount == b.RestartCount && a.Ready == b.Ready &&
		a.Started == b.Started && stateEqual(a.State, b.State)
}

func stateEqual(a, b guestchannel.ContainerState) bool {
	t := func(x, y *time.Time) bool { return (x == nil && y == nil) || (x != nil && y != nil && x.Equal(*y)) }
	return a.Kind == b.Kind && a.Reason == b.Reason && a.Message == b.Message && a.ExitCode == b.ExitCode &&
		a.Signal == b.Signal && t(a.StartedAt, b.StartedAt) && t(a.FinishedAt, b.FinishedAt)
}

func (ss *session) handle(ctx context.Context, env guestchannel.Envelope) {
	fail := func(err error) {
		_ = ss.conn.Send(guestchannel.TypeError, env.ID, guestchannel.Error{Message: err.Error()})
	}
	// decode reads the body, answering an error when it does not decode.
	decode := func(v any) bool {
		err := env.Decode(v)
		if err != nil {
			fail(err)
		}
		return err == nil
	}
	switch env.Type {
	case guestchannel.TypeDiskKey:
		var k guestchannel.DiskKey
		if !decode(&k) {
			return
		}
		if kw, ok := ss.s.Pod.(KeyWaiter); ok {
			kw.DiskKey(k)
		}
	case guestchannel.TypeLogs:
		var req guestchannel.LogsRequest
		if !decode(&req) {
			return
		}
		ss.serve(ctx, env.ID, func(rctx context.Context) {
			err := ss.s.Pod.Logs(rctx, req, func(b []byte) error {
				return ss.conn.Send(guestchannel.TypeLogChunk, env.ID, guestchannel.LogChunk{Data: b})
			})
			end := guestchannel.LogChunk{EOF: true}
			if err != nil {
				end.Error = err.Error()
			}
			_ = ss.conn.Send(guestchannel.TypeLogChunk, env.ID, end)
		})
	case guestchannel.TypeExec:
		var req guestchannel.ExecRequest
		if !decode(&req) {
			return
		}
		if req.StdinWindow < 0 || req.StdinWindow > guestchannel.MaxExecStdinWindow {
			_ = ss.conn.Send(guestchannel.TypeExecExit, env.ID, guestchannel.ExecExit{Error: fmt.Sprintf(
				"exec: stdin window of %d bytes refused (at most %d)", req.StdinWindow, guestchannel.MaxExecStdinWindow)})
			return
		}
		var stdin io.Reader
		if req.Stdin {
			var ack func(taken uint64)
			if req.StdinWindow > 0 {
				id := env.ID
				ack = func(taken uint64) {
					_ = ss.conn.Send(guestchannel.TypeExecStdinAck, id, guestchannel.ExecStdinAck{Taken: taken})
				}
			}
			in, r := newExecInput(req.StdinWindow, ack)
			ss.mu.Lock()
			ss.ins[env.ID] = in
			ss.mu.Unlock()
			stdin = r
			ss.wg.Go(in.run)
		}
		ss.serve(ctx, env.ID, func(rctx context.Context) {
			code, err := ss.s.Pod.Exec(rctx, req, stdin, func(stream string, data []byte) {
				_ = ss.conn.Send(guestchannel.TypeExecOutput, env.ID, guestchannel.ExecOutput{Stream: stream, Data: data})
			})
			exit := guestchannel.ExecExit{ExitCode: code}
			if cause := context.Cause(rctx); errors.Is(cause, errInputNotRead) || errors.Is(cause, errInputOverWindow) {
				// The command's input was still open (the command
				// running) when its unread input overflowed, and was ended for it:
				// that is why it exited, whatever its code. A command
				// that ended first closed its input, and what the host
				// sent after was dropped without an overflow.
				err = cause
			}
			if err != nil {
				exit.Error = err.Error()
			}
			_ = ss.conn.Send(guestchannel.TypeExecExit, env.ID, exit)
		})
	case guestchannel.TypeExecStdin:
		var in guestchannel.ExecStdin
		if !decode(&in) {
			return
		}
		ss.mu.Lock()
		input := ss.ins[env.ID]
		if input != nil {
			// Queued, never written here, nor acknowledged (this loop
			// serves every request of the channel): the exec's own
			// goroutine does both. An input over its bound fails that
			// exec alone, with the reason. Its input stays known,
			// closed, until the exec ends: what the host sent meanwhile
			// is dropped, not answered with errors.
			if err := input.push(in.Data, in.EOF); err != nil {
				input.close(err)
				if c := ss.reqs[env.ID]; c != nil {
					c(err)
				}
			}
		}
		// An input that ended stays known until its exec does (untrack):
		// closing it then ends a write its command will never read.
		ss.mu.Unlock()
		if input == nil {
			fail(fmt.Errorf("exec.stdin: no exec %q waiting for input", env.ID))
		}
	case guestchannel.TypeStop:
		var req guestchannel.StopRequest
		if !decode(&req) {
			return
		}
		ss.wg.Add(1)
		go func() {
			defer ss.wg.Done()
			stopped := ss.s.Pod.Stop(time.Duration(req.GracePeriodSeconds) * time.Second)
			ack := make(chan struct{})
			select {
			case ss.flush <- ack:
				<-ack
			case <-ctx.Done():
				return
			}
			_ = ss.conn.Send(guestchannel.TypeStopped, env.ID, stopped)
		}()
	case guestchannel.TypeCancel:
		var req guestchannel.Cancel
		if !decode(&req) {
			return
		}
		ss.mu.Lock()
		if c := ss.reqs[req.Target]; c != nil {
			c(errCancelled)
		}
		if in := ss.ins[req.Target]; in != nil {
			in.close(errCancelled)
			delete(ss.ins, req.Target)
		}
		ss.mu.Unlock()
	default:
		fail(fmt.Errorf("unknown message type %q", env.Type))
	}
}

// serve runs a cancellable request (logs, exec) in its own goroutine.
func (ss *session) serve(ctx context.Context, id string, fn func(context.Context)) {
	rctx, cancel := context.WithCancelCause(ctx)
	ss.mu.Lock()
	ss.reqs[id] = cancel
	ss.mu.Unlock()
	ss.wg.Add(1)
	go func() {
		defer ss.wg.Done()
		defer ss.untrack(id)
		fn(rctx)
	}()
}

func (ss *session) untrack(id string) {
	ss.mu.Lock()
	if c := ss.reqs[id]; c != nil {
		c(nil)
	}
	delete(ss.reqs, id)
	if in := ss.ins[id]; in != nil {
		in.close(nil)
		delete(ss.ins, id)
	}
	ss.mu.Unlock()
}

var (
	errHostReconnected = errors.New("the host side reconnected")
	errCancelled       = errors.New("cancelled")
	// errInputNotRead fails an exec without a stdin window whose command
	// leaves more than maxExecInput of its input unread.
	errInputNotRead = errors.New("exec: the command does not read its input")
	// errInputOverWindow fails an exec whose host sent more input than
	// the exec's stdin window allows: a host that ignores the flow
	// control it asked for.
	errInputOverWindow = errors.New("exec: the host sent more input than the stdin window allows")
)

// maxExecInput bounds the input an exec's command has not read yet when
// the host asked for no stdin window (a host side that predates
// CapExecStdinAck, or a client that does not wait for acknowledgements):
// the host then sends stdin as it comes, so a command that does not read
// it is failed rather than have the guest hold it all. With a window, the
// window is the bound, and a host that respects it never reaches it.
const maxExecInput = 1 << 20

// execInput is an exec's stdin: the session's read loop queues what the
// host sends (push), and the exec's own goroutine (run) writes it into the
// command's pipe at the pace the command reads. Written from the read loop,
// a command that does not read would stop the whole channel: stops, logs,
// other execs, resyncs.
//
// With a window (ExecRequest.StdinWindow) the host holds back what the
// command has not taken: run reports the bytes taken (ack), and push
// refuses more than the window waiting. run alone sends the reports, for
// input dropped as for input written: the read loop only counts what it
// drops and wakes run, since a send there would wait on the host side
// taking the channel's frames (on another exec's report before it), and
// the whole channel with it.
type execInput struct {
	w    *io.PipeWriter
	wake chan struct{} // a push or a close since run last looked
	// window bounds queued; 0: no flow control, maxExecInput does.
	window int
	// ack sends an exec.stdin.ack with the count taken; nil without a
	// window.
	ack   func(taken uint64)
	acked uint64 // the last count sent; run's alone

	mu     sync.Mutex
	queue  [][]byte
	queued int  // bytes in queue, and the one being written
	eof    bool // the host's input ended: close the pipe once queue is written
	// closed: nothing more goes to the command (its input ended, or its
	// side closed it); what the host still sends is dropped.
	closed bool
	// done: the exec ended (or its channel, or its host side): run
	// returns, nothing more is reported.
	done bool
	// taken counts the bytes written into the pipe, or dropped since the
	// input was closed: what the host need not hold back any more.
	taken uint64
}

func newExecInput(window int, ack func(taken uint64)) (*execInput, *io.PipeReader) {
	r, w := io.Pipe()
	if window <= 0 {
		ack = nil
	}
	return &execInput{w: w, wake: make(chan struct{}, 1), window: window, ack: ack}, r
}

// push queues data, then the input's end when eof. It fails when the queue
// would hold more than its bound: the window (a host that ignores it), or
// without one maxExecInput (the command does not read). Once the input is
// closed, data is dropped, and counted as taken for run to report.
func (in *execInput) push(data []byte, eof bool) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed || in.eof {
		if len(data) > 0 {
			in.taken += uint64(len(data))
			in.signal()
		}
		return nil // nothing more goes to the command
	}
	switch {
	case in.window > 0 && in.queued+len(data) > in.window:
		return fmt.Errorf("%w (%d bytes not yet taken, a window of %d)", errInputOverWindow, in.queued+len(data), in.window)
	case in.window <= 0 && in.queued+len(data) > maxExecInput:
		return fmt.Errorf("%w (more than %d bytes waiting)", errInputNotRead, maxExecInput)
	}
	if len(data) > 0 {
		in.queue = append(in.queue, data)
		in.queued += len(data)
	}
	in.eof = in.eof || eof
	in.signal()
	return nil
}

// report sends taken when it grew since the last report (with a window;
// nothing otherwise). run's alone, so the counts sent only grow.
func (in *execInput) report(taken uint64) {
	if in.ack != nil && taken > in.acked {
		in.ack(taken)
		in.acked = taken
	}
}

// close ends the input for good (err nil: a plain end of file for the
// command): run stops writing and returns, and a write under way returns.
func (in *execInput) close(err error) {
	in.mu.Lock()
	in.closed, in.done = true, true
	in.taken += uint64(in.queued)
	in.queue, in.queued = nil, 0
	in.signal()
	in.mu.Unlock()
	in.w.CloseWithError(err) // a nil err reads as io.EOF
}

func (in *execInput) signal() {
	select {
	case in.wake <- struct{}{}:
	default:
	}
}

// run writes the queue into the command's pipe until the input ends or is
// closed, reporting what was taken: once the queue is written, or every
// quarter of the window while it is not (one acknowledgement per piece
// or per several, never per byte, and the host never waits on bytes the
// command has read). Once the input is closed it goes on reporting what
// the host still sends, dropped, until the exec ends (close): a command
// that closed its stdin and runs on does not hold its sender.
func (in *execInput) run() {
	for {
		in.mu.Lock()
		switch {
		case in.done || (in.closed && in.ack == nil):
			in.mu.Unlock()
			return
		case !in.closed && len(in.queue) > 0:
			data := in.queue[0]
			in.queue = in.queue[1:]
			in.mu.Unlock()
			// Returns once the command has read it all, or the input is
			// closed; the bytes count as queued until then.
			_, err := in.w.Write(data)
			in.mu.Lock()
			if !in.done {
				// (close counted them already)
				in.queued = max(in.queued-len(data), 0)
				in.taken += uint64(len(data))
			}
			if err != nil && !in.closed {
				// The command's side closed its input (the command
				// ended, or closed its stdin): nothing more reaches it,
				// so what the host still sends is dropped, not queued
				// and counted against a command that will never read it.
				in.closed = true
				in.taken += uint64(in.queued)
				in.queue, in.queued = nil, 0
			}
			caughtUp, taken := len(in.queue) == 0 || in.closed, in.taken
			in.mu.Unlock()
			if caughtUp || taken-min(taken, in.acked) >= uint64(in.window/4) {
				in.report(taken)
			}
			continue
		case !in.closed && in.eof:
			in.closed = true
			in.mu.Unlock()
			in.w.Close()
			continue
		case in.closed:
			// What was dropped since the last report.
			taken := in.taken
			in.mu.Unlock()
			in.report(taken)
		default:
			in.mu.Unlock()
		}
		<-in.wake
	}
}
