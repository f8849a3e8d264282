package guestchannel

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync/atomic"
	"time"
)

// Protocol is the version of the message set in this package.
const Protocol = 1

// MaxFrame bounds one message line. Log and exec data are sent in chunks of
// at most ChunkSize so that a frame never comes near it.
const (
	MaxFrame  = 1 << 20
	ChunkSize = 32 << 10
)

// Message types.
const (
	TypeHello      = "hello"
	TypeStatus     = "status"
	TypeLogs       = "logs"
	TypeLogChunk   = "log"
	TypeExec       = "exec"
	TypeExecStdin  = "exec.stdin"
	TypeExecOutput = "exec.output"
	TypeExecExit   = "exec.exit"
	TypeStop       = "stop"
	TypeStopped    = "stopped"
	TypeCancel     = "cancel"
	TypeError      = "error"
	// TypeResync (host → agent, no body) asks the agent to send hello and a
	// full status again on the same stream. A host side that cannot see a
	// new connection from the agent's end (a network serial port: the
	// guest's port stays open while the hypervisor's TCP connection to the
	// host side is made again) sends it first on every connection it
	// accepts. An agent that predates it answers with an error, as for any
	// unknown type.
	TypeResync = "resync"
	// TypeExecStdinAck (agent → host, ExecStdinAck) reports how much of
	// an exec's input the agent has taken, for an exec given a
	// StdinWindow; only an agent announcing CapExecStdinAck is given one.
	TypeExecStdinAck = "exec.stdin.ack"
)

// Envelope is one framed message. Body holds the message of Type (Hello,
// Status, LogsRequest, ...), decoded with Decode.
type Envelope struct {
	// V is the sender's Protocol.
	V int `json:"v"`
	// Type names the body's message.
	Type string `json:"type"`
	// ID ties an answer to its request; empty for unsolicited messages
	// (hello, status).
	ID string `json:"id,omitempty"`
	// Body is the message itself.
	Body json.RawMessage `json:"body,omitempty"`
}

// Decode unmarshals the envelope's body into v.
func (e Envelope) Decode(v any) error {
	if len(e.Body) == 0 {
		return fmt.Errorf("%s message: empty body", e.Type)
	}
	if err := json.Unmarshal(e.Body, v); err != nil {
		return fmt.Errorf("%s message: %w", e.Type, err)
	}
	return nil
}

// Hello is the agent's first message on every connection.
type Hello struct {
	// Protocol is the highest protocol the agent speaks.
	Protocol int `json:"protocol"`
	// AgentVersion is the agent's build (for reports; never compared).
	AgentVersion string `json:"agentVersion"`
	// PodUID is the uid of the pod the agent runs (from its spec).
	PodUID string `json:"podUID"`
	// Namespace and Name are the pod's (from its spec), so the host side
	// finds the pod's record without a search; optional.
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	// VMUUID is the VM's instance uuid as the guest sees it; the host side
	// checks it against the VM it expects on this channel.
	VMUUID string `json:"vmUUID,omitempty"`
	// BootID changes on every boot of the guest: a host that sees a new
	// BootID knows the containers were started afresh.
	BootID string `json:"bootID"`
	// KeyRequest is set while the agent waits for the key of an encrypted
	// ephemeral disk (PodSpec.Encryption); the host answers with DiskKey.
	KeyRequest *KeyRequest `json:"keyRequest,omitempty"`
	// ChannelToken is PodSpec.ChannelToken: what proves the hello comes
	// from the pod's VM where the host side listens on a network (a serial
	// port concentrator) rather than on a socket only its hypervisor
	// reaches.
	ChannelToken string `json:"channelToken,omitempty"`
	// Capabilities names what the agent serves beyond Protocol's message
	// set (Cap* constants): an addition an old peer does not misread,
	// which the host side uses only when announced. An agent that
	// predates a capability does not list it.
	Capabilities []string `json:"capabilities,omitempty"`
}

