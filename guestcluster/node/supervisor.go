package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/podstream"
)

// Supervisor is the guest cluster's side of its queries.
type Supervisor struct {
	NC *nats.Conn
	// Namespace and Name are the guest cluster's, on the supervisor.
	Namespace, Name string
}

func (s *Supervisor) subject(op string) string {
	return events.SubjectGuestClusterQuery(s.Namespace, s.Name, op)
}

func (s *Supervisor) ask(ctx context.Context, op string, req any) (*events.GuestPodReply, error) {
	data, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	msg, ctx, cancel := request(ctx, s.subject(op), data)
	defer cancel()
	m, err := s.NC.RequestMsgWithContext(ctx, msg)
	if err != nil {
		return nil, fmt.Errorf("supervisor %s: %w", op, err)
	}
	var r events.GuestPodReply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return nil, fmt.Errorf("supervisor %s: malformed answer: %w", op, err)
	}
	if r.Error != "" {
		return &r, errors.New(r.Error)
	}
	return &r, nil
}

// headerReplyBy is shared/bus.HeaderReplyBy, the time (RFC 3339) until
// which a requester waits for its answer: the supervisor drops a request
// whose requester has stopped waiting rather than, say, create a pod no
// one hears of. (shared/bus itself is not linked into podvisor-guest: it
// carries the NATS server.)
const headerReplyBy = "Pv-Reply-By"

// replyWithin bounds the wait of a request whose context has no deadline
// (shared/bus.AnswerWindow).
const replyWithin = time.Minute

// request is a request message to subject saying until when its
// requester waits (ctx's deadline, at most replyWithin from now), and the
// context to wait with, bounded the same way.
func request(ctx context.Context, subject string, data []byte) (*nats.Msg, context.Context, context.CancelFunc) {
	by := time.Now().Add(replyWithin)
	if dl, ok := ctx.Deadline(); ok && dl.Before(by) {
		by = dl
	}
	msg := nats.NewMsg(subject)
	msg.Data = data
	msg.Header.Set(headerReplyBy, by.UTC().Format(time.RFC3339Nano))
	ctx, cancel := context.WithDeadline(ctx, by)
	return msg, ctx, cancel
}

// CreatePod asks for the guest pod; the answer names the supervisor pod.
func (s *Supervisor) CreatePod(ctx context.Context, pod *corev1.Pod) (*events.GuestPodReply, error) {
	return s.ask(ctx, events.GuestOpPodCreate, events.GuestPodRequest{GuestNamespace: pod.Namespace, GuestName: pod.Name, Pod: pod})
}

// DeletePod asks for the guest pod's deletion.
func (s *Supervisor) DeletePod(ctx context.Context, namespace, name string) error {
	_, err := s.ask(ctx, events.GuestOpPodDelete, events.GuestPodRequest{GuestNamespace: namespace, GuestName: name})
	return err
}

// ListPods returns the guest cluster's pods on the supervisor.
func (s *Supervisor) ListPods(ctx context.Context) ([]corev1.Pod, error) {
	r, err := s.ask(ctx, events.GuestOpPodList, struct{}{})
	if err != nil {
		return nil, err
	}
	return r.Pods, nil
}

// Logs streams a guest pod's container log to w.
func (s *Supervisor) Logs(ctx context.Context, req events.PodLogsRequest, w io.Writer) error {
	_, err := podstream.Run(ctx, s.NC, s.subject(events.GuestOpPodLogs), req, nil, w, w)
	return err
}

// Exec runs a command in a guest pod's container.
func (s *Supervisor) Exec(ctx context.Context, req events.PodExecRequest, stdin io.Reader, stdout, stderr io.Writer) (*int32, error) {
	return podstream.Run(ctx, s.NC, s.subject(events.GuestOpPodExec), req, stdin, stdout, stderr)
}

// ListNodes returns the guest cluster's worker nodes as the supervisor runs
// them.
func (s *Supervisor) ListNodes(ctx context.Context) ([]events.GuestNode, error) {
	r, err := s.ask(ctx, events.GuestOpNodeList, struct{}{})
	if err != nil {
		return nil, err
	}
	return r.Nodes, nil
}
