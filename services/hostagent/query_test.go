package hostagent_test

import (
	"bytes"
	"context"
	cryptorand "crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/podvisor/podvisor/agent/channel"
	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/hostagent"
	"github.com/podvisor/podvisor/services/hostagent/guesttest"
	"github.com/podvisor/podvisor/shared/podstream"
	"github.com/podvisor/podvisor/shared/testenv"
)

// A guest that stops reading its channel (an agent whose channel loop is
// stuck) does not hold the host agent: a write it does not take within
// WriteTimeout closes its channel, and the exec feeding it input ends with
// an error instead of waiting for good.
func TestAGuestThatDoesNotReadItsChannelHasItClosed(t *testing.T) {
	e := newEnv(t, func(c *hostagent.Config) { c.WriteTimeout = 300 * time.Millisecond })
	e.putPod("web", "uid-web", host, 30, "app")
	g := guesttest.Dial(t, e.svc.Socket(), guestchannel.Hello{PodUID: "uid-web", Namespace: "default", Name: "web", BootID: "b"}, "app")
	e.waitReports("uid-web", 1)
	release := g.HoldReads()
	t.Cleanup(release)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	// More input than the connection's buffers hold: the host's writes
	// stop being taken.
	stdin := bytes.NewReader(make([]byte, 8<<20))
	req := events.PodExecRequest{Namespace: "default", Name: "web", Container: "app", Command: []string{"cat"}, Stdin: true}
	_, err := podstream.Run(ctx, e.bus.Conn(), events.SubjectPodExec(host), req, stdin, io.Discard, io.Discard)
	if err == nil || ctx.Err() != nil {
		t.Fatalf("exec to a guest that does not read its channel: %v (context: %v); want it ended by the channel's end", err, ctx.Err())
	}
	release()
	select {
	case <-g.Closed():
	case <-time.After(10 * time.Second):
		t.Fatal("the channel of the guest that did not read stayed open")
	}
}

// An exec's stdin window: the host agent grants what the client asks (at
// most what a guest takes for one exec), passes it to an agent that
// announces acknowledgements and relays that agent's acknowledgements;
// for an agent that predates them it acknowledges each piece of input
// itself once written to the channel, and passes no window on (the
// agent's own bound applies, as before); a client that asks for no window
// gets no acknowledgements.
func TestExecStdinAcknowledgements(t *testing.T) {
	pieces := []string{"0123456789", "abcdefghijklmnopqrst", strings.Repeat("z", 30)}
	for i, tc := range []struct {
		name string
		// ackingAgent: the guest announces CapExecStdinAck (and holds its
		// acknowledgements until it has all the input: one, for 60).
		ackingAgent bool
		asked       int
		wantGranted int
		wantToAgent int
		wantAcks    []uint64
	}{
		{"relayed from an agent that acknowledges", true, 256 << 10, 256 << 10, 256 << 10, []uint64{60}},
		{"made by the host agent for an agent that does not", false, 256 << 10, 256 << 10, 0, []uint64{10, 30, 60}},
		{"none for a client that asks for none", true, 0, 0, 0, nil},
		{"a window over what a guest takes is granted smaller", true, 64 << 20, guestchannel.MaxExecStdinWindow, guestchannel.MaxExecStdinWindow, []uint64{60}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			name, uid := fmt.Sprint("web", i), fmt.Sprint("uid-web", i)
			e.putPod(name, uid, host, 30, "app")
			hello := guestchannel.Hello{PodUID: uid, Namespace: "default", Name: name, BootID: "b"}
			if tc.ackingAgent {
				hello.Capabilities = []string{guestchannel.CapExecStdinAck}
			}
			g := guesttest.Dial(t, e.svc.Socket(), hello, "app")
			g.SetExec(func(req guestchannel.ExecRequest, stdin []byte) (string, int32) { return string(stdin), 0 })
			release := g.HoldStdinAcks()
			e.waitReports(uid, 1)

			s := startStream(t, e, events.SubjectPodExec(host), events.PodExecRequest{Namespace: "default", Name: name, Container: "app",
				Command: []string{"cat"}, Stdin: true, StdinWindow: tc.asked})
			first := s.next()
			if first.Control == "" || first.StdinWindow != tc.wantGranted {
				t.Fatalf("first answer %+v, want a control subject and a window of %d", first, tc.wantGranted)
			}
			for _, p := range pieces {
				s.control(first.Control, events.PodStreamControl{Stdin: []byte(p)})
			}
			waitFor(t, "the guest receiving all the input", func() bool { return g.StdinReceived() == 60 })
			release()
			s.control(first.Control, events.PodStreamControl{StdinEOF: true})
			var acks []uint64
			var out string
			for {
				m := s.next()
				if m.StdinAcked > 0 {
					acks = append(acks, m.StdinAcked)
				}
				out += string(m.Data)
				if m.EOF {
					if m.Error != "" || m.ExitCode == nil || *m.ExitCode != 0 {
						t.Fatalf("last answer %+v, want exit 0", m)
					}
					break
				}
			}
			if want := strings.Join(pieces, ""); out != want {
				t.Errorf("output %q, want the input %q", out, want)
			}
			if !slices.Equal(acks, tc.wantAcks) {
				t.Errorf("acknowledgements %v, want %v", acks, tc.wantAcks)
			}
			if execs := g.Execs(); len(execs) != 1 || execs[0].StdinWindow != tc.wantToAgent {
				t.Errorf("the agent received %+v, want one exec with a window of %d", execs, tc.wantToAgent)
			}
		})
	}
}