// Capabilities an agent announces in Hello.
const (
	// CapExecStdinAck: the agent takes ExecRequest.StdinWindow, answers an
	// exec's input with exec.stdin.ack, and holds no more of it than the
	// window.
	CapExecStdinAck = "exec.stdin.ack"
	// CapLogsFromEnd: the agent takes LogsRequest.FromEnd. One that
	// predates it reads a request with FromEnd as one without: the whole
	// log.
	CapLogsFromEnd = "logs.fromEnd"
	// CapLogsAcrossBoots: the agent's logs go on across its boots on the
	// same ephemeral disk (a guest rebooted, an agent restarted): a
	// Previous request before a container's first restart in this boot
	// reads the earlier boot's last instance. So when such an agent
	// answers NoPreviousInstance while the pod's last state is from an
	// earlier boot, that boot ran in an earlier pod VM, on another disk.
	// One that predates it started its logs anew with every boot.
	CapLogsAcrossBoots = "logs.acrossBoots"
	// CapLogsTimestamps: the agent keeps the time of every line it logs
	// and takes LogsRequest.Timestamps, SinceTime and LimitBytes. One that
	// predates it would ignore them (the whole log, without times), so it
	// is sent none of them.
	CapLogsTimestamps = "logs.timestamps"
)

// Can reports whether the hello announces capability c.
func (h Hello) Can(c string) bool { return slices.Contains(h.Capabilities, c) }

// Status reports container states. Full is true on the report that follows
// hello: containers absent from a full report do not exist (yet) in the
// guest. Partial reports carry only containers whose state changed.
type Status struct {
	Full bool `json:"full"`
	// Seq counts the agent's status reports since boot (Hello.BootID), so
	// the control plane can drop a report older than one it already has.
	Seq uint64 `json:"seq"`
	// Phase is the agent's view of the pod: Pending while it prepares disks
	// and init containers, Running, Succeeded or Failed once every container
	// has terminated for good, Stopping after a stop request, and Succeeded
	// or Failed again once the stop is done (nothing runs or will run: as
	// Kubernetes ends a deleted pod, Succeeded only when every container
	// exited 0).
	Phase string `json:"phase"`
	// Reason and Message explain a Pending phase the agent cannot leave (for
	// example a disk that does not mount).
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	// InitContainers and Containers are in spec order.
	InitContainers []ContainerStatus `json:"initContainers,omitempty"`
	Containers     []ContainerStatus `json:"containers,omitempty"`
}

// Pod phases the agent reports.
const (
	PhasePending   = "Pending"
	PhaseRunning   = "Running"
	PhaseSucceeded = "Succeeded"
	PhaseFailed    = "Failed"
	PhaseStopping  = "Stopping"
)

// ContainerStatus mirrors Kubernetes' ContainerStatus for one container.
type ContainerStatus struct {
	Name string `json:"name"`
	// State is the current state; LastState the previous instance's end
	// (set once the container has restarted).
	State     ContainerState  `json:"state"`
	LastState *ContainerState `json:"lastState,omitempty"`
	// RestartCount counts restarts of this container since boot.
	RestartCount int32 `json:"restartCount"`
	// Ready is the readiness probe's verdict (true for a running container
	// without one).
	Ready bool `json:"ready"`
	// Started is the startup probe's verdict (true for a running container
	// without one).
	Started bool `json:"started"`
}

// ContainerState is one of waiting, running or terminated.
type ContainerState struct {
	// Kind is StateWaiting, StateRunning or StateTerminated.
	Kind string `json:"kind"`
	// Reason: for waiting, ContainerCreating, PodInitializing or
	// CrashLoopBackOff; for terminated, Completed, Error or OOMKilled.
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	// ExitCode and Signal of a terminated container.
	ExitCode int32 `json:"exitCode,omitempty"`
	Signal   int32 `json:"signal,omitempty"`
	// StartedAt is set for running and terminated; FinishedAt for
	// terminated. Guest clock, UTC.
	StartedAt  *time.Time `json:"startedAt,omitempty"`
	FinishedAt *time.Time `json:"finishedAt,omitempty"`
}

// Container state kinds.
const (
	StateWaiting    = "waiting"
	StateRunning    = "running"
	StateTerminated = "terminated"
)

