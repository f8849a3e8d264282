package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bus/natsembed"
	"github.com/podvisor/podvisor/shared/config"
	"github.com/podvisor/podvisor/shared/redisserver"
	"github.com/podvisor/podvisor/shared/redistest"
	"github.com/podvisor/podvisor/shared/servetest"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/syncbuf"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// A service started while NATS is down waits for it, saying so, and
// connects once the server is up, rather than exiting.
func TestAServiceWaitsForNATSToComeUp(t *testing.T) {
	port := servetest.FreePort(t)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var b *bus.Bus
	done := waitingToConnect(t, "NATS", func(log *slog.Logger) (err error) {
		b, err = dialRetrying(ctx, bus.ConnConfig{URL: fmt.Sprintf("nats://127.0.0.1:%d", port), Name: "podvisor-test"}, log)
		return err
	})

	srv, err := natsembed.Start(natsembed.Config{Dir: t.TempDir(), Port: port, MaxStore: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	if err := connectedWithin(t, done, "NATS"); err != nil {
		t.Fatalf("not connected once NATS was up: %v", err)
	}
	defer b.Close()
	if st := b.Conn().Status(); st != nats.CONNECTED {
		t.Errorf("connection %s, want CONNECTED", st)
	}
}

// waitingToConnect runs connect with a logger in the background and waits
// until it has logged that what is not reachable (failing the test if
// connect returns first); connect's error comes on the channel.
func waitingToConnect(t *testing.T, what string, connect func(*slog.Logger) error) <-chan error {
	t.Helper()
	var logs syncbuf.Buffer
	done := make(chan error, 1)
	go func() { done <- connect(slog.New(slog.NewTextHandler(&logs, nil))) }()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String(), what+" not reachable; trying again") {
		select {
		case err := <-done:
			t.Fatalf("returned before %s was up: %v", what, err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("no attempt logged within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return done
}

// connectedWithin waits for the connection's end once the server is up.
func connectedWithin(t *testing.T, done <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("still waiting 30s after %s came up", what)
		return nil
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

// A service started while vCenter is down waits for it the same way; a
// refused login is final at once.
func TestAServiceWaitsForVCenterToComeUp(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", servetest.FreePort(t))
	cfg := vsphere.Config{URL: "http://" + addr + "/sdk", Username: "podvisor", Password: "podvisor"}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var sess *vsphere.Session
	done := waitingToConnect(t, "vCenter", func(log *slog.Logger) (err error) {
		sess, err = connectVCenterRetrying(ctx, cfg, log)
		return err
	})

	d, err := sim.Start(ctx, sim.Config{Clusters: 1, HostsPerCluster: 1, Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	if err := connectedWithin(t, done, "vCenter"); err != nil {
		t.Fatalf("not logged in once vCenter was up: %v", err)
	}
	sess.Close(context.Background())

	bad := cfg
	bad.Password = "wrong"
	refusedAtOnce(t, func(log *slog.Logger) error { _, err := connectVCenterRetrying(ctx, bad, log); return err })
}

// refusedAtOnce runs connect with a wrong password and checks that it
// fails without trying again.
func refusedAtOnce(t *testing.T, connect func(*slog.Logger) error) {
	t.Helper()
	start := time.Now()
	if err := connect(slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("connected with a wrong password")
	} else if time.Since(start) > retryFirst {
		t.Errorf("a refused login took %s: tried again", time.Since(start))
	}
}

// A service that needs Redis (the image cache reads it at its start)
// waits for it the same way; a refused login is final at once.
func TestAServiceWaitsForRedisToComeUp(t *testing.T) {
	port := servetest.FreePort(t)
	settings := config.Map(map[string]string{"PODVISOR_REDIS_URL": fmt.Sprintf("redis://127.0.0.1:%d/0", port)})

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var rdb *redis.Client
	done := waitingToConnect(t, "Redis", func(log *slog.Logger) (err error) {
		rdb, err = connectRedisRetrying(ctx, settings, log)
		return err
	})
	redistest.StartServer(t, redisserver.WithPort(port))
	if err := connectedWithin(t, done, "Redis"); err != nil {
		t.Fatalf("not connected once Redis was up: %v", err)
	}
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Errorf("PING after the wait: %v", err)
	}

	users, err := redisserver.Start(ctx, t.TempDir(), redisserver.WithLogger(slog.New(slog.DiscardHandler)),
		redisserver.WithUsers(redisserver.User{Name: "imagecache", Password: "right", Rules: redisserver.RulesWriter}))
	if err != nil {
		t.Fatal(err)
	}
	defer users.Close()
	bad := config.Map(map[string]string{"PODVISOR_REDIS_URL": "redis://imagecache:wrong@" + users.Addr() + "/0"})
	refusedAtOnce(t, func(log *slog.Logger) error { _, err := connectRedisRetrying(ctx, bad, log); return err })
}

// A server that answers it cannot serve yet is waited for; one that
// refuses the login is not.
func TestRedisRetryable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&net.OpError{Op: "dial", Err: errors.New("connection refused")}, true},
		{io.EOF, true},
		{errors.New("LOADING Redis is loading the dataset in memory"), true},
		{errors.New("BUSY Redis is busy running a script"), true},
		{errors.New("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."), true},
		{errors.New("WRONGPASS invalid username-password pair or user is disabled."), false},
		{errors.New("NOPERM User scheduler has no permissions to run the 'ping' command"), false},
		{errors.New("BUSYGROUP Consumer Group name already exists"), false},
	} {
		if got := redisRetryable(tc.err); got != tc.want {
			t.Errorf("redisRetryable(%q) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
