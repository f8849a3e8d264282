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
	reqs map[string]context.CancelFunc
	ins  map[string]*io.PipeWriter
	wg   sync.WaitGroup
	// flush asks pushStatus to send what changed now and close the given
	// channel once sent: a stopped answer follows the statuses it implies.
	flush chan chan struct{}
}

func (s *Server) serve(ctx context.Context, rwc io.ReadWriteCloser) error {
	ctx, cancel := context.WithCancel(ctx)
	conn := guestchannel.NewConn(rwc)
	ss := &session{s: s, conn: conn, reqs: map[string]context.CancelFunc{}, ins: map[string]*io.PipeWriter{}, flush: make(chan chan struct{})}
	defer func() {
		cancel()
		conn.Close()
		ss.mu.Lock()
		for _, w := range ss.ins {
			w.CloseWithError(errors.New("channel closed"))
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
		cancel()
		delete(ss.reqs, id)
	}
	for id, w := range ss.ins {
		w.CloseWithError(errors.New("the host side reconnected"))
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
		var stdin io.Reader
		if req.Stdin {
			r, w := io.Pipe()
			ss.mu.Lock()
			ss.ins[env.ID] = w
			ss.mu.Unlock()
			stdin = r
		}
		ss.serve(ctx, env.ID, func(rctx context.Context) {
			code, err := ss.s.Pod.Exec(rctx, req, stdin, func(stream string, data []byte) {
				_ = ss.conn.Send(guestchannel.TypeExecOutput, env.ID, guestchannel.ExecOutput{Stream: stream, Data: data})
			})
			exit := guestchannel.ExecExit{ExitCode: code}
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
		w := ss.ins[env.ID]
		ss.mu.Unlock()
		if w == nil {
			fail(fmt.Errorf("exec.stdin: no exec %q waiting for input", env.ID))
			return
		}
		if len(in.Data) > 0 {
			// An io.Pipe write returns once the command's side has read it;
			// the command is expected to read its input.
			_, _ = w.Write(in.Data)
		}
		if in.EOF {
			w.Close()
			ss.mu.Lock()
			delete(ss.ins, env.ID)
			ss.mu.Unlock()
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
			c()
		}
		if w := ss.ins[req.Target]; w != nil {
			w.CloseWithError(errors.New("cancelled"))
			delete(ss.ins, req.Target)
		}
		ss.mu.Unlock()
	default:
		fail(fmt.Errorf("unknown message type %q", env.Type))
	}
}

// serve runs a cancellable request (logs, exec) in its own goroutine.
func (ss *session) serve(ctx context.Context, id string, fn func(context.Context)) {
	rctx, cancel := context.WithCancel(ctx)
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
		c()
	}
	delete(ss.reqs, id)
	if w := ss.ins[id]; w != nil {
		w.Close()
		delete(ss.ins, id)
	}
	ss.mu.Unlock()
}