// ReasonStartError is a terminated state's reason when the container's
// process could not be started (so it wrote no log and never ran).
const ReasonStartError = "StartError"

// LogsRequest asks for a container's log. The answer is a sequence of
// LogChunk messages with the request's ID, the last one with EOF set.
type LogsRequest struct {
	Container string `json:"container"`
	// Follow keeps the stream open and sends new lines as they are written
	// (across restarts of the container) until a cancel or the pod stops.
	Follow bool `json:"follow,omitempty"`
	// Previous reads the log of the previous instance of the container.
	Previous bool `json:"previous,omitempty"`
	// TailLines, when > 0, starts that many lines before the end; 0 (and
	// no FromEnd) reads the whole log.
	TailLines int64 `json:"tailLines,omitempty"`
	// FromEnd starts at the log's end as the agent takes the request:
	// none of what was written, and with Follow every byte written from
	// then on (a line the container is in the middle of writing goes on
	// from where it stood). Not with TailLines > 0, which the agent
	// refuses. Only to an agent announcing CapLogsFromEnd.
	FromEnd bool `json:"fromEnd,omitempty"`
	// Timestamps prefixes every line with the time its first byte was
	// written (guest clock, UTC, RFC 3339 to the nanosecond, fixed width)
	// and a space, as the kubelet does. Only to an agent announcing
	// CapLogsTimestamps, as are SinceTime and LimitBytes.
	Timestamps bool `json:"timestamps,omitempty"`
	// SinceTime, when set, leaves out the lines whose first byte was
	// written before it (guest clock), after TailLines picked the lines.
	SinceTime *time.Time `json:"sinceTime,omitempty"`
	// LimitBytes, when > 0, ends the answer (a follow too) once that many
	// bytes of it are sent, timestamps included: the last line may be
	// cut.
	LimitBytes int64 `json:"limitBytes,omitempty"`
}

// Validate checks the numbers and how the options go together; errors
// name the field.
func (r LogsRequest) Validate() error {
	var errs []error
	if r.TailLines < 0 {
		errs = append(errs, fmt.Errorf("tailLines: %d must not be negative", r.TailLines))
	}
	if r.FromEnd && r.TailLines > 0 {
		errs = append(errs, fmt.Errorf("fromEnd: starts at the end, not %d lines before it", r.TailLines))
	}
	if r.LimitBytes < 0 {
		errs = append(errs, fmt.Errorf("limitBytes: %d must not be negative", r.LimitBytes))
	}
	return errors.Join(errs...)
}

// TimestampsOption names the first option of the request that only an
// agent announcing CapLogsTimestamps serves ("" for none): one that does
// not would answer it wrongly (the whole log, without times), not refuse
// it.
func (r LogsRequest) TimestampsOption() string {
	switch {
	case r.Timestamps:
		return "timestamps"
	case r.SinceTime != nil:
		return "sinceTime"
	case r.LimitBytes != 0:
		return "limitBytes"
	}
	return ""
}

// LogChunk is a piece of a log stream: the container's bytes as it wrote
// them (stdout and stderr interleaved in write order), or as the logs
// request shaped them (timestamps, since, limit).
type LogChunk struct {
	Data []byte `json:"data,omitempty"`
	EOF  bool   `json:"eof,omitempty"`
	// Error ends the stream with a reason (unknown container, no previous
	// instance: NoPreviousInstance, ...).
	Error string `json:"error,omitempty"`
}

// NoPreviousInstance is LogChunk.Error for a Previous request when the
// agent keeps no instance before the current one (kubectl's words): the
// host may say more from the pod's record (where its last state came
// from).
const NoPreviousInstance = "previous terminated container not found"