// Stdin pieces that do not arrive in sequence (core NATS dropped one on
// the way, as it drops what a full subscription cannot take) end the exec
// with an error naming the gap, at the next piece or at a keep-alive that
// counts more pieces than came, instead of leaving a client waiting for
// the acknowledgement of input that never reached the host agent; what
// follows the gap does not reach the guest. Pieces a client does not
// number are taken as before (TestExecStdinAcknowledgements).
func TestExecStdinWithAGapEndsTheExec(t *testing.T) {
	for i, tc := range []struct {
		name string
		// after pieces 1 and 2, what the host agent receives
		next    events.PodStreamControl
		wantErr string
	}{
		{"a piece after the gap", events.PodStreamControl{Stdin: []byte("four"), StdinSeq: 4},
			"stdin lost between the client and the host agent: expected piece 3, got 4"},
		{"the end after the gap", events.PodStreamControl{StdinEOF: true, StdinSeq: 4},
			"stdin lost between the client and the host agent: expected piece 3, got 4"},
		{"a keep-alive counting the last piece lost", events.PodStreamControl{StdinSeq: 3},
			"stdin lost between the client and the host agent: expected piece 3, the client had sent 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			name, uid := fmt.Sprint("web", i), fmt.Sprint("uid-web", i)
			e.putPod(name, uid, host, 30, "app")
			g := guesttest.Dial(t, e.svc.Socket(), guestchannel.Hello{PodUID: uid, Namespace: "default", Name: name, BootID: "b",
				Capabilities: []string{guestchannel.CapExecStdinAck}}, "app")
			g.SetExec(func(req guestchannel.ExecRequest, stdin []byte) (string, int32) { return string(stdin), 0 })
			e.waitReports(uid, 1)

			s := startStream(t, e, events.SubjectPodExec(host), events.PodExecRequest{Namespace: "default", Name: name, Container: "app",
				Command: []string{"cat"}, Stdin: true, StdinWindow: podstream.StdinWindow})
			first := s.next()
			s.control(first.Control, events.PodStreamControl{Stdin: []byte("one"), StdinSeq: 1})
			s.control(first.Control, events.PodStreamControl{Stdin: []byte("two"), StdinSeq: 2})
			s.control(first.Control, tc.next)
			for {
				m := s.next()
				if !m.EOF {
					continue
				}
				if m.Error != tc.wantErr {
					t.Fatalf("last answer %+v, want the error %q", m, tc.wantErr)
				}
				break
			}
			// The guest serves its channel in order: once a later
			// request is answered, it has all the input it will get.
			g.SetLog("app", "a line\n")
			logs := startStream(t, e, events.SubjectPodLogs(host), events.PodLogsRequest{Namespace: "default", Name: name})
			for !logs.next().EOF {
			}
			if got := g.StdinReceived(); got != len("onetwo") {
				t.Errorf("the guest received %d bytes of input, want the %d before the gap", got, len("onetwo"))
			}
		})
	}
}

