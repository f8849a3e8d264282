// Package guesttest is a scripted pod VM agent for the tests of the host
// agent and its clients (and StartHostAgent, a host agent for a test): it dials a host agent socket and speaks the guest
// channel protocol (hello, status, logs, exec, stop) with canned answers.
// Tests of the whole data plane run the real agent (agent/cmd/podvm-agent)
// in simulated guests; this stands in where a test is about the host
// agent's side of the channel alone.
package guesttest

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/services/hostagent"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/deps"
	"github.com/podvisor/podvisor/shared/vspc"
)

// Guest is a connected scripted agent.
type Guest struct {
	// Hello is what it said first.
	Hello guestchannel.Hello

	conn *guestchannel.Conn
	seq  uint64

	mu sync.Mutex
	// logs maps a container to its log; execFn answers an exec.
	logs map[string]string
	// followers maps a follow request's ID to its container.
	followers map[string]string
	execFn    func(req guestchannel.ExecRequest, stdin []byte) (stdout string, exitCode int32)
	stops     []guestchannel.StopRequest
	// failStops is how many stops are still to be answered with an error.
	failStops int
	errors    []string
	closed    chan struct{}
	statuses  []guestchannel.ContainerStatus
	// reads is held (HoldReads) to stop the guest reading its channel.
	reads sync.RWMutex
	// execs lists the exec requests received; taken counts each windowed
	// exec's input received (its ID's), acked what was acknowledged of
	// it; holdAcks holds the acknowledgements back (HoldStdinAcks).
	execs    []guestchannel.ExecRequest
	logsReqs []guestchannel.LogsRequest
	received int
	taken    map[string]uint64
	acked    map[string]uint64
	holdAcks bool
}

// Dial connects to a host agent socket, says hello and sends a full status
// of containers (all running). It returns once both are sent (or the host
// closed the channel after the hello); the guest
// then answers requests until the test ends or the host closes the channel.
func Dial(t testing.TB, socket string, hello guestchannel.Hello, containers ...string) *Guest {
	t.Helper()
	return dial(t, "unix", socket, nil, hello, containers)
}

// DialSerial is Dial over a network serial port's connection to a
// concentrator (tcp addr): as a serial line carries them, the guest's
// first bytes are the tail of a frame cut short, and it says hello (again)
// whenever the host side asks with a resync.
func DialSerial(t testing.TB, addr string, hello guestchannel.Hello, containers ...string) *Guest {
	t.Helper()
	return dial(t, "tcp", addr, nil, hello, containers)
}

// DialSerialTLS is DialSerial to a concentrator serving TLS (an ssl://
// port), checked with conf.
func DialSerialTLS(t testing.TB, addr string, conf *tls.Config, hello guestchannel.Hello, containers ...string) *Guest {
	t.Helper()
	return dial(t, "tcp", addr, conf, hello, containers)
}

// DialProxy is DialSerial to a concentrator that is the ports' proxy: the
// connection opens with the VMware telnet extension, its host naming the
// port's VM as vm.
func DialProxy(t testing.TB, addr string, vm vspc.Identity, hello guestchannel.Hello, containers ...string) *Guest {
	t.Helper()
	return dialOpened(t, "tcp", addr, nil, func(nc net.Conn) (io.ReadWriteCloser, error) { return vspc.Dial(nc, vm, 5*time.Second) }, hello, containers)
}

func dial(t testing.TB, network, addr string, conf *tls.Config, hello guestchannel.Hello, containers []string) *Guest {
	t.Helper()
	return dialOpened(t, network, addr, conf, nil, hello, containers)
}

