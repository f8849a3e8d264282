package hostagent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
)

// maxStreams bounds the logs and exec answers one host agent streams at
// once; more wait in NATS.
const maxStreams = 64

// serveQueries subscribes to this host's logs and exec subjects. They are
// per host (events.SubjectPodLogs(host)): only the agent holding a pod's
// channel can answer for it, and the client addresses it by the host in the
// pod record.
func (s *Service) serveQueries() ([]*nats.Subscription, error) {
	sem := make(chan struct{}, maxStreams)
	var subs []*nats.Subscription
	for subject, serve := range map[string]func(*nats.Msg, *stream){
		events.SubjectPodLogs(s.cfg.Host): s.serveLogs,
		events.SubjectPodExec(s.cfg.Host): s.serveExec,
	} {
		sub, err := s.bus.Conn().Subscribe(subject, func(m *nats.Msg) {
			if m.Reply == "" {
				return
			}
			go func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				st := &stream{nc: s.bus.Conn(), reply: m.Reply}
				serve(m, st)
			}()
		})
		if err != nil {
			for _, sub := range subs {
				_ = sub.Unsubscribe()
			}
			return nil, fmt.Errorf("hostagent: subscribe %s: %w", subject, err)
		}
		subs = append(subs, sub)
	}
	if err := s.bus.Conn().Flush(); err != nil {
		return nil, fmt.Errorf("hostagent: subscribe: %w", err)
	}
	return subs, nil
}

// stream writes one answer's PodStreamMessages to the requester, or to
// to for an answer the host agent reads itself.
type stream struct {
	nc    *nats.Conn
	reply string
	to    func(events.PodStreamMessage)
	seq   uint64
	// skip, when set, is left out of the start of the log data.
	skip *skipPrefix
	// noPrevious, when set, is the error that stands for the agent's
	// guestchannel.NoPreviousInstance (serveLogs).
	noPrevious func() error
	// pod names the pod the answer is about ("pod default/web"), for the
	// agent's errors, which name only the container.
	pod string
}

func (st *stream) send(m events.PodStreamMessage) {
	st.seq++
	m.Seq = st.seq
	if st.to != nil {
		st.to(m)
		return
	}
	data, _ := json.Marshal(m)
	_ = st.nc.Publish(st.reply, data)
}

// skipPrefix leaves prefix out of a stream of bytes when the stream starts
// with it.
type skipPrefix struct {
	prefix []byte
	held   int // bytes of the prefix matched so far, held back
	done   bool
}

// pass returns what of b goes on.
func (s *skipPrefix) pass(b []byte) []byte {
	if s == nil || s.done {
		return b
	}
	m := min(len(b), len(s.prefix)-s.held)
	if bytes.Equal(b[:m], s.prefix[s.held:s.held+m]) {
		s.held += m
		s.done = s.held == len(s.prefix)
		return b[m:]
	}
	// not the prefix after all: what was held back goes on first
	s.done = true
	return append(s.prefix[:s.held:s.held], b...)
}

func (st *stream) fail(err error) { st.send(events.PodStreamMessage{EOF: true, Error: err.Error()}) }

// agentFail ends the stream with an error the pod agent answered, the pod
// named first: the client may ask about several pods, the agent knows one.
func (st *stream) agentFail(msg string) {
	if st.pod != "" {
		msg = st.pod + ": " + msg
	}
	st.fail(errors.New(msg))
}

