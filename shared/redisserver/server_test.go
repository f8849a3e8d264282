package redisserver_test

import (
	"context"
	"errors"
	"os/exec"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/podvisor/podvisor/shared/redisserver"
)

func ping(t *testing.T, url string) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET on %s: %v", url, err)
	}
	if got := c.Get(ctx, "k").Val(); got != "v" {
		t.Fatalf("GET k = %q, want v", got)
	}
	return c
}

func TestStartServesAndStops(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not on PATH; install it (apt-get install redis-server) to run this test")
	}
	srv, err := redisserver.Start(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	c := ping(t, srv.URL())
	if srv.Embedded() {
		t.Fatal("Start returned an embedded server")
	}
	srv.Close()
	srv.Close() // twice is fine
	if err := c.Ping(context.Background()).Err(); err == nil {
		t.Fatal("server still answers after Close")
	}
}

func TestStartPersistsInDir(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not on PATH")
	}
	dir := t.TempDir()
	srv, err := redisserver.Start(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	ping(t, srv.URL())
	srv.Close()

	srv2, err := redisserver.Start(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	opts, _ := redis.ParseURL(srv2.URL())
	c := redis.NewClient(opts)
	defer c.Close()
	if got := c.Get(context.Background(), "k").Val(); got != "v" {
		t.Fatalf("after restart GET k = %q, want v (append-only file in %s)", got, dir)
	}
}

func TestStartMissingBinary(t *testing.T) {
	_, err := redisserver.Start(context.Background(), "", redisserver.WithBinary("no-such-redis-server-binary"))
	if !errors.Is(err, redisserver.ErrNotInstalled) {
		t.Fatalf("err = %v, want ErrNotInstalled", err)
	}
}

func TestStartEmbedded(t *testing.T) {
	srv, err := redisserver.StartEmbedded()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if !srv.Embedded() {
		t.Fatal("Embedded() = false")
	}
	ping(t, srv.URL())
}