// dialOpened is dial with open, when set, making the channel of the
// connection.
func dialOpened(t testing.TB, network, addr string, conf *tls.Config, open func(net.Conn) (io.ReadWriteCloser, error),
	hello guestchannel.Hello, containers []string) *Guest {
	t.Helper()
	var nc net.Conn
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for {
		if conf != nil {
			nc, err = tls.Dial(network, addr, conf)
		} else {
			nc, err = net.Dial(network, addr)
		}
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("guesttest: dial %s: %v", addr, err)
	}
	var c io.ReadWriteCloser = nc
	if open != nil {
		if c, err = open(nc); err != nil {
			t.Fatalf("guesttest: open %s: %v", addr, err)
		}
	}
	if network == "tcp" {
		if _, err := c.Write([]byte(`"body":{"full":true,"seq":3}}` + "\n")); err != nil {
			t.Fatalf("guesttest: %v", err)
		}
	}
	hello.Protocol = guestchannel.Protocol
	g := &Guest{Hello: hello, conn: guestchannel.NewConn(c), closed: make(chan struct{}), logs: map[string]string{},
		followers: map[string]string{}, taken: map[string]uint64{}, acked: map[string]uint64{}}
	t.Cleanup(func() { g.conn.Close() })
	now := time.Now().UTC().Truncate(time.Second)
	for _, name := range containers {
		g.statuses = append(g.statuses, guestchannel.ContainerStatus{Name: name, Ready: true, Started: true,
			State: guestchannel.ContainerState{Kind: guestchannel.StateRunning, StartedAt: &now}})
	}
	if err := g.conn.Send(guestchannel.TypeHello, "", hello); err != nil {
		t.Fatalf("guesttest: hello: %v", err)
	}
	// A host that refuses the hello may have closed the channel already;
	// Closed and Errors tell the test.
	_ = g.SendStatus(true, guestchannel.PhaseRunning, g.statuses...)
	go g.serve()
	return g
}

// SetLog sets the log a container answers with.
func (g *Guest) SetLog(container, log string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.logs[container] = log
}

// AppendLog adds lines to a container's log and sends them to the
// requests following it.
func (g *Guest) AppendLog(container, lines string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.logs[container] += lines
	for id, c := range g.followers {
		if c == container {
			_ = g.conn.Send(guestchannel.TypeLogChunk, id, guestchannel.LogChunk{Data: []byte(lines)})
		}
	}
}

// tailLines is the last n lines of log (all of it when n <= 0), as the pod
// VM agent answers a logs request's TailLines.
func tailLines(log string, n int64) []byte {
	if n <= 0 {
		return []byte(log)
	}
	end := len(strings.TrimSuffix(log, "\n"))
	for ; n > 0; n-- {
		i := strings.LastIndexByte(log[:end], '\n')
		if i < 0 {
			return []byte(log)
		}
		end = i
	}
	return []byte(log[end+1:])
}

// SetExec sets how execs are answered: the command's stdout and exit code.
func (g *Guest) SetExec(f func(req guestchannel.ExecRequest, stdin []byte) (stdout string, exitCode int32)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.execFn = f
}

// SendStatus sends a status report with the next Seq.
func (g *Guest) SendStatus(full bool, phase string, cs ...guestchannel.ContainerStatus) error {
	g.mu.Lock()
	g.seq++
	seq := g.seq
	g.mu.Unlock()
	return g.conn.Send(guestchannel.TypeStatus, "", guestchannel.Status{Full: full, Seq: seq, Phase: phase, Containers: cs})
}

// Reboot says hello as the guest booted again with bootID (its status
// count starts over), then a full status, on the same connection: what a
// serial line that stayed connected carries.
func (g *Guest) Reboot(bootID string) error {
	g.mu.Lock()
	g.Hello.BootID, g.seq = bootID, 0
	hello, statuses := g.Hello, g.statuses
	g.mu.Unlock()
	if err := g.conn.Send(guestchannel.TypeHello, "", hello); err != nil {
		return err
	}
	return g.SendStatus(true, guestchannel.PhaseRunning, statuses...)
}

// Seq is the Seq of the last status sent.
func (g *Guest) Seq() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.seq
}

// Close ends the guest's end of the channel.
func (g *Guest) Close() error { return g.conn.Close() }

// Closed is closed when the host side ends the channel.
func (g *Guest) Closed() <-chan struct{} { return g.closed }

// FailStops answers the next n stop requests with an error (as an agent
// that could not decode one does), recording them in Stops all the same.
func (g *Guest) FailStops(n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.failStops = n
}

// HoldReads stops the guest reading its channel, from the next message
// on, until release is called: an agent whose channel loop is stuck (as
// one writing an exec's input to a command that does not read it was).
// What the host writes meanwhile fills the connection's buffers.
func (g *Guest) HoldReads() (release func()) {
	g.reads.Lock()
	return sync.OnceFunc(g.reads.Unlock)
}

