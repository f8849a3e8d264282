package bustest

import (
	"context"
	"testing"
	"time"

	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bus/natsembed"
)

// TestMaxStore is the store capacity of a test's server: the topology's
// byte limits add up to several GiB while a test writes megabytes, so the
// server's default (three quarters of the free disk) would fail tests on a
// machine with little disk to spare.
const TestMaxStore = 1 << 40

// StartServer runs an embedded NATS server with JetStream for the test.
func StartServer(t testing.TB) *natsembed.Server {
	t.Helper()
	return StartServerIn(t, t.TempDir())
}

// StartServerIn runs an embedded server whose store is dir, so that a test
// can stop it and start another on the same store to check what survives a
// restart.
func StartServerIn(t testing.TB, dir string) *natsembed.Server {
	t.Helper()
	srv, err := natsembed.Start(natsembed.Config{Dir: dir, Host: "127.0.0.1", MaxStore: TestMaxStore})
	if err != nil {
		t.Fatalf("bustest: start NATS: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

// Connect opens a bus connection to srv that the test's cleanup closes.
func Connect(t testing.TB, srv *natsembed.Server) *bus.Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := bus.Connect(ctx, srv.URL())
	if err != nil {
		t.Fatalf("bustest: connect: %v", err)
	}
	t.Cleanup(b.Close)
	return b
}

// Start runs a server, connects to it and declares the topology.
func Start(t testing.TB) *bus.Bus {
	t.Helper()
	srv := StartServer(t)
	b := Connect(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.EnsureTopology(ctx); err != nil {
		t.Fatalf("bustest: topology: %v", err)
	}
	return b
}
