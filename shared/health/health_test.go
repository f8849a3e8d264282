package health

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestEndpoints(t *testing.T) {
	natsUp := true
	s := &Server{
		Checks: map[string]Check{
			"nats": func(context.Context) error {
				if !natsUp {
					return errors.New("not connected")
				}
				return nil
			},
		},
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "up 1\n") }),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("server did not stop")
		}
	})
	base := "http://" + ln.Addr().String()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	tests := []struct {
		name     string
		natsUp   bool
		path     string
		wantCode int
		wantBody string
	}{
		{"alive", true, "/healthz", 200, "ok"},
		{"ready", true, "/readyz", 200, "ok"},
		{"unready names the check", false, "/readyz", 503, "nats: not connected"},
		{"alive while unready", false, "/healthz", 200, "ok"},
		{"metrics", true, "/metrics", 200, "up 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			natsUp = tt.natsUp
			code, body := get(tt.path)
			if code != tt.wantCode || !strings.Contains(body, tt.wantBody) {
				t.Fatalf("GET %s = %d %q, want %d containing %q", tt.path, code, body, tt.wantCode, tt.wantBody)
			}
		})
	}
}

// The runtime's profiles are served only when asked for.
func TestProfilingIsOptIn(t *testing.T) {
	for _, on := range []bool{false, true} {
		srv := httptest.NewServer((&Server{Profiling: on}).Handler())
		resp, err := http.Get(srv.URL + "/debug/pprof/heap?debug=1")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		srv.Close()
		switch {
		case on && (resp.StatusCode != 200 || !strings.Contains(string(body), "heap profile")):
			t.Errorf("with Profiling: GET /debug/pprof/heap = %d %.80q, want 200 and a heap profile", resp.StatusCode, body)
		case !on && resp.StatusCode != 404:
			t.Errorf("without Profiling: GET /debug/pprof/heap = %d, want 404", resp.StatusCode)
		}
	}
}