// HoldStdinAcks stops the guest acknowledging windowed execs' input
// until release is called, which acknowledges at once all that was
// received meanwhile (one exec.stdin.ack per exec). Only a guest whose
// hello announces guestchannel.CapExecStdinAck acknowledges, and only the
// execs given a window: it takes input as it comes, into the buffer its
// scripted exec reads at the end.
func (g *Guest) HoldStdinAcks() (release func()) {
	g.mu.Lock()
	g.holdAcks = true
	g.mu.Unlock()
	return sync.OnceFunc(func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		g.holdAcks = false
		for id := range g.taken {
			g.ackLocked(id)
		}
	})
}

// ackLocked acknowledges what was received of exec id's input since the
// last acknowledgement (g.mu held, so that counts go out in order).
func (g *Guest) ackLocked(id string) {
	if g.holdAcks || g.taken[id] <= g.acked[id] {
		return
	}
	g.acked[id] = g.taken[id]
	_ = g.conn.Send(guestchannel.TypeExecStdinAck, id, guestchannel.ExecStdinAck{Taken: g.taken[id]})
}

// Execs lists the exec requests received.
func (g *Guest) Execs() []guestchannel.ExecRequest {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]guestchannel.ExecRequest(nil), g.execs...)
}

// StdinReceived counts the bytes of exec input received, every exec's.
func (g *Guest) StdinReceived() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.received
}

// LogsRequests lists the logs requests received.
func (g *Guest) LogsRequests() []guestchannel.LogsRequest {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]guestchannel.LogsRequest(nil), g.logsReqs...)
}

// Stops lists the stop requests received.
func (g *Guest) Stops() []guestchannel.StopRequest {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]guestchannel.StopRequest(nil), g.stops...)
}

// Errors lists the error messages the host sent.
func (g *Guest) Errors() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.errors...)
}

func (g *Guest) serve() {
	defer close(g.closed)
	stdin := map[string]*bytes.Buffer{}
	execs := map[string]guestchannel.ExecRequest{}
	for {
		env, err := g.conn.Receive()
		if err != nil {
			return
		}
		g.reads.RLock() // held by HoldReads
		g.reads.RUnlock()
		switch env.Type {
		case guestchannel.TypeResync:
			g.mu.Lock()
			hello, statuses := g.Hello, g.statuses
			g.mu.Unlock()
			_ = g.conn.Send(guestchannel.TypeHello, "", hello)
			_ = g.SendStatus(true, guestchannel.PhaseRunning, statuses...)
		case guestchannel.TypeError:
			var e guestchannel.Error
			_ = env.Decode(&e)
			g.mu.Lock()
			g.errors = append(g.errors, e.Message)
			g.mu.Unlock()
		case guestchannel.TypeLogs:
			var req guestchannel.LogsRequest
			_ = env.Decode(&req)
			g.mu.Lock()
			g.logsReqs = append(g.logsReqs, req)
			log, ok := g.logs[req.Container]
			if !ok {
				g.mu.Unlock()
				_ = g.conn.Send(guestchannel.TypeLogChunk, env.ID, guestchannel.LogChunk{EOF: true, Error: "no container " + req.Container})
				continue
			}
			if req.Follow {
				g.followers[env.ID] = req.Container
			}
			data := tailLines(log, req.TailLines)
			if req.FromEnd && g.Hello.Can(guestchannel.CapLogsFromEnd) {
				data = nil // an agent without the capability reads the whole log
			}
			// under mu, so that AppendLog's lines come after these
			_ = g.conn.Send(guestchannel.TypeLogChunk, env.ID, guestchannel.LogChunk{Data: data, EOF: !req.Follow})
			g.mu.Unlock()
		case guestchannel.TypeCancel:
			var c guestchannel.Cancel
			_ = env.Decode(&c)
			g.mu.Lock()
			delete(g.followers, c.Target)
			g.mu.Unlock()
			_ = g.conn.Send(guestchannel.TypeLogChunk, c.Target, guestchannel.LogChunk{EOF: true})
		case guestchannel.TypeExec:
			var req guestchannel.ExecRequest
			_ = env.Decode(&req)
			g.mu.Lock()
			g.execs = append(g.execs, req)
			if req.Stdin && req.StdinWindow > 0 && g.Hello.Can(guestchannel.CapExecStdinAck) {
				g.taken[env.ID] = 0
			}
			g.mu.Unlock()
			if req.Stdin {
				execs[env.ID], stdin[env.ID] = req, &bytes.Buffer{}
				continue
			}
			g.exec(env.ID, req, nil)
		case guestchannel.TypeExecStdin:
			var in guestchannel.ExecStdin
			_ = env.Decode(&in)
			if buf, ok := stdin[env.ID]; ok {
				buf.Write(in.Data)
				g.mu.Lock()
				g.received += len(in.Data)
				if _, windowed := g.taken[env.ID]; windowed {
					g.taken[env.ID] += uint64(len(in.Data))
					g.ackLocked(env.ID)
				}
				g.mu.Unlock()
				if in.EOF {
					g.exec(env.ID, execs[env.ID], buf.Bytes())
					delete(stdin, env.ID)
				}
			}
		case guestchannel.TypeStop:
			var req guestchannel.StopRequest
			_ = env.Decode(&req)
			g.mu.Lock()
			g.stops = append(g.stops, req)
			fail := g.failStops > 0
			if fail {
				g.failStops--
			}
			g.mu.Unlock()
			if fail {
				_ = g.conn.Send(guestchannel.TypeError, env.ID, guestchannel.Error{Message: "stop: scripted failure"})
				continue
			}
			now := time.Now().UTC().Truncate(time.Second)
			var cs []guestchannel.ContainerStatus
			for _, s := range g.statuses {
				s.Ready = false
				s.State = guestchannel.ContainerState{Kind: guestchannel.StateTerminated, Reason: "Completed", StartedAt: s.State.StartedAt, FinishedAt: &now}
				cs = append(cs, s)
			}
			// Its containers end at once, as the agent's do on TERM:
			// the stop is done, its phase final.
			_ = g.SendStatus(false, guestchannel.PhaseSucceeded, cs...)
			_ = g.conn.Send(guestchannel.TypeStopped, env.ID, guestchannel.Stopped{})
		}
	}
}

