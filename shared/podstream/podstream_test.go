package podstream

import (
	"context"
	"encoding/json"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bustest"
)

// The room a stdin window leaves is bounded in bytes and in pieces: a
// window of small reads is not thousands of messages on their way.
func TestCreditBoundsBytesAndPieces(t *testing.T) {
	const limit = 32 << 10
	for _, tc := range []struct {
		name     string
		window   int
		pieces   []int // sizes sent
		acked    uint64
		wantRoom int // 0: none, the sender waits
	}{
		{"no window: no wait", 0, []int{limit, limit, limit}, 0, limit},
		{"an empty window", 100, nil, 0, 100},
		{"a window full of bytes", 100, []int{60, 40}, 0, 0},
		{"bytes acknowledged", 100, []int{60, 40}, 50, 50},
		{"a window full of pieces", 1 << 20, slices.Repeat([]int{1}, events.PodStreamStdinPieces), 0, 0},
		{"a piece acknowledged", 1 << 20, slices.Repeat([]int{1}, events.PodStreamStdinPieces), 1, limit},
		{"part of a piece acknowledged", 1 << 20, slices.Repeat([]int{2}, events.PodStreamStdinPieces), 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCredit(tc.window)
			for _, n := range tc.pieces {
				c.add(n)
			}
			c.ack(tc.acked)
			stopped := make(chan struct{})
			close(stopped) // room answers at once when there is room
			n, ok := c.room(limit, stopped)
			if n != tc.wantRoom || ok != (tc.wantRoom > 0) {
				t.Fatalf("room = %d, %v; want %d", n, ok, tc.wantRoom)
			}
		})
	}
}

// A client numbers its stdin pieces, the input's end included, from 1.
func TestStdinPiecesAreNumbered(t *testing.T) {
	nc := connect(t)
	var got []events.PodStreamControl
	mu := fakeHostAgent(t, nc, 1<<10, func(c events.PodStreamControl, ack func(uint64), end func(events.PodStreamMessage)) {
		if len(c.Stdin) == 0 && !c.StdinEOF {
			return // a keep-alive
		}
		got = append(got, c)
		var taken uint64
		for _, c := range got {
			taken += uint64(len(c.Stdin))
		}
		ack(taken)
		if c.StdinEOF {
			code := int32(0)
			end(events.PodStreamMessage{EOF: true, ExitCode: &code})
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// One byte a read: a piece each.
	stdin := iotest.OneByteReader(strings.NewReader("abc"))
	if _, err := Run(ctx, nc, "exec.test", events.PodExecRequest{Stdin: true}, stdin, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	var seqs []uint64
	var data string
	for _, c := range got {
		seqs = append(seqs, c.StdinSeq)
		data += string(c.Stdin)
	}
	if !slices.Equal(seqs, []uint64{1, 2, 3, 4}) || data != "abc" || !got[len(got)-1].StdinEOF {
		t.Fatalf("pieces %+v, want a, b, c and the end numbered 1 to 4", got)
	}
}

// A stream that ends with an error while the client waits for room in its
// window ends the goroutine sending stdin too.
func TestTheStdinSenderEndsWithTheStream(t *testing.T) {
	const window = 64
	nc := connect(t)
	var received int
	fakeHostAgent(t, nc, window, func(c events.PodStreamControl, ack func(uint64), end func(events.PodStreamMessage)) {
		if received += len(c.Stdin); received == window { // the window is full: the client waits
			end(events.PodStreamMessage{EOF: true, Error: "the exec failed"})
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, sent, err := run(ctx, nc, "exec.test", events.PodExecRequest{Stdin: true}, endless{}, io.Discard, io.Discard)
	if err == nil || err.Error() != "the exec failed" {
		t.Fatalf("run: %v, want the host agent's error", err)
	}
	select {
	case <-sent:
	case <-time.After(10 * time.Second):
		t.Fatal("the stdin sender still runs after the stream ended")
	}
}

// connect runs a NATS server for the test and connects to it.
func connect(t *testing.T) *nats.Conn {
	t.Helper()
	return bustest.Connect(t, bustest.StartServer(t)).Conn()
}

// fakeHostAgent answers one exec request on exec.test: a first answer
// granting window, then each control received goes to serve, which may
// acknowledge input and end the answer. serve runs under the returned
// mutex.
func fakeHostAgent(t *testing.T, nc *nats.Conn, window int, serve func(c events.PodStreamControl, ack func(uint64), end func(events.PodStreamMessage))) *sync.Mutex {
	t.Helper()
	var mu sync.Mutex
	var reply string
	var seq uint64
	send := func(m events.PodStreamMessage) {
		seq++
		m.Seq = seq
		data, _ := json.Marshal(m)
		_ = nc.Publish(reply, data)
	}
	control, err := nc.Subscribe("control.test", func(m *nats.Msg) {
		var c events.PodStreamControl
		if err := json.Unmarshal(m.Data, &c); err != nil {
			t.Errorf("control %s: %v", m.Data, err)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		serve(c, func(taken uint64) { send(events.PodStreamMessage{StdinAcked: taken}) }, send)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = control.Unsubscribe() })
	req, err := nc.Subscribe("exec.test", func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		reply = m.Reply
		send(events.PodStreamMessage{Control: "control.test", StdinWindow: window})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = req.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return &mu
}

// endless is input that never ends.
type endless struct{}

func (endless) Read(b []byte) (int, error) { return len(b), nil }
