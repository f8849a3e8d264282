package redisserver_test

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/shared/pki"
	"github.com/podvisor/podvisor/shared/redisclient"
	"github.com/podvisor/podvisor/shared/redisserver"
)

// TestTLSAndUsers: the server speaks TLS only, knows no password-less
// user, lets the writer write and the reader only read.
func TestTLSAndUsers(t *testing.T) {
	privtest.RequireTools(t, "redis-server")
	dir := t.TempDir()
	ca, err := pki.LoadOrCreateCA(dir + "/tls")
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.Issue("redis", pki.Hosts("127.0.0.1")...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv, err := redisserver.Start(ctx, dir+"/redis",
		redisserver.WithTLS(redisserver.TLSFiles{CertFile: cert, KeyFile: key, CAFile: ca.CAFile()}),
		redisserver.WithUsers(
			redisserver.User{Name: "imagecache", Password: "writer-secret", Rules: redisserver.RulesWriter},
			redisserver.User{Name: "scheduler", Password: "reader-secret", Rules: redisserver.RulesReader}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	client := func(rawURL string) *redis.Client {
		opts, err := redisclient.Options(rawURL, ca.CAFile())
		if err != nil {
			t.Fatal(err)
		}
		opts.MaxRetries = 0
		c := redis.NewClient(opts)
		t.Cleanup(func() { c.Close() })
		return c
	}
	if !strings.HasPrefix(srv.URL(), "rediss://imagecache:") {
		t.Fatalf("URL %s: want rediss:// as the first user", srv.URL())
	}
	w := client(srv.URLFor("imagecache"))
	if err := w.Set(ctx, "chain:a", "ready", 0).Err(); err != nil {
		t.Fatalf("writer SET: %v", err)
	}
	r := client(srv.URLFor("scheduler"))
	if got, err := r.Get(ctx, "chain:a").Result(); err != nil || got != "ready" {
		t.Fatalf("reader GET = %q, %v", got, err)
	}
	if err := r.Set(ctx, "chain:a", "forged", 0).Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Errorf("reader SET: %v, want NOPERM", err)
	}
	if err := r.Del(ctx, "chain:a").Err(); err == nil {
		t.Error("reader DEL allowed")
	}
	anon := srv.URLFor("scheduler")
	u, _ := url.Parse(anon)
	u.User = nil
	if err := client(u.String()).Ping(ctx).Err(); err == nil {
		t.Error("connection without a user answered PING")
	}
	u.Scheme = "redis"
	if err := client(u.String()).Ping(ctx).Err(); err == nil {
		t.Error("plain-text connection answered PING")
	}
}