// target resolves a request's pod and container to the pod's channel here.
func (s *Service) target(ctx context.Context, ns, name, uid, container string) (*podConn, string, error) {
	rec, err := s.record(ctx, ns, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) || (err == nil && uid != "" && rec.UID != uid) {
		return nil, "", fmt.Errorf("pod %s/%s not found", ns, name)
	}
	if err != nil {
		return nil, "", err
	}
	if rec.Host != s.cfg.Host {
		return nil, "", fmt.Errorf("pod %s/%s runs on %q, not %s: ask that host's agent", ns, name, rec.Host, s.cfg.Host)
	}
	var names []string
	for _, c := range append(rec.Pod.Spec.InitContainers, rec.Pod.Spec.Containers...) {
		names = append(names, c.Name)
	}
	if container == "" {
		container = defaultContainer(&rec.Pod)
	}
	switch {
	case container == "":
		return nil, "", fmt.Errorf("pod %s/%s has several containers (%s): name one with -c, or set the pod's %s annotation",
			ns, name, strings.Join(names, ", "), AnnotationDefaultContainer)
	default:
		found := false
		for _, n := range names {
			found = found || n == container
		}
		if !found {
			return nil, "", fmt.Errorf("pod %s/%s has no container %q (it has %s)", ns, name, container, strings.Join(names, ", "))
		}
	}
	pc := s.conn(rec.UID)
	if pc == nil {
		// The phase tells a guest yet to come (Starting, its containers
		// being created) from one that stopped or went silent.
		phase := rec.Phase
		if rec.Reason != "" {
			phase += ", " + rec.Reason
		}
		if rec.Phase == events.PodPhaseSucceeded || rec.Phase == events.PodPhaseFailed {
			// An ended pod is not made again when its VM is lost: its
			// containers' logs were on that VM's disk 0.
			return nil, "", fmt.Errorf("pod %s/%s (phase %s) has ended and no guest of it runs on host %s (its pod VM is off or gone, and an ended pod is not made again): its logs cannot be read: %w",
				ns, name, phase, s.cfg.Host, ErrNotConnected)
		}
		return nil, "", fmt.Errorf("pod %s/%s (phase %s): its guest has no channel to host %s (not started yet, stopped, or not reporting): %w",
			ns, name, phase, s.cfg.Host, ErrNotConnected)
	}
	return pc, container, nil
}

// AnnotationDefaultContainer names the container logs and exec use when
// the request names none, as kubectl does.
const AnnotationDefaultContainer = "kubectl.kubernetes.io/default-container"

// defaultContainer is the container a request that names none is about:
// the one the pod's AnnotationDefaultContainer names, else its only app
// container (init containers aside, as kubectl does), else none.
func defaultContainer(pod *corev1.Pod) string {
	if c := pod.Annotations[AnnotationDefaultContainer]; c != "" {
		return c
	}
	if len(pod.Spec.Containers) == 1 {
		return pod.Spec.Containers[0].Name
	}
	return ""
}

func (s *Service) serveLogs(m *nats.Msg, st *stream) {
	var req events.PodLogsRequest
	pc, container := s.begin(st, m.Data, "logs", &req, func() (string, string, string, string) {
		return req.Namespace, req.Name, req.UID, req.Container
	})
	if pc == nil {
		return
	}
	lreq := guestchannel.LogsRequest{
		Container: container, Follow: req.Follow, Previous: req.Previous, TailLines: req.TailLines, FromEnd: req.FromEnd,
		Timestamps: req.Timestamps, SinceTime: req.SinceTime, LimitBytes: req.LimitBytes,
	}
	if opt := lreq.TimestampsOption(); opt != "" && !pc.hello.Can(guestchannel.CapLogsTimestamps) {
		// An agent that keeps no line times would ignore the option and
		// send the whole log without times: a wrong answer, not a refusal.
		st.fail(fmt.Errorf("%s (%s): the pod VM agent of pod %s/%s (version %q) keeps no line times, so it cannot serve it; ask without it",
			opt, logsFlags[opt], req.Namespace, req.Name, pc.hello.AgentVersion))
		return
	}
	if req.FromEnd && !pc.hello.Can(guestchannel.CapLogsFromEnd) {
		// An agent that predates FromEnd would read the whole log: the
		// log's last line is asked first and left out of a follow from
		// that line (a line written between the two can be lost; an
		// agent with the capability starts at the end itself).
		last, err := lastLine(pc, lreq)
		if err != nil {
			st.fail(err)
			return
		}
		if !req.Follow {
			st.send(events.PodStreamMessage{EOF: true})
			return
		}
		lreq.FromEnd, lreq.TailLines = false, 1
		st.skip = &skipPrefix{prefix: last}
	}
	if req.Previous {
		across := pc.hello.Can(guestchannel.CapLogsAcrossBoots)
		st.noPrevious = func() error { return s.previousElsewhere(req.Namespace, req.Name, container, across) }
	}
	s.relay(pc, st, guestchannel.TypeLogs, lreq, nil)
}

// logsFlags are the logs command's flags of the options that need
// guestchannel.CapLogsTimestamps, for the refusal that names one.
var logsFlags = map[string]string{"timestamps": "--timestamps", "sinceTime": "--since, --since-time", "limitBytes": "--limit-bytes"}

