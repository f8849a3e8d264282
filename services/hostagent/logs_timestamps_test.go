package hostagent_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/hostagent/guesttest"
	"github.com/podvisor/podvisor/shared/podstream"
	"github.com/podvisor/podvisor/shared/syncbuf"
)

// readLogs runs a logs request to its end as a client does, and returns
// what it printed and its error.
func readLogs(t *testing.T, e *env, req events.PodLogsRequest) (string, error) {
	t.Helper()
	var out syncbuf.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := podstream.Run(ctx, e.bus.Conn(), events.SubjectPodLogs(host), req, nil, &out, &out)
	return out.String(), err
}

// Timestamps, since and a limit of bytes go from the client through the
// host agent to an agent announcing guestchannel.CapLogsTimestamps (its
// channel code and log store), which answers them: each line after its
// time, only the lines written since, no more than the limit.
func TestLogsTimestampsSinceAndLimit(t *testing.T) {
	e := newEnv(t)
	store, w := webLog(t, e)
	w.Write([]byte("one\n"))
	// since is past the time the store gave "one", which was no later
	// than written.
	written := time.Now()
	since := written
	for !since.After(written) {
		since = time.Now()
	}
	w.Write([]byte("two\n"))
	serveWeb(t, e, store, guestchannel.CapLogsFromEnd, guestchannel.CapLogsTimestamps)

	got, err := readLogs(t, e, events.PodLogsRequest{Namespace: "default", Name: "web", Timestamps: true, SinceTime: &since})
	ts, text, _ := strings.Cut(got, " ")
	at, perr := time.Parse(time.RFC3339Nano, ts)
	if err != nil || text != "two\n" || perr != nil || at.Before(since) || time.Since(at) > time.Minute {
		t.Errorf("logs --timestamps --since-time %s = %q, %v; want two after its time", since.Format(time.RFC3339Nano), got, err)
	}
	if got, err := readLogs(t, e, events.PodLogsRequest{Namespace: "default", Name: "web", LimitBytes: 5}); got != "one\nt" || err != nil {
		t.Errorf("logs --limit-bytes 5 = %q, %v; want %q", got, err, "one\nt")
	}
	if _, err := readLogs(t, e, events.PodLogsRequest{Namespace: "default", Name: "web", LimitBytes: -1}); err == nil || !strings.Contains(err.Error(), "limitBytes") {
		t.Errorf("logs with limitBytes -1: %v, want an error naming limitBytes", err)
	}
}

// To an agent that keeps no line times (it would ignore the options and
// send the whole log without times) the host agent sends no request with
// them: it refuses each, naming the option and its flags.
func TestLogsTimestampsOfAnOlderAgent(t *testing.T) {
	e := newEnv(t)
	e.putPod("web", "uid-web", host, 30, "app")
	g := guesttest.Dial(t, e.svc.Socket(), guestchannel.Hello{PodUID: "uid-web", Namespace: "default", Name: "web", BootID: "b",
		Capabilities: []string{guestchannel.CapLogsFromEnd}}, "app")
	g.SetLog("app", "one\ntwo\n")
	e.waitReports("uid-web", 1)
	since := time.Now()
	for _, tc := range []struct {
		req  events.PodLogsRequest
		want string
	}{
		{events.PodLogsRequest{Timestamps: true}, "timestamps (--timestamps)"},
		{events.PodLogsRequest{SinceTime: &since, TailLines: 1}, "sinceTime (--since, --since-time)"},
		{events.PodLogsRequest{LimitBytes: 3, Follow: true}, "limitBytes (--limit-bytes)"},
	} {
		tc.req.Namespace, tc.req.Name = "default", "web"
		got, err := readLogs(t, e, tc.req)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "keeps no line times") || got != "" {
			t.Errorf("logs %+v of an older agent = %q, %v; want a refusal naming %s", tc.req, got, err, tc.want)
		}
	}
	if got, err := readLogs(t, e, events.PodLogsRequest{Namespace: "default", Name: "web"}); got != "one\ntwo\n" || err != nil {
		t.Errorf("logs without the options = %q, %v; want the whole log", got, err)
	}
	if reqs := g.LogsRequests(); len(reqs) != 1 {
		t.Errorf("the older agent got %+v, want only the request without the options", reqs)
	}
}
