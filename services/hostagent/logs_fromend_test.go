package hostagent_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/logs"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/hostagent/guesttest"
	"github.com/podvisor/podvisor/shared/podstream"
	"github.com/podvisor/podvisor/shared/syncbuf"
)

// A follow from the end (`logs -f --tail 0`) gets exactly what the
// container writes once the agent has begun it, from the client through
// the host agent to an agent announcing guestchannel.CapLogsFromEnd (its
// channel code and log store): a line written at once after the agent
// began the read is there, nothing written before, and the agent gets
// one request, FromEnd.
func TestLogsFollowFromTheEnd(t *testing.T) {
	e := newEnv(t)
	store, w := webLog(t, e)
	w.Write([]byte("old one\nold two\n"))
	p := serveWeb(t, e, store, guestchannel.CapLogsFromEnd)

	out, stop := followFromEnd(t, e, "web")
	req := <-p.opened
	w.Write([]byte("new one\n")) // at once after the agent began the read
	w.Write([]byte("new two\n"))
	waitFor(t, "the new lines", func() bool { return out.String() == "new one\nnew two\n" })
	stop()
	if got := out.String(); got != "new one\nnew two\n" {
		t.Errorf("follow from the end printed %q, want only the new lines", got)
	}
	if want := (guestchannel.LogsRequest{Container: "app", Follow: true, FromEnd: true}); req != want || p.requests.Load() != 1 {
		t.Errorf("the agent got %d requests, the first %+v; want one, %+v", p.requests.Load(), req, want)
	}
}

// To an agent that predates FromEnd (it would read the whole log) the host
// agent sends none: it reads the last line and follows from it, leaving
// it out, so the client still gets only the new lines, and a read from
// the end without a follow gets nothing. (With lines to tail, a request
// from the end is refused before any agent is asked.)
func TestLogsFromTheEndOfAnOlderAgent(t *testing.T) {
	e := newEnv(t)
	e.putPod("web", "uid-web", host, 30, "app")
	g := guesttest.Dial(t, e.svc.Socket(), guestchannel.Hello{PodUID: "uid-web", Namespace: "default", Name: "web", BootID: "b"}, "app")
	g.SetLog("app", "old one\nold two\n")
	e.waitReports("uid-web", 1)

	// With lines to tail it is refused, the field named, before the
	// agent is asked.
	s := startStream(t, e, events.SubjectPodLogs(host), events.PodLogsRequest{Namespace: "default", Name: "web", FromEnd: true, TailLines: 2})
	if m := s.next(); !m.EOF || !strings.Contains(m.Error, "fromEnd: starts at the end, not 2 lines before it") {
		t.Fatalf("answer %+v, want an error naming fromEnd", m)
	}
	var none syncbuf.Buffer
	rctx, rcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer rcancel()
	if _, err := podstream.Run(rctx, e.bus.Conn(), events.SubjectPodLogs(host),
		events.PodLogsRequest{Namespace: "default", Name: "web", FromEnd: true}, nil, &none, &none); err != nil || none.String() != "" {
		t.Fatalf("read from the end: %v, printed %q; want nothing", err, none.String())
	}

	out, stop := followFromEnd(t, e, "web")
	waitFor(t, "the follow at the guest", func() bool { return len(g.LogsRequests()) == 3 })
	g.AppendLog("app", "new one\n")
	waitFor(t, "the new line", func() bool { return out.String() == "new one\n" })
	stop()
	last := guestchannel.LogsRequest{Container: "app", TailLines: 1}
	follow := guestchannel.LogsRequest{Container: "app", TailLines: 1, Follow: true}
	if got := g.LogsRequests(); len(got) != 3 || got[0] != last || got[1] != last || got[2] != follow {
		t.Errorf("the older agent got %+v, want the last line for the read, then the last line and a follow from it for the follow: %+v, %+v", got, last, follow)
	}
}

// webLog puts pod web, of one container, app, and begins app's log in a
// store, which serveWeb serves.
func webLog(t *testing.T, e *env) (*logs.Store, *logs.Writer) {
	t.Helper()
	e.putPod("web", "uid-web", host, 30, "app")
	store, err := logs.NewStore(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	w, _ := store.Begin("app", 0)
	t.Cleanup(func() { w.Close() })
	return store, w
}

// serveWeb serves pod web's log from store as an agent announcing caps,
// once its channel is up.
func serveWeb(t *testing.T, e *env, store *logs.Store, caps ...string) *logPod {
	t.Helper()
	p := serveLogs(t, e, store, guestchannel.Hello{Protocol: guestchannel.Protocol, PodUID: "uid-web", Namespace: "default", Name: "web", BootID: "b",
		Capabilities: caps})
	e.waitReports("uid-web", 1)
	return p
}

// followFromEnd runs a client following pod's app log from the end, as
// `podvisor logs -f --tail 0` does; stop ends it as Ctrl-C does.
func followFromEnd(t *testing.T, e *env, pod string) (out *syncbuf.Buffer, stop func()) {
	t.Helper()
	out = &syncbuf.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := podstream.Run(ctx, e.bus.Conn(), events.SubjectPodLogs(host),
			events.PodLogsRequest{Namespace: "default", Name: pod, Follow: true, FromEnd: true}, nil, out, out)
		done <- err
	}()
	t.Cleanup(cancel)
	return out, func() {
		t.Helper()
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("follow: %v", err)
		}
	}
}

// logPod is a pod of one running container, app, whose log is store's,
// read as the pod VM agent reads it; opened receives the first logs
// request once its read has begun (logs.Store.Open).
type logPod struct {
	appPod
	store    *logs.Store
	opened   chan guestchannel.LogsRequest
	requests atomic.Int32
}

func (p *logPod) Logs(ctx context.Context, req guestchannel.LogsRequest, send func([]byte) error) error {
	p.requests.Add(1)
	rd, err := p.store.Open(req.Container, logs.ChannelRequest(req))
	if err != nil {
		return err
	}
	select {
	case p.opened <- req:
	default: // the test reads the first
	}
	return rd.Send(ctx, guestchannel.ChunkSize, send)
}

func (p *logPod) Exec(context.Context, guestchannel.ExecRequest, io.Reader, func(string, []byte)) (int32, error) {
	return 0, errors.New("no exec here")
}