func (g *Guest) exec(id string, req guestchannel.ExecRequest, stdin []byte) {
	g.mu.Lock()
	f := g.execFn
	g.mu.Unlock()
	if f == nil {
		_ = g.conn.Send(guestchannel.TypeExecExit, id, guestchannel.ExecExit{Error: "exec not scripted"})
		return
	}
	out, code := f(req, stdin)
	if out != "" {
		_ = g.conn.Send(guestchannel.TypeExecOutput, id, guestchannel.ExecOutput{Stream: "stdout", Data: []byte(out)})
	}
	_ = g.conn.Send(guestchannel.TypeExecExit, id, guestchannel.ExecExit{ExitCode: code})
}

// StartHostAgent runs a host agent for host on b with its socket in
// channelDir until the test ends.
func StartHostAgent(t testing.TB, b *bus.Bus, host, channelDir string) *hostagent.Service {
	t.Helper()
	return StartHostAgentWith(t, host, channelDir, hostagent.Deps{Deps: deps.Deps{Bus: b}})
}

// StartHostAgentWith is StartHostAgent with the agent's dependencies
// (service endpoints, data modules) and changes to its default settings.
func StartHostAgentWith(t testing.TB, host, channelDir string, d hostagent.Deps, tune ...func(*hostagent.Config)) *hostagent.Service {
	t.Helper()
	cfg := hostagent.DefaultConfig()
	cfg.Host, cfg.ChannelDir, cfg.StopSlack = host, channelDir, 2*time.Second
	for _, f := range tune {
		f(&cfg)
	}
	svc, err := hostagent.New(cfg, d)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("host agent %s: %v", host, err)
		}
	})
	return svc
}

// Concentrate runs c, on a new loopback listener when it has none, until
// the test ends or stop is called; stop waits for Run to return and fails
// the test on its error. It returns the address the lines connect to.
func Concentrate(t testing.TB, c *hostagent.Concentrator) (addr string, stop func()) {
	t.Helper()
	if c.Listener == nil {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		c.Listener = ln
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("concentrator: %v", err)
		}
	})
	t.Cleanup(stop)
	return c.Listener.Addr().String(), stop
}
