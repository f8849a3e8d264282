package node

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
)

// What `kubectl logs` asks of the node (the kubelet API's containerLogs
// query) reaches the supervisor as the logs request the host agent
// serves: --tail 0 as from the end (not the whole log, which no tail
// is), --since as a time that many seconds back, --since-time,
// --timestamps and --limit-bytes as such.
func TestKubeletLogsQueryToRequest(t *testing.T) {
	prov := NewProvider(nil, 0, slog.New(slog.DiscardHandler))
	asked := make(chan events.PodLogsRequest, 1)
	prov.logs = func(_ context.Context, req events.PodLogsRequest, w io.Writer) error {
		asked <- req
		_, err := io.WriteString(w, "a line\n")
		return err
	}
	srv := httptest.NewServer(kubeletAPI(prov))
	t.Cleanup(srv.Close)
	sinceTime := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	base := events.PodLogsRequest{Namespace: "default", Name: "web", Container: "app"}
	for _, tc := range []struct {
		name  string
		query string
		want  func(events.PodLogsRequest) events.PodLogsRequest
		since time.Duration // > 0: SinceTime about that long ago
	}{
		{"no tail", "", func(r events.PodLogsRequest) events.PodLogsRequest { return r }, 0},
		{"tail 0", "tailLines=0", func(r events.PodLogsRequest) events.PodLogsRequest { r.FromEnd = true; return r }, 0},
		{"follow tail 0", "tailLines=0&follow=true", func(r events.PodLogsRequest) events.PodLogsRequest { r.FromEnd, r.Follow = true, true; return r }, 0},
		{"tail 3", "tailLines=3", func(r events.PodLogsRequest) events.PodLogsRequest { r.TailLines = 3; return r }, 0},
		{"timestamps and limit", "timestamps=true&limitBytes=10", func(r events.PodLogsRequest) events.PodLogsRequest { r.Timestamps, r.LimitBytes = true, 10; return r }, 0},
		{"since time", "sinceTime=2026-01-02T03:04:05Z", func(r events.PodLogsRequest) events.PodLogsRequest { r.SinceTime = &sinceTime; return r }, 0},
		{"since seconds", "sinceSeconds=60&tailLines=5", func(r events.PodLogsRequest) events.PodLogsRequest { r.TailLines = 5; return r }, time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := time.Now()
			resp, err := http.Get(srv.URL + "/containerLogs/default/web/app?" + tc.query)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || string(body) != "a line\n" {
				t.Fatalf("GET ?%s: %s %q", tc.query, resp.Status, body)
			}
			got, want := <-asked, tc.want(base)
			if tc.since > 0 {
				if got.SinceTime == nil || got.SinceTime.Before(before.Add(-tc.since)) || got.SinceTime.After(time.Now().Add(-tc.since)) {
					t.Errorf("?%s: sinceTime %v, want %s before the request", tc.query, got.SinceTime, tc.since)
				}
				got.SinceTime = nil
			}
			if (got.SinceTime == nil) != (want.SinceTime == nil) || got.SinceTime != nil && !got.SinceTime.Equal(*want.SinceTime) {
				t.Errorf("?%s: sinceTime %v, want %v", tc.query, got.SinceTime, want.SinceTime)
			}
			got.SinceTime, want.SinceTime = nil, nil
			if got != want {
				t.Errorf("?%s: the supervisor was asked %+v, want %+v", tc.query, got, want)
			}
		})
	}
}
