package podstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/podvisor/podvisor/events"
)

// firstAnswerTimeout bounds the wait for a host agent's first message.
const firstAnswerTimeout = 10 * time.Second

// StdinWindow is the stdin window an exec asks for
// (events.PodExecRequest.StdinWindow): the most input sent and not yet
// acknowledged. It bounds what one exec's input holds on the way (NATS,
// the host agent, the queue in the guest) whatever the input's size, and
// is large enough that acknowledgements, which come for every few pieces
// of input taken, arrive before the client runs out of it: 8 pieces of
// 32 KiB in flight keep a command that reads fast fed across a few
// milliseconds of round trip. A quarter of what a guest accepts for one
// exec (guestchannel.MaxExecStdinWindow).
const StdinWindow = 256 << 10

// Run sends a logs or exec request to subject (a host agent's, or a guest
// cluster's query that hands it to one) and copies the streamed answer:
// data to stdout (exec's stderr stream to stderr). stdin, when not nil, is
// sent as the exec's input. It returns the exec's exit code (nil for logs),
// or the error the host agent reported. Ending ctx cancels the stream at
// the host agent.
//
// The goroutine sending stdin returns once the stream ends, whatever way
// it ends, unless it is in stdin's Read then (a terminal nobody types
// in): it then returns as that Read does, without sending what it read.
func Run(ctx context.Context, nc *nats.Conn, subject string, req any, stdin io.Reader, stdout, stderr io.Writer) (*int32, error) {
	code, _, err := run(ctx, nc, subject, req, stdin, stdout, stderr)
	return code, err
}

// run is Run, and returns as well a channel closed once the goroutine
// sending stdin has returned (nil when none was started): what Run leaves
// behind, for a test to see it end.
func run(ctx context.Context, nc *nats.Conn, subject string, req any, stdin io.Reader, stdout, stderr io.Writer) (*int32, <-chan struct{}, error) {
	if stdin != nil {
		req = withStdinWindow(req)
	}
	data, err := json.Marshal(req)
	if err != nil {
		return nil, nil, err
	}
	inbox := nc.NewRespInbox()
	msgs := make(chan *nats.Msg, 256)
	sub, err := nc.ChanSubscribe(inbox, msgs)
	if err != nil {
		return nil, nil, err
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(subject, inbox, data); err != nil {
		return nil, nil, err
	}
	var control string
	var seq uint64
	var window *credit
	var stdinSent chan struct{}
	// pieces counts the stdin pieces sent (PodStreamControl.StdinSeq),
	// which keep-alives repeat.
	var pieces atomic.Uint64
	stop := make(chan struct{})
	defer close(stop)
	sendControl := func(c events.PodStreamControl) {
		if control != "" {
			d, _ := json.Marshal(c)
			_ = nc.Publish(control, d)
		}
	}
	first := time.NewTimer(firstAnswerTimeout)
	defer first.Stop()
	for {
		var m *nats.Msg
		select {
		case m = <-msgs:
		case <-first.C:
			if control == "" {
				return nil, stdinSent, fmt.Errorf("no answer on %s within %s: is the host agent running (podvisor up with guests on)?", subject, firstAnswerTimeout)
			}
			continue
		case <-ctx.Done():
			sendControl(events.PodStreamControl{Cancel: true})
			_ = nc.Flush()
			return nil, stdinSent, ctx.Err()
		}
		if m.Header.Get("Status") == "503" {
			return nil, stdinSent, fmt.Errorf("no host agent serves %s: is podvisor up running with guests on?", subject)
		}
		var sm events.PodStreamMessage
		if err := json.Unmarshal(m.Data, &sm); err != nil {
			return nil, stdinSent, fmt.Errorf("malformed answer from the host agent: %w", err)
		}
		if sm.Seq != seq+1 {
			return nil, stdinSent, fmt.Errorf("the answer lost messages (got %d after %d): try again", sm.Seq, seq)
		}
		seq = sm.Seq
		if sm.Control != "" && control == "" {
			control = sm.Control
			go keepAlive(stop, nc, control, &pieces)
			if stdin != nil {
				window = newCredit(sm.StdinWindow)
				stdinSent = make(chan struct{})
				go func() {
					defer close(stdinSent)
					sendStdin(stop, stdin, sendControl, window, &pieces)
				}()
			}
		}
		if sm.StdinAcked > 0 && window != nil {
			window.ack(sm.StdinAcked)
		}
		if len(sm.Data) > 0 {
			w := stdout
			if sm.Stream == "stderr" {
				w = stderr
			}
			if _, err := w.Write(sm.Data); err != nil {
				sendControl(events.PodStreamControl{Cancel: true})
				return nil, stdinSent, err
			}
		}
		if sm.EOF {
			if sm.Error != "" {
				return nil, stdinSent, errors.New(sm.Error)
			}
			return sm.ExitCode, stdinSent, nil
		}
	}
}

// keepAlive tells the host agent the client still reads, and how many
// stdin pieces it has sent: the last ones lost are seen there, with no
// piece after them.
func keepAlive(stop <-chan struct{}, nc *nats.Conn, control string, pieces *atomic.Uint64) {
	t := time.NewTicker(events.PodStreamKeepAlive)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			// The count is read after the pieces it counts were
			// published, on the same connection: the host agent gets
			// them before this.
			d, _ := json.Marshal(events.PodStreamControl{StdinSeq: pieces.Load()})
			_ = nc.Publish(control, d)
		}
	}
}