// ExecRequest runs a command in a running container's namespaces
// (non-interactive: no terminal). The answer is ExecOutput chunks, then one
// ExecExit.
type ExecRequest struct {
	Container string   `json:"container"`
	Command   []string `json:"command"`
	// Stdin is true when ExecStdin messages will follow (the last with EOF);
	// otherwise the command's stdin is empty.
	Stdin bool `json:"stdin,omitempty"`
	// StdinWindow, when > 0 (with Stdin, to an agent announcing
	// CapExecStdinAck; at most MaxExecStdinWindow), is flow control: the
	// host never has more than StdinWindow bytes of input sent and not
	// yet acknowledged by an ExecStdinAck, and the agent fails the exec
	// of a host that does. 0: no acknowledgements, and the agent takes up
	// to its own bound of unread input ahead of the command (what agents
	// did before the capability).
	StdinWindow int `json:"stdinWindow,omitempty"`
}

// MaxExecStdinWindow bounds ExecRequest.StdinWindow: what one exec's input
// may hold of the guest's memory. An agent refuses an exec asking for more.
const MaxExecStdinWindow = 1 << 20

// ExecStdin carries input for an exec started with Stdin.
type ExecStdin struct {
	Data []byte `json:"data,omitempty"`
	EOF  bool   `json:"eof,omitempty"`
}

// ExecStdinAck acknowledges an exec's input (ExecRequest.StdinWindow):
// Taken counts the bytes of it the agent is done with since the exec
// began, written into the command's stdin pipe or dropped once the
// command closed it (it exited, or closed its stdin). The count only
// grows; the host may send up to Taken + StdinWindow in all. The agent
// sends one once its queue of input is written, or every quarter of the
// window while it is not: one for a piece of input or for several, never
// one per byte.
type ExecStdinAck struct {
	Taken uint64 `json:"taken"`
}

// ExecOutput is a piece of the command's output.
type ExecOutput struct {
	// Stream is "stdout" or "stderr".
	Stream string `json:"stream"`
	Data   []byte `json:"data"`
}

// ExecExit ends an exec: the command's exit code, or Error when it could not
// be started (unknown container, container not running, no such command).
type ExecExit struct {
	ExitCode int32  `json:"exitCode"`
	Error    string `json:"error,omitempty"`
}

// StopRequest asks the agent to stop every container: SIGTERM, then SIGKILL
// after GracePeriodSeconds (the pod's terminationGracePeriodSeconds unless
// the host asks for less). The agent answers Stopped once no container
// process is left.
type StopRequest struct {
	GracePeriodSeconds int64 `json:"gracePeriodSeconds"`
}

// Stopped answers a StopRequest.
type Stopped struct {
	// Killed lists containers that had to be killed after the grace period.
	Killed []string `json:"killed,omitempty"`
}

// Cancel ends the logs follow or exec whose request had ID Target.
type Cancel struct {
	Target string `json:"target"`
}

// Error answers a request that cannot be served, or a message of an unknown
// type.
type Error struct {
	Message string `json:"message"`
}

// Conn frames envelopes over a byte stream. Send is safe for concurrent use;
// Receive must be called from one goroutine.
type Conn struct {
	rw io.ReadWriteCloser
	r  *bufio.Reader
	// wmu is the right to write, one frame at a time: a channel rather
	// than a mutex so that a bounded Send gives up waiting behind a write
	// that does not end.
	wmu chan struct{}
	// writeTimeout bounds every Send (SetWriteTimeout); 0: none.
	writeTimeout atomic.Int64
	// partial is a line read in part when a read failed (a deadline): the
	// next Receive goes on with it, so that a frame is never cut in two.
	partial []byte
}

// NewConn wraps a connected stream.
func NewConn(rw io.ReadWriteCloser) *Conn {
	return &Conn{rw: rw, r: bufio.NewReaderSize(rw, 64<<10), wmu: make(chan struct{}, 1)}
}

// ErrFrameTooLarge is returned by Receive for a line longer than MaxFrame.
var ErrFrameTooLarge = errors.New("guestchannel: frame exceeds MaxFrame")

// ErrMalformedFrame is returned by Receive for a line that is not an
// envelope. The line is consumed: the next Receive reads the next one,
// which is how a side on a serial line, where the guest's console or a
// frame cut by a reconnection can leave bytes, skips what is not a frame.
var ErrMalformedFrame = errors.New("guestchannel: malformed frame")