// A client waiting for room in its stdin window when the host agent
// finds a piece lost returns with the error: the exec ends, and the
// client with it, rather than wait for an acknowledgement that cannot
// come. (The piece lost here is one the client never sent: a piece
// numbered past those it sent, published on its control subject.)
func TestAClientWhoseStdinIsLostReturns(t *testing.T) {
	e := newEnv(t)
	e.putPod("web", "uid-web", host, 30, "app")
	g := guesttest.Dial(t, e.svc.Socket(), guestchannel.Hello{PodUID: "uid-web", Namespace: "default", Name: "web", BootID: "b",
		Capabilities: []string{guestchannel.CapExecStdinAck}}, "app")
	g.SetExec(func(req guestchannel.ExecRequest, stdin []byte) (string, int32) { return "", 0 })
	t.Cleanup(g.HoldStdinAcks()) // the client's window fills and stays full
	e.waitReports("uid-web", 1)
	// The client's first control names its control subject.
	controls := make(chan *nats.Msg, 1)
	sub, err := e.bus.Conn().ChanSubscribe(events.SubjectPodControl(host, "*"), controls)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := sub.AutoUnsubscribe(1); err != nil {
		t.Fatal(err)
	}
	if err := e.bus.Conn().Flush(); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ran := make(chan error, 1)
	go func() {
		_, err := podstream.Run(ctx, e.bus.Conn(), events.SubjectPodExec(host), events.PodExecRequest{Namespace: "default", Name: "web",
			Container: "app", Command: []string{"cat"}, Stdin: true}, bytes.NewReader(make([]byte, 4*podstream.StdinWindow)), io.Discard, io.Discard)
		ran <- err
	}()
	control := (<-controls).Subject
	waitFor(t, "the client's window sent", func() bool { return g.StdinReceived() == podstream.StdinWindow })
	data, _ := json.Marshal(events.PodStreamControl{Stdin: []byte("x"), StdinSeq: 1000})
	if err := e.bus.Conn().Publish(control, data); err != nil {
		t.Fatal(err)
	}
	err = <-ran
	if want := "stdin lost between the client and the host agent: expected piece 9, got 1000"; err == nil || err.Error() != want || ctx.Err() != nil {
		t.Fatalf("exec: %v (context: %v), want %q", err, ctx.Err(), want)
	}
}

// waitFor polls cond until it holds, for 10 s at most.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
	}
}

// rawStream is a client of a streamed answer read message by message.
type rawStream struct {
	t    *testing.T
	e    *env
	msgs chan *nats.Msg
}

// startStream sends req to subject and returns its answer's stream.
func startStream(t *testing.T, e *env, subject string, req any) *rawStream {
	t.Helper()
	nc := e.bus.Conn()
	inbox := nc.NewRespInbox()
	s := &rawStream{t: t, e: e, msgs: make(chan *nats.Msg, 256)}
	sub, err := nc.ChanSubscribe(inbox, s.msgs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	data, _ := json.Marshal(req)
	if err := nc.PublishRequest(subject, inbox, data); err != nil {
		t.Fatal(err)
	}
	return s
}

// next is the next message of the answer.
func (s *rawStream) next() events.PodStreamMessage {
	s.t.Helper()
	select {
	case m := <-s.msgs:
		var sm events.PodStreamMessage
		if err := json.Unmarshal(m.Data, &sm); err != nil {
			s.t.Fatal(err)
		}
		return sm
	case <-time.After(10 * time.Second):
		s.t.Fatal("no answer within 10s")
		return events.PodStreamMessage{}
	}
}

// control sends c on the answer's control subject.
func (s *rawStream) control(subject string, c events.PodStreamControl) {
	s.t.Helper()
	data, _ := json.Marshal(c)
	if err := s.e.bus.Conn().Publish(subject, data); err != nil {
		s.t.Fatal(err)
	}
}

// Input of any size streams through the host agent at the pace the
// command reads it, from the client (podstream, as `podvisor exec -i`)
// to the agent's real channel code: 4 MiB into a command that reads
// slowly arrive whole, and the client never reads more than its window
// ahead of the command, which bounds what any hop holds (NATS, the host
// agent, the guest's queue).
func TestExecInputStreamsAtTheCommandsPace(t *testing.T) {
	e := newEnv(t)
	e.putPod("web", "uid-web", host, 30, "app")
	p := &slowReadingPod{}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		(&channel.Server{Addr: "unix:" + e.svc.Socket(), Pod: p, MinRetry: 10 * time.Millisecond,
			Hello: guestchannel.Hello{Protocol: guestchannel.Protocol, PodUID: "uid-web", Namespace: "default", Name: "web", BootID: "b"}}).Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-served })
	e.waitReports("uid-web", 1)

	input := make([]byte, 4<<20)
	_, _ = cryptorand.Read(input)
	in := &leadReader{r: bytes.NewReader(input), behind: &p.read}
	var out, errOut bytes.Buffer
	rctx, rcancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer rcancel()
	code, err := podstream.Run(rctx, e.bus.Conn(), events.SubjectPodExec(host),
		&events.PodExecRequest{Namespace: "default", Name: "web", Container: "app", Command: []string{"cat"}, Stdin: true}, in, &out, &errOut)
	if err != nil || code == nil || *code != 0 {
		t.Fatalf("exec: code %v, err %v, stderr %q", code, err, errOut.String())
	}
	if want := fmt.Sprintf("%d %x", len(input), sha256.Sum256(input)); out.String() != want {
		t.Fatalf("the command read %q, want %q", out.String(), want)
	}
	// The command counts a read once its Read has returned, which may be
	// after the agent's write into its pipe has (and the agent
	// acknowledged it): one read of slack.
	if in.maxLead > podstream.StdinWindow+slowReadSize {
		t.Errorf("the client read %d bytes ahead of the command, more than its window of %d (+%d)", in.maxLead, podstream.StdinWindow, slowReadSize)
	}
	t.Logf("the client read at most %d bytes ahead of the command (window %d)", in.maxLead, podstream.StdinWindow)
}

