package podstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/podvisor/podvisor/events"
)

// firstAnswerTimeout bounds the wait for a host agent's first message.
const firstAnswerTimeout = 10 * time.Second

// Run sends a logs or exec request to subject (a host agent's, or a guest
// cluster's query that hands it to one) and copies the streamed answer:
// data to stdout (exec's stderr stream to stderr). stdin, when not nil, is
// sent as the exec's input. It returns the exec's exit code (nil for logs),
// or the error the host agent reported. Ending ctx cancels the stream at
// the host agent.
func Run(ctx context.Context, nc *nats.Conn, subject string, req any, stdin io.Reader, stdout, stderr io.Writer) (*int32, error) {
	data, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	inbox := nc.NewRespInbox()
	msgs := make(chan *nats.Msg, 256)
	sub, err := nc.ChanSubscribe(inbox, msgs)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(subject, inbox, data); err != nil {
		return nil, err
	}
	var control string
	var seq uint64
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
				return nil, fmt.Errorf("no answer on %s within %s: is the host agent running (podvisor up with guests on)?", subject, firstAnswerTimeout)
			}
			continue
		case <-ctx.Done():
			sendControl(events.PodStreamControl{Cancel: true})
			_ = nc.Flush()
			return nil, ctx.Err()
		}
		if m.Header.Get("Status") == "503" {
			return nil, fmt.Errorf("no host agent serves %s: is podvisor up running with guests on?", subject)
		}
		var sm events.PodStreamMessage
		if err := json.Unmarshal(m.Data, &sm); err != nil {
			return nil, fmt.Errorf("malformed answer from the host agent: %w", err)
		}
		if sm.Seq != seq+1 {
			return nil, fmt.Errorf("the answer lost messages (got %d after %d): try again", sm.Seq, seq)
		}
		seq = sm.Seq
		if sm.Control != "" && control == "" {
			control = sm.Control
			go keepAlive(stop, nc, control)
			if stdin != nil {
				go sendStdin(stop, stdin, sendControl)
			}
		}
		if len(sm.Data) > 0 {
			w := stdout
			if sm.Stream == "stderr" {
				w = stderr
			}
			if _, err := w.Write(sm.Data); err != nil {
				sendControl(events.PodStreamControl{Cancel: true})
				return nil, err
			}
		}
		if sm.EOF {
			if sm.Error != "" {
				return nil, errors.New(sm.Error)
			}
			return sm.ExitCode, nil
		}
	}
}

// keepAlive tells the host agent the client still reads.
func keepAlive(stop <-chan struct{}, nc *nats.Conn, control string) {
	t := time.NewTicker(events.PodStreamKeepAlive)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			_ = nc.Publish(control, []byte("{}"))
		}
	}
}

// sendStdin copies stdin to the exec in chunks, then its end.
func sendStdin(stop <-chan struct{}, r io.Reader, send func(events.PodStreamControl)) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		select {
		case <-stop:
			return
		default:
		}
		if n > 0 {
			send(events.PodStreamControl{Stdin: append([]byte(nil), buf[:n]...)})
		}
		if err != nil {
			send(events.PodStreamControl{StdinEOF: true})
			return
		}
	}
}