// previousElsewhere is the answer to a --previous read of container that
// the agent answered with guestchannel.NoPreviousInstance, naming the
// container and the pod as the kubelet does: from the pod's record, which
// says when the container's last state was carried from an earlier boot
// (PodRecord.ContainersBefore: the status shows it as long as the current
// guest has no last state of its own). An agent that keeps its logs across
// boots (guestchannel.CapLogsAcrossBoots; across) would have read that
// boot's last instance had it run on this VM's disk, so it ran in an
// earlier pod VM (the pod's VM re-created, or the pod placed again after
// its host failed), whose log went with that VM's disk. Otherwise it is
// the agent's answer, not found: no earlier boot, a record that cannot be
// read, a last state of a start that failed (no process ran, so no log was
// written, wherever it was), or an agent without the capability.
func (s *Service) previousElsewhere(ns, name, container string, across bool) error {
	notFound := fmt.Errorf("previous terminated container %q in pod %s/%s not found", container, ns, name)
	if !across {
		return notFound
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec, err := s.record(ctx, ns, name)
	if err != nil {
		return notFound
	}
	carried, ok := rec.ContainersBefore[container]
	t := carried.LastState.Terminated
	if !ok || t == nil || t.Reason == guestchannel.ReasonStartError {
		return notFound
	}
	for _, cs := range slices.Concat(rec.InitContainerStatuses, rec.ContainerStatuses) {
		if cs.Name == container && equality.Semantic.DeepEqual(cs.LastTerminationState, carried.LastState) {
			why := fmt.Sprintf("its last state: %s, exit code %d", t.Reason, t.ExitCode)
			if t.Message != "" {
				why += ": " + t.Message
			}
			return fmt.Errorf("pod %s/%s: the previous instance of container %q ran in an earlier pod VM (%s); its log is not kept", ns, name, container, why)
		}
	}
	return notFound
}

// lastLineTimeout bounds the wait for an older agent's last line of a log
// (serveLogs), within the client's wait for the first answer.
const lastLineTimeout = 5 * time.Second

// lastLine reads the last line of the log req names (without following)
// from the agent, as the stream's answers would carry it.
func lastLine(pc *podConn, req guestchannel.LogsRequest) ([]byte, error) {
	req.Follow, req.TailLines, req.FromEnd = false, 1, false
	id, answers, err := pc.request()
	if err != nil {
		return nil, err
	}
	defer pc.done(id)
	deadline := time.Now().Add(lastLineTimeout)
	if err := pc.conn.SendBefore(deadline, guestchannel.TypeLogs, id, req); err != nil {
		return nil, fmt.Errorf("send to the guest: %w", err)
	}
	timeout := time.NewTimer(time.Until(deadline))
	defer timeout.Stop()
	var last []byte
	var end *events.PodStreamMessage
	read := &stream{to: func(m events.PodStreamMessage) {
		last = append(last, m.Data...)
		if m.EOF {
			end = &m
		}
	}}
	for end == nil {
		select {
		case env := <-answers:
			forward(read, env)
		case <-pc.gone:
			return nil, ErrChannelClosed
		case <-timeout.C:
			return nil, fmt.Errorf("the pod agent did not send the log's last line within %s", lastLineTimeout)
		}
	}
	if end.Error != "" {
		return nil, errors.New(end.Error)
	}
	return last, nil
}

func (s *Service) serveExec(m *nats.Msg, st *stream) {
	var req events.PodExecRequest
	pc, container := s.begin(st, m.Data, "exec", &req, func() (string, string, string, string) {
		return req.Namespace, req.Name, req.UID, req.Container
	})
	if pc == nil {
		return
	}
	ereq := guestchannel.ExecRequest{Container: container, Command: req.Command, Stdin: req.Stdin}
	var in *stdinRelay
	if req.Stdin {
		in = &stdinRelay{window: min(req.StdinWindow, guestchannel.MaxExecStdinWindow)}
		if in.window > 0 {
			if pc.hello.Can(guestchannel.CapExecStdinAck) {
				ereq.StdinWindow = in.window
			} else {
				in.selfAck = true
			}
		}
	}
	s.relay(pc, st, guestchannel.TypeExec, ereq, in)
}

// stdinRelay is how an exec's input is passed on.
//
// A client that asks for a window (events.PodExecRequest.StdinWindow) is
// granted it, at most what one exec may hold in the guest
// (guestchannel.MaxExecStdinWindow). To an agent announcing
// guestchannel.CapExecStdinAck the window is passed on with the exec, and
// the agent's acknowledgements are relayed to the client as they come: the
// client sends at the pace the command reads, from end to end, and no hop
// holds more than the window. An agent that predates the capability gets
// no window, and the host agent acknowledges each piece of input itself
// once it has written it to the channel: the client never waits on
// acknowledgements that would not come, and such an agent keeps its own
// bound on input not read yet (what every exec had before windows). A
// client that asks for no window gets no acknowledgements (the same).
//
// Pieces that a client numbers (events.PodStreamControl.StdinSeq) must
// come one after the other: core NATS drops what the control
// subscription cannot hold, and a piece lost would never be acknowledged,
// its client waiting for good, while the command read input with a hole
// in it. A gap, seen at the next piece or at a keep-alive counting more
// pieces than came, ends the exec with ErrStdinLost naming it.
type stdinRelay struct {
	// window is the window granted to the client; 0: none.
	window int
	// selfAck: the host agent acknowledges input once forwarded (an agent
	// without the capability); forwarded counts it.
	selfAck   bool
	forwarded uint64
	// pieces is the number of the last numbered piece received.
	pieces uint64
}

// arrived checks a control's piece number against the pieces received
// so far and counts a piece.
func (in *stdinRelay) arrived(c events.PodStreamControl) error {
	if c.StdinSeq == 0 {
		return nil // not numbered: a client that predates it
	}
	piece := len(c.Stdin) > 0 || c.StdinEOF
	switch {
	case piece && c.StdinSeq != in.pieces+1:
		return fmt.Errorf("%w: expected piece %d, got %d", ErrStdinLost, in.pieces+1, c.StdinSeq)
	case !piece && c.StdinSeq > in.pieces:
		return fmt.Errorf("%w: expected piece %d, the client had sent %d", ErrStdinLost, in.pieces+1, c.StdinSeq)
	case piece:
		in.pieces = c.StdinSeq
	}
	return nil
}

// begin decodes and validates a request into req and finds the channel of
// the pod it names (ref reads namespace, name, uid and container from req
// once decoded). On failure it answers with the error and returns nil.
func (s *Service) begin(st *stream, data []byte, what string, req interface{ Validate() error }, ref func() (ns, name, uid, container string)) (*podConn, string) {
	if err := json.Unmarshal(data, req); err != nil {
		st.fail(fmt.Errorf("%s request: %w", what, err))
		return nil, ""
	}
	if err := req.Validate(); err != nil {
		st.fail(fmt.Errorf("%s request: %w", what, err))
		return nil, ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ns, name, uid, c := ref()
	pc, container, err := s.target(ctx, ns, name, uid, c)
	if err != nil {
		st.fail(err)
		return nil, ""
	}
	st.pod = fmt.Sprintf("pod %s/%s", ns, name)
	return pc, container
}

// relay sends one request to the agent and streams its answers to the
// client until the agent ends them, the client cancels or goes silent, or
// the channel closes.
//
// in is an exec's input (nil: the request takes none).
func (s *Service) relay(pc *podConn, st *stream, typ string, body any, in *stdinRelay) {
	id, answers, err := pc.request()
	if err != nil {
		st.fail(err)
		return
	}
	defer pc.done(id)
	// Room for what a client with a window has on its way at most (its
	// pieces, the input's end, a keep-alive, a cancel); what does not fit
	// is dropped by NATS, which a numbered piece reveals (stdinRelay).
	control := make(chan *nats.Msg, 2*events.PodStreamStdinPieces)
	// The control subject sits below pv.query.pod (a client may publish
	// queries, not to another connection's inbox) and is unguessable.
	inbox := events.SubjectPodControl(s.cfg.Host, strings.TrimPrefix(nats.NewInbox(), nats.InboxPrefix))
	sub, err := s.bus.Conn().ChanSubscribe(inbox, control)
	if err != nil {
		st.fail(fmt.Errorf("control subject: %w", err))
		return
	}
	defer sub.Unsubscribe()
	if err := s.bus.Conn().Flush(); err != nil {
		st.fail(fmt.Errorf("control subject: %w", err))
		return
	}
	if err := pc.conn.Send(typ, id, body); err != nil {
		st.fail(fmt.Errorf("send to the guest: %w", err))
		return
	}
	first := events.PodStreamMessage{Control: inbox}
	if in != nil {
		first.StdinWindow = in.window
	}
	st.send(first)
	idle := time.NewTimer(events.PodStreamIdleTimeout)
	defer idle.Stop()
	cancelled := false
	cancelAgent := func() {
		if !cancelled {
			cancelled = true
			_ = pc.conn.Send(guestchannel.TypeCancel, "", guestchannel.Cancel{Target: id})
		}
	}
	for {
		select {
		case env := <-answers:
			if done := forward(st, env); done {
				return
			}
		case <-pc.gone:
			st.fail(ErrChannelClosed)
			return
		case cm := <-control:
			idle.Reset(events.PodStreamIdleTimeout)
			var c events.PodStreamControl
			if err := json.Unmarshal(cm.Data, &c); err != nil {
				continue
			}
			if c.Cancel {
				cancelAgent()
				st.send(events.PodStreamMessage{EOF: true})
				return
			}
			if in == nil {
				continue
			}
			if err := in.arrived(c); err != nil {
				pc.log.Warn("exec ended: its input lost on the way", "id", id, "err", err)
				cancelAgent()
				st.fail(err)
				return
			}
			if len(c.Stdin) > 0 || c.StdinEOF {
				if err := sendStdin(pc, id, c.Stdin, c.StdinEOF); err != nil {
					cancelAgent()
					st.fail(fmt.Errorf("send stdin to the guest: %w", err))
					return
				}
				if in.selfAck && len(c.Stdin) > 0 {
					in.forwarded += uint64(len(c.Stdin))
					st.send(events.PodStreamMessage{StdinAcked: in.forwarded})
				}
			}
		case <-idle.C:
			pc.log.Info("stream client went silent; cancelled", "id", id)
			cancelAgent()
			return
		}
	}
}

// sendStdin passes an exec's input on in frames of at most ChunkSize, then
// its end when eof. Each write is bounded by the channel's write timeout:
// a guest that does not take its input has its channel closed rather than
// hold the relay (the agent queues an exec's input apart from its
// channel's loop, at most the exec's window of it, and fails an exec whose
// host sends more, or without a window one whose command leaves too much
// unread).
func sendStdin(pc *podConn, id string, data []byte, eof bool) error {
	for {
		n := min(len(data), guestchannel.ChunkSize)
		last := n == len(data)
		if err := pc.conn.Send(guestchannel.TypeExecStdin, id, guestchannel.ExecStdin{Data: data[:n], EOF: last && eof}); err != nil {
			return err
		}
		if last {
			return nil
		}
		data = data[n:]
	}
}

// forward passes one agent answer on; it reports whether it ended the
// stream.
func forward(st *stream, env guestchannel.Envelope) bool {
	switch env.Type {
	case guestchannel.TypeLogChunk:
		var c guestchannel.LogChunk
		if err := env.Decode(&c); err != nil {
			st.fail(err)
			return true
		}
		if data := st.skip.pass(c.Data); len(data) > 0 {
			st.send(events.PodStreamMessage{Data: data})
		}
		if c.Error == guestchannel.NoPreviousInstance && st.noPrevious != nil {
			st.fail(st.noPrevious())
			return true
		}
		if c.Error != "" {
			st.agentFail(c.Error)
			return true
		}
		if c.EOF {
			st.send(events.PodStreamMessage{EOF: true})
			return true
		}
	case guestchannel.TypeExecOutput:
		var o guestchannel.ExecOutput
		if err := env.Decode(&o); err != nil {
			st.fail(err)
			return true
		}
		st.send(events.PodStreamMessage{Stream: o.Stream, Data: o.Data})
	case guestchannel.TypeExecStdinAck:
		// Sent only for an exec given a window: the client waits on it.
		var a guestchannel.ExecStdinAck
		if err := env.Decode(&a); err != nil {
			st.fail(err)
			return true
		}
		st.send(events.PodStreamMessage{StdinAcked: a.Taken})
	case guestchannel.TypeExecExit:
		var x guestchannel.ExecExit
		if err := env.Decode(&x); err != nil {
			st.fail(err)
			return true
		}
		if x.Error != "" {
			st.agentFail(x.Error)
			return true
		}
		code := x.ExitCode
		st.send(events.PodStreamMessage{EOF: true, ExitCode: &code})
		return true
	case guestchannel.TypeError:
		var e guestchannel.Error
		_ = env.Decode(&e)
		st.agentFail("pod agent: " + e.Message)
		return true
	}
	return false
}