// leadReader reads r and records how far its reads got ahead of behind's
// count.
type leadReader struct {
	r       io.Reader
	behind  *atomic.Int64
	read    int64
	maxLead int64
}

func (l *leadReader) Read(b []byte) (int, error) {
	n, err := l.r.Read(b)
	l.read += int64(n)
	l.maxLead = max(l.maxLead, l.read-l.behind.Load())
	return n, err
}

// slowReadSize is how much a slowReadingPod's command reads at a time.
const slowReadSize = 16 << 10

// appPod is the state of a scripted pod (a channel.Pod) of one running
// container, app.
type appPod struct{ seq atomic.Uint64 }

func (p *appPod) Status() (guestchannel.Status, <-chan struct{}) {
	return guestchannel.Status{Phase: guestchannel.PhaseRunning, Containers: []guestchannel.ContainerStatus{{
		Name: "app", Ready: true, Started: true, State: guestchannel.ContainerState{Kind: guestchannel.StateRunning},
	}}}, nil
}

func (p *appPod) NextSeq() uint64 { return p.seq.Add(1) }

func (p *appPod) Stop(time.Duration) guestchannel.Stopped { return guestchannel.Stopped{} }

// slowReadingPod is a pod of one running container, app, whose execs read
// their input slowly, then print its size and digest.
type slowReadingPod struct {
	appPod
	read atomic.Int64 // input bytes the commands have read
}

func (p *slowReadingPod) Logs(context.Context, guestchannel.LogsRequest, func([]byte) error) error {
	return errors.New("no logs here")
}

func (p *slowReadingPod) Exec(ctx context.Context, req guestchannel.ExecRequest, stdin io.Reader, out func(string, []byte)) (int32, error) {
	h := sha256.New()
	buf := make([]byte, slowReadSize)
	var n int
	for {
		time.Sleep(time.Millisecond) // a slow reader: the input waits for it
		k, err := stdin.Read(buf)
		h.Write(buf[:k])
		n += k
		p.read.Add(int64(k))
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

// Logs and exec of a pod whose guest has no channel say the pod's phase:
// a guest yet to come (its containers being created) is told from one
// that stopped.
func TestQueriesOfAPodWithoutItsGuestSayItsPhase(t *testing.T) {
	e := newEnv(t)
	rec := e.putPod("starting", "uid-starting", host, 30, "app")
	rec.Phase, rec.Reason = events.PodPhaseStarting, events.ReasonContainerCreating
	data, _ := json.Marshal(rec)
	if _, err := e.pods.Put(context.Background(), events.PodRecordKey("default", "starting"), data); err != nil {
		t.Fatal(err)
	}
	const want = "pod default/starting (phase Starting, ContainerCreating): its guest has no channel to host " + host
	for _, req := range []any{
		events.PodLogsRequest{Namespace: "default", Name: "starting"},
		events.PodExecRequest{Namespace: "default", Name: "starting", Command: []string{"true"}},
	} {
		subject := events.SubjectPodLogs(host)
		if _, ok := req.(events.PodExecRequest); ok {
			subject = events.SubjectPodExec(host)
		}
		// The host agent starts serving queries a moment after it starts:
		// until then nothing answers (podstream's "no host agent serves").
		var err error
		testenv.Eventually(t, "the host agent answering "+subject, 10*time.Second, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err = podstream.Run(ctx, e.bus.Conn(), subject, req, nil, io.Discard, io.Discard)
			return err == nil || !strings.Contains(err.Error(), "no host agent serves")
		})
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%T: error %v, want one starting %q", req, err, want)
		}
	}

	// A pod that ended and has no guest (an ended pod is not made again
	// when its VM is lost) says its logs cannot be read, not that its
	// guest may be yet to start.
	rec.Phase, rec.Reason = events.PodPhaseFailed, "ContainersFailed"
	data, _ = json.Marshal(rec)
	if _, err := e.pods.Put(context.Background(), events.PodRecordKey("default", "starting"), data); err != nil {
		t.Fatal(err)
	}
	const ended = "pod default/starting (phase Failed, ContainersFailed) has ended and no guest of it runs on host " + host
	_, err := podstream.Run(context.Background(), e.bus.Conn(), events.SubjectPodLogs(host), events.PodLogsRequest{Namespace: "default", Name: "starting"}, nil, io.Discard, io.Discard)
	if err == nil || !strings.HasPrefix(err.Error(), ended) || !strings.Contains(err.Error(), "its logs cannot be read") {
		t.Errorf("logs of an ended pod without a guest: error %v, want one starting %q", err, ended)
	}
}
