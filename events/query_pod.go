package events

import (
	"errors"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Pod logs and exec are read-only queries on core NATS, answered by the host
// agent that holds the pod's guest channel. Each host agent serves its own
// subjects, SubjectPodLogs(host) and SubjectPodExec(host): the client reads
// the pod record (KV `pods`) for the host and asks that host's agent, so
// exactly one process answers and a pod that just moved is asked where the
// record says it runs now.
//
// The answer is a stream: the request's reply subject receives
// PodStreamMessage values, numbered from 1, the last one with EOF set. The
// first message names a Control subject on which the client sends
// PodStreamControl: stdin for an exec started with Stdin, Cancel to end a
// follow or an exec, and an empty keep-alive at least every
// PodStreamKeepAlive while it wants the stream (a client that vanished
// stops being served after PodStreamIdleTimeout). Core NATS delivers at most
// once: a gap in Seq means a lost message and the client reports it.
//
// An exec's stdin has flow control when the request asks for it with
// StdinWindow: the first answer grants a window (PodStreamMessage
// StdinWindow, at most what was asked), answers with StdinAcked count the
// input taken so far, and the client never has more than the window sent
// and not yet acknowledged, so input goes at the pace the command reads
// it. A grant of 0 (a host agent that predates it) means no
// acknowledgements: the client sends as it reads.
//
// Control messages travel at most once too, and the host agent's
// subscription drops what it cannot hold (a slow consumer): input lost
// there would never be acknowledged, and a client waiting for room in its
// window would wait for good. So a client numbers its stdin pieces
// (PodStreamControl.StdinSeq), and its keep-alives say how many it has
// sent: the host agent ends an exec whose input has a gap, with an error
// naming it, rather than feed the command input with a hole in it. And
// with a window the client keeps at most PodStreamStdinPieces pieces sent
// and not yet acknowledged, whatever their size, so that a window of
// small reads does not overflow what the host agent holds.
const (
	// SubjectQueryPodLogs prefixes the per-host logs subject
	// (pv.query.pod.logs.<host>; request PodLogsRequest).
	SubjectQueryPodLogs = "pv.query.pod.logs"
	// SubjectQueryPodExec prefixes the per-host exec subject
	// (pv.query.pod.exec.<host>; request PodExecRequest).
	SubjectQueryPodExec = "pv.query.pod.exec"
)

// PodStreamKeepAlive is how often a client sends an empty PodStreamControl
// while it reads a stream; PodStreamIdleTimeout is how long the host agent
// serves a stream without hearing from its client.
const (
	PodStreamKeepAlive   = 5 * time.Second
	PodStreamIdleTimeout = 20 * time.Second
)

// PodStreamStdinPieces is the most stdin pieces a client with a stdin
// window keeps sent and not yet acknowledged: the host agent holds twice
// as many control messages for a stream, room for them, the input's end,
// a keep-alive and a cancel.
const PodStreamStdinPieces = 32

// SubjectPodLogs is the subject host's agent answers logs requests on.
func SubjectPodLogs(host string) string { return SubjectQueryPodLogs + "." + host }

// SubjectPodControl is the control subject of one logs or exec session of
// host's agent (stdin, cancel, keep-alives): below pv.query.pod, which
// clients may publish to and the host agent subscribes to; id is random.
func SubjectPodControl(host, id string) string { return "pv.query.pod.control." + host + "." + id }

// SubjectPodExec is the subject host's agent answers exec requests on.
func SubjectPodExec(host string) string { return SubjectQueryPodExec + "." + host }

// PodLogsRequest asks for a container's log.
type PodLogsRequest struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// UID, when set, must be the pod's uid (a pod re-created under the same
	// name is another pod).
	UID string `json:"uid,omitempty"`
	// Container defaults to the pod's only container; required when the pod
	// has several.
	Container string `json:"container,omitempty"`
	// Follow streams new lines as they are written until cancelled.
	Follow bool `json:"follow,omitempty"`
	// Previous reads the log of the container's previous instance.
	Previous bool `json:"previous,omitempty"`
	// TailLines, when > 0, starts that many lines before the end; 0 (and
	// no FromEnd) reads the whole log.
	TailLines int64 `json:"tailLines,omitempty"`
	// FromEnd starts at the log's end: none of what was written, and with
	// Follow only what is written from then on (`logs -f --tail 0`). Not
	// with TailLines > 0. A host agent that predates it reads the whole
	// log.
	FromEnd bool `json:"fromEnd,omitempty"`
	// Timestamps prefixes every line with the time its first byte was
	// written (the pod VM's clock, UTC, RFC 3339 to the nanosecond) and a
	// space, as `kubectl logs --timestamps` prints it.
	Timestamps bool `json:"timestamps,omitempty"`
	// SinceTime, when set, leaves out the lines written before it
	// (`--since`, `--since-time`), after TailLines picked the lines.
	SinceTime *time.Time `json:"sinceTime,omitempty"`
	// LimitBytes, when > 0, ends the answer, a follow too, once that many
	// bytes of it are sent, timestamps included (`--limit-bytes`).
	//
	// Timestamps, SinceTime and LimitBytes are served by a pod VM agent
	// that keeps line times; the host agent refuses them, naming the
	// option, for one that does not (and a host agent that predates them
	// ignores them).
	LimitBytes int64 `json:"limitBytes,omitempty"`
}

