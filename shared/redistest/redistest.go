// Package redistest gives tests a real Redis: a redis-server from PATH on a
// random loopback port, stopped when the test ends. Tests that need Redis
// are skipped with a clear message where redis-server is not installed (CI
// installs it), never silently run against a fake.
package redistest

import (
	"context"
	"errors"
	"log/slog"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/podvisor/podvisor/shared/redisserver"
)

// Start runs a private redis-server for the test and returns a client to it.
func Start(t testing.TB) *redis.Client {
	t.Helper()
	srv := StartServer(t)
	opts, err := redis.ParseURL(srv.URL())
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// StartServer runs a private redis-server for the test and returns it, for
// tests that need its URL or want to stop it themselves; opts are the
// server's (a port, users).
func StartServer(t testing.TB, opts ...redisserver.Option) *redisserver.Server {
	t.Helper()
	srv, err := redisserver.Start(context.Background(), "", append([]redisserver.Option{redisserver.WithLogger(slog.New(slog.DiscardHandler))}, opts...)...)
	if errors.Is(err, redisserver.ErrNotInstalled) {
		t.Skip("redis-server is not on PATH: install it (apt-get install redis-server) to run this test")
	}
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(srv.Close)
	return srv
}