// ErrWriteTimeout is returned by a bounded Send (SetWriteTimeout,
// SendBefore) whose frame the peer did not take in time. A frame cut in
// the middle cannot be taken back, so a Send whose write was under way
// closes the stream: the peer's end sees it end, and an agent dials again.
// One that timed out still waiting for another Send's write wrote nothing.
var ErrWriteTimeout = errors.New("guestchannel: the peer did not take the frame in time")

// SetWriteTimeout bounds every Send by d (0: no bound), from its call to
// the end of its write, the wait for other Sends' writes included. It is
// the host side's: a guest that stops reading its channel must not hold
// whoever writes to it (a delete's stop, a query) for good.
func (c *Conn) SetWriteTimeout(d time.Duration) { c.writeTimeout.Store(int64(max(d, 0))) }

// Send writes one message of type typ with request id (may be empty) and
// body (may be nil).
func (c *Conn) Send(typ, id string, body any) error {
	return c.SendBefore(time.Time{}, typ, id, body)
}

// SendBefore is Send bounded by deadline (zero: only by the write
// timeout), as Send is by SetWriteTimeout: whichever comes first.
func (c *Conn) SendBefore(deadline time.Time, typ, id string, body any) error {
	line, err := frame(typ, id, body)
	if err != nil {
		return err
	}
	if d := time.Duration(c.writeTimeout.Load()); d > 0 {
		if by := time.Now().Add(d); deadline.IsZero() || by.Before(deadline) {
			deadline = by
		}
	}
	if deadline.IsZero() {
		c.wmu <- struct{}{}
		defer func() { <-c.wmu }()
		_, err = c.rw.Write(line)
		return err
	}
	if time.Until(deadline) <= 0 {
		return fmt.Errorf("guestchannel: send %s: %w (its deadline had passed)", typ, ErrWriteTimeout)
	}
	wait := time.NewTimer(time.Until(deadline))
	select {
	case c.wmu <- struct{}{}:
		wait.Stop()
	case <-wait.C:
		return fmt.Errorf("guestchannel: send %s: %w (waiting to write)", typ, ErrWriteTimeout)
	}
	defer func() { <-c.wmu }()
	cut := time.AfterFunc(time.Until(deadline), func() { _ = c.rw.Close() })
	_, err = c.rw.Write(line)
	if !cut.Stop() {
		return fmt.Errorf("guestchannel: send %s: %w (the stream is closed)", typ, ErrWriteTimeout)
	}
	return err
}

// frame encodes one message as a line.
func frame(typ, id string, body any) ([]byte, error) {
	env := Envelope{V: Protocol, Type: typ, ID: id}
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("guestchannel: encode %s: %w", typ, err)
		}
		env.Body = b
	}
	line, err := json.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("guestchannel: encode %s: %w", typ, err)
	}
	if len(line)+1 > MaxFrame {
		return nil, ErrFrameTooLarge
	}
	return append(line, '\n'), nil
}

// Receive reads the next message. It returns io.EOF when the peer closed the
// stream cleanly. A read error (a deadline passing) leaves what was read of
// the line for the next Receive.
func (c *Conn) Receive() (Envelope, error) {
	var line []byte
	for {
		chunk, err := c.r.ReadSlice('\n')
		c.partial = append(c.partial, chunk...)
		if len(c.partial) > MaxFrame {
			c.partial = nil
			// The rest of the line is skipped by the next Receives as
			// frames that do not decode.
			return Envelope{}, ErrFrameTooLarge
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			if err == io.EOF && len(c.partial) > 0 {
				c.partial = nil
				err = io.ErrUnexpectedEOF
			}
			return Envelope{}, err
		}
		line, c.partial = bytes.TrimRight(c.partial, "\r\n"), nil
		break
	}
	var env Envelope
	if err := json.Unmarshal(line, &env); err != nil {
		return Envelope{}, fmt.Errorf("%w: %w", ErrMalformedFrame, err)
	}
	if env.Type == "" {
		return Envelope{}, fmt.Errorf("%w: no type", ErrMalformedFrame)
	}
	return env, nil
}

// Close closes the stream.
func (c *Conn) Close() error { return c.rw.Close() }
