package serve

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bus/natsembed"
	"github.com/podvisor/podvisor/shared/syncbuf"
)

// A service started while NATS is down waits for it, saying so, and
// connects once the server is up, rather than exiting.
func TestAServiceWaitsForNATSToComeUp(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()

	var logs syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	type result struct {
		b   *bus.Bus
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := dialRetrying(ctx, bus.ConnConfig{URL: fmt.Sprintf("nats://127.0.0.1:%d", port), Name: "podvisor-test"}, log)
		done <- result{b, err}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String(), "NATS not reachable; trying again") {
		select {
		case r := <-done:
			t.Fatalf("returned before NATS was up: %v", r.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("no attempt logged within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}

	srv, err := natsembed.Start(natsembed.Config{Dir: t.TempDir(), Port: port, MaxStore: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("not connected once NATS was up: %v", r.err)
		}
		defer r.b.Close()
		if st := r.b.Conn().Status(); st != nats.CONNECTED {
			t.Errorf("connection %s, want CONNECTED", st)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("still waiting 30s after NATS came up")
	}
}

// Waiting ends with the context (SIGTERM), with the last error; a refusal
// is final at once.
func TestWaitingForNATSEndsWithTheContextAndARefusalIsFinal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	if _, err := dialRetrying(ctx, bus.ConnConfig{URL: "nats://127.0.0.1:1"}, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("connected to nothing")
	}
	if ctx.Err() == nil {
		t.Error("gave up before the context ended")
	}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("bus: connect: %w", nats.ErrNoServers), true},
		{fmt.Errorf("bus: connect: %w", &net.OpError{Op: "dial", Err: fmt.Errorf("connection refused")}), true},
		{fmt.Errorf("bus: connect: %w", nats.ErrAuthorization), false},
		{fmt.Errorf("bus: connect: %w", nats.ErrAuthExpired), false},
	} {
		if got := dialRetryable(tc.err); got != tc.want {
			t.Errorf("dialRetryable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