// withStdinWindow asks for a stdin window (StdinWindow) in an exec request
// with stdin that names none; other requests are returned as they are.
func withStdinWindow(req any) any {
	switch r := req.(type) {
	case events.PodExecRequest:
		if r.Stdin && r.StdinWindow == 0 {
			r.StdinWindow = StdinWindow
		}
		return r
	case *events.PodExecRequest:
		if r != nil && r.Stdin && r.StdinWindow == 0 {
			c := *r
			c.StdinWindow = StdinWindow
			return &c
		}
	}
	return req
}

// credit is the room a stdin window leaves: what the host agent granted
// less what was sent and not yet acknowledged, in bytes and in pieces
// (at most events.PodStreamStdinPieces: a window of small reads would
// otherwise be thousands of messages on their way, more than the host
// agent holds for a stream, and what it drops is never acknowledged).
type credit struct {
	window uint64        // 0: no window, no wait
	more   chan struct{} // an acknowledgement since the sender last looked

	mu    sync.Mutex
	acked uint64
	sent  uint64
	// ends are where the pieces sent and not yet acknowledged end (in
	// sent's count), oldest first.
	ends []uint64
}

func newCredit(window int) *credit {
	return &credit{window: uint64(max(window, 0)), more: make(chan struct{}, 1)}
}

// ack records the count the host agent acknowledged (it only grows).
func (c *credit) ack(taken uint64) {
	c.mu.Lock()
	c.acked = max(c.acked, taken)
	c.mu.Unlock()
	select {
	case c.more <- struct{}{}:
	default:
	}
}

// add records a piece of n bytes sent.
func (c *credit) add(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sent += uint64(n)
	if c.window > 0 {
		c.ends = append(c.ends, c.sent)
	}
}

// room waits until the window leaves room for another piece and returns
// how many bytes it may hold (at most limit; limit at once without a
// window); false once stop is closed. A command that does not read holds
// the sender here, as a pipe holds its writer.
func (c *credit) room(limit int, stop <-chan struct{}) (int, bool) {
	if c.window == 0 {
		return limit, true
	}
	for {
		c.mu.Lock()
		for len(c.ends) > 0 && c.ends[0] <= c.acked {
			c.ends = c.ends[1:]
		}
		free := c.acked + c.window - min(c.sent, c.acked+c.window)
		pieces := len(c.ends)
		c.mu.Unlock()
		if free > 0 && pieces < events.PodStreamStdinPieces {
			return int(min(free, uint64(limit))), true
		}
		select {
		case <-c.more:
		case <-stop:
			return 0, false
		}
	}
}

// sendStdin copies stdin to the exec in chunks, then its end, within the
// window, numbering each (pieces counts them).
func sendStdin(stop <-chan struct{}, r io.Reader, send func(events.PodStreamControl), window *credit, pieces *atomic.Uint64) {
	buf := make([]byte, 32<<10)
	piece := func(c events.PodStreamControl) {
		c.StdinSeq = pieces.Load() + 1
		send(c)
		pieces.Store(c.StdinSeq) // once published: see keepAlive
	}
	for {
		n, ok := window.room(len(buf), stop)
		if !ok {
			return
		}
		n, err := r.Read(buf[:n])
		select {
		case <-stop:
			return
		default:
		}
		if n > 0 {
			window.add(n)
			piece(events.PodStreamControl{Stdin: append([]byte(nil), buf[:n]...)})
		}
		if err != nil {
			piece(events.PodStreamControl{StdinEOF: true})
			return
		}
	}
}