// Validate checks the pod reference and the numbers.
func (r *PodLogsRequest) Validate() error {
	errs := []error{validatePodQueryRef(r.Namespace, r.Name)}
	if r.TailLines < 0 {
		errs = append(errs, fmt.Errorf("tailLines: %d must not be negative", r.TailLines))
	}
	if r.FromEnd && r.TailLines > 0 {
		errs = append(errs, fmt.Errorf("fromEnd: starts at the end, not %d lines before it; drop fromEnd or tailLines", r.TailLines))
	}
	if r.Follow && r.Previous {
		errs = append(errs, errors.New("follow: a previous instance's log does not grow; drop follow or previous"))
	}
	if r.LimitBytes < 0 {
		errs = append(errs, fmt.Errorf("limitBytes: %d must not be negative", r.LimitBytes))
	}
	if r.SinceTime != nil && r.SinceTime.IsZero() {
		errs = append(errs, errors.New("sinceTime: the zero time; leave it out to read from the log's start"))
	}
	return errors.Join(errs...)
}

// PodExecRequest runs a command in a running container (no terminal).
type PodExecRequest struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid,omitempty"`
	Container string `json:"container,omitempty"`
	// Command is the program and its arguments; required.
	Command []string `json:"command"`
	// Stdin is true when the client will send stdin through Control (the
	// last chunk with StdinEOF); otherwise the command's stdin is empty.
	Stdin bool `json:"stdin,omitempty"`
	// StdinWindow, with Stdin, asks for flow control of the input: the
	// most bytes the client will have sent and not yet seen acknowledged
	// (PodStreamMessage.StdinAcked), if the first answer grants it. 0:
	// the client sends as it reads.
	StdinWindow int `json:"stdinWindow,omitempty"`
}

// Validate checks the pod reference and the command.
func (r *PodExecRequest) Validate() error {
	errs := []error{validatePodQueryRef(r.Namespace, r.Name)}
	if len(r.Command) == 0 || r.Command[0] == "" {
		errs = append(errs, errors.New("command: required (the program to run and its arguments)"))
	}
	if r.StdinWindow < 0 || (r.StdinWindow > 0 && !r.Stdin) {
		errs = append(errs, fmt.Errorf("stdinWindow: %d must not be negative, and is for an exec with stdin", r.StdinWindow))
	}
	return errors.Join(errs...)
}

// validatePodQueryRef checks the pod a logs or exec request names: the
// namespace a DNS label and the name a DNS subdomain (metadata.name, so
// web.v1 is a pod name). Both travel in the request's payload, never in its
// subject (the subject names the host), so dots in the name are fine.
func validatePodQueryRef(ns, name string) error {
	errs := validateDNSLabel(field.NewPath("namespace"), ns)
	return asError(append(errs, validateDNSSubdomain(field.NewPath("name"), name)...))
}

// PodStreamMessage is one message of a logs or exec answer.
type PodStreamMessage struct {
	// Seq numbers the messages of one answer from 1.
	Seq uint64 `json:"seq"`
	// Control, in the first message only, is where the client sends
	// PodStreamControl.
	Control string `json:"control,omitempty"`
	// StdinWindow, in the first message only, is the window granted to
	// an exec that asked for one (PodExecRequest.StdinWindow; at most
	// what it asked): the client keeps at most that many bytes of input
	// sent and not yet acknowledged. 0: no acknowledgements will come.
	StdinWindow int `json:"stdinWindow,omitempty"`
	// StdinAcked counts the exec's input taken so far (written to the
	// command, or dropped once the command closed its stdin): the client
	// may send up to StdinAcked + StdinWindow in all. Only grows.
	StdinAcked uint64 `json:"stdinAcked,omitempty"`
	// Stream is "stdout" or "stderr" for exec output, empty for logs.
	Stream string `json:"stream,omitempty"`
	// Data is output or log bytes: the container's bytes as it wrote
	// them, or, for logs, as the logs request shaped them (timestamps,
	// since, limit).
	Data []byte `json:"data,omitempty"`
	// EOF ends the answer.
	EOF bool `json:"eof,omitempty"`
	// ExitCode is the command's exit code, on an exec's last message.
	ExitCode *int32 `json:"exitCode,omitempty"`
	// Error, on the last message, says why the request failed (unknown
	// container, the pod's agent is not connected, ...).
	Error string `json:"error,omitempty"`
}

// PodStreamControl is what a client sends on an answer's Control subject.
// An empty one is a keep-alive.
type PodStreamControl struct {
	Stdin    []byte `json:"stdin,omitempty"`
	StdinEOF bool   `json:"stdinEOF,omitempty"`
	Cancel   bool   `json:"cancel,omitempty"`
	// StdinSeq counts the stdin pieces (controls with Stdin or StdinEOF)
	// the client has sent, this one included: a piece carries its own
	// number, from 1, and a keep-alive the last piece's (so that the
	// host agent also sees the last pieces lost, which no piece
	// follows). 0: not numbered (a client that predates it), and not
	// checked.
	StdinSeq uint64 `json:"stdinSeq,omitempty"`
}
