package bus_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
)

func TestRequestReply(t *testing.T) {
	b := bustest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- b.Serve(ctx, "pv.query.hosts", func(_ context.Context, data []byte) ([]byte, error) {
			if string(data) == "bad" {
				return nil, errors.New("cluster \"bad\" not found")
			}
			return bytes.ToUpper(data), nil
		})
	}()
	rctx := testContext(t)
	waitFor(t, 5*time.Second, "server subscribed", func() bool {
		_, err := b.Request(rctx, "pv.query.hosts", []byte("ping"))
		return err == nil
	})

	got, err := b.Request(rctx, "pv.query.hosts", []byte("cluster-1"))
	if err != nil || string(got) != "CLUSTER-1" {
		t.Errorf("Request = %q, %v; want CLUSTER-1", got, err)
	}
	_, err = b.Request(rctx, "pv.query.hosts", []byte("bad"))
	if !errors.Is(err, bus.ErrRemote) || !strings.Contains(err.Error(), `cluster "bad" not found`) {
		t.Errorf("remote failure: err = %v, want ErrRemote with the handler's message", err)
	}
	_, err = b.Request(rctx, "pv.query.nobody", nil)
	if !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("request to an unserved subject: err = %v, want ErrNoResponders", err)
	}

	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}

// Replicas of a service share a queue group: one request, one answer.
func TestServeReplicasAnswerOnce(t *testing.T) {
	srv := bustest.StartServer(t)
	b := bustest.Connect(t, srv)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	calls := make(chan int, 100)
	for i := range 3 {
		go func() {
			_ = b.Serve(ctx, "pv.query.pods", func(context.Context, []byte) ([]byte, error) {
				calls <- i
				return []byte("ok"), nil
			})
		}()
	}
	rctx := testContext(t)
	waitFor(t, 5*time.Second, "servers subscribed", func() bool {
		c, err := srv.Server().Connz(&server.ConnzOptions{Subscriptions: true})
		n := 0
		for _, ci := range c.Conns {
			n += len(slices.DeleteFunc(ci.Subs, func(s string) bool { return s != "pv.query.pods" }))
		}
		return err == nil && n == 3
	})
	const n = 20
	for range n {
		if _, err := b.Request(rctx, "pv.query.pods", nil); err != nil {
			t.Fatal(err)
		}
	}
	// The server routes a request to one member of the queue group when it
	// is published, so once every request has its answer the server's
	// delivery count is final: no replica can still be handed one.
	c, err := srv.Server().Connz(&server.ConnzOptions{Subscriptions: true, SubscriptionsDetail: true})
	if err != nil {
		t.Fatal(err)
	}
	var delivered int64
	for _, ci := range c.Conns {
		for _, sd := range ci.SubsDetail {
			if sd.Subject == "pv.query.pods" {
				delivered += sd.Msgs
			}
		}
	}
	if delivered != n || len(calls) != n {
		t.Errorf("%d requests were delivered %d times and answered %d times", n, delivered, len(calls))
	}
}

// A handler that overruns its time is answered with the context's error and
// frees its slot; the requester is not left waiting for its own deadline.
func TestServeBoundsHandlers(t *testing.T) {
	b := bustest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_ = b.ServeWithin(ctx, "pv.query.slow", 200*time.Millisecond, func(hctx context.Context, data []byte) ([]byte, error) {
			if string(data) == "ping" {
				return data, nil
			}
			<-hctx.Done() // a call that never returns by itself
			return nil, hctx.Err()
		})
	}()
	rctx := testContext(t)
	waitFor(t, 5*time.Second, "server subscribed", func() bool {
		_, err := b.Request(rctx, "pv.query.slow", []byte("ping"))
		return err == nil
	})
	start := time.Now()
	_, err := b.Request(rctx, "pv.query.slow", []byte("hang"))
	if !errors.Is(err, bus.ErrRemote) || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("overrunning handler: err = %v, want ErrRemote with the deadline", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("answer took %s, want about the 200ms bound", took)
	}
}
