package bus_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
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

// A request says when its requester stops waiting (HeaderReplyBy): the
// handler's context ends then, and nothing is answered after it, so a
// service identity never sends the late answer its response permission
// would refuse (bus.AnswerWindow).
func TestServeDoesNotAnswerAfterTheRequesterGaveUp(t *testing.T) {
	b := bustest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var calls atomic.Int32
	go func() {
		// A bound far beyond the requester's: only HeaderReplyBy can end
		// the handler in time.
		_ = b.ServeWithin(ctx, "pv.query.late", time.Minute, func(hctx context.Context, data []byte) ([]byte, error) {
			if string(data) == "ping" {
				return data, nil
			}
			calls.Add(1)
			<-hctx.Done()
			return []byte("too late"), nil
		})
	}()
	rctx := testContext(t)
	waitFor(t, 5*time.Second, "server subscribed", func() bool {
		_, err := b.Request(rctx, "pv.query.late", []byte("ping"))
		return err == nil
	})

	before := bus.ServeExpired()
	short, stop := context.WithTimeout(rctx, 200*time.Millisecond)
	_, err := b.Request(short, "pv.query.late", []byte("slow"))
	stop()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("request to a handler slower than the requester: err = %v, want its deadline", err)
	}
	waitFor(t, 5*time.Second, "the slow handler's answer dropped at the requester's deadline", func() bool {
		return bus.ServeExpired() == before+1
	})

	// A request whose requester already gave up is not handled at all.
	inbox := b.Conn().NewRespInbox()
	sub, err := b.Conn().SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	req := nats.NewMsg("pv.query.late")
	req.Reply = inbox
	req.Data = []byte("stale")
	req.Header.Set(bus.HeaderReplyBy, time.Now().Add(-time.Second).UTC().Format(time.RFC3339Nano))
	if err := b.Conn().PublishMsg(req); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the stale request dropped", func() bool { return bus.ServeExpired() == before+2 })
	if err := b.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := sub.Pending(); n != 0 {
		t.Errorf("%d answers reached the inbox of requests nobody waited for", n)
	}
	if got := calls.Load(); got != 1 {
		t.Errorf("the handler ran %d times, want 1 (the stale request must not reach it)", got)
	}
}

// ServeMsgWithin hands its handler the request itself: a wildcard subject
// serves many, each answered by the subject it came on, and a handler that
// handed the reply subject on (ErrReplyHandedOn) leaves the answer to
// whoever got it: nothing else is sent.
func TestServeMsgWithinGivesTheRequest(t *testing.T) {
	b := bustest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_ = b.ServeMsgWithin(ctx, "pv.query.msg.>", time.Second, func(_ context.Context, req *nats.Msg) ([]byte, error) {
			if strings.HasSuffix(req.Subject, ".handed") {
				if err := b.Conn().Publish(req.Reply, []byte("from elsewhere")); err != nil {
					return nil, err
				}
				return nil, bus.ErrReplyHandedOn
			}
			return []byte(req.Subject), nil
		})
	}()
	rctx := testContext(t)
	waitFor(t, 5*time.Second, "server subscribed", func() bool {
		_, err := b.Request(rctx, "pv.query.msg.ping", nil)
		return err == nil
	})
	if got, err := b.Request(rctx, "pv.query.msg.a.b", nil); err != nil || string(got) != "pv.query.msg.a.b" {
		t.Errorf("answer %q, %v; want the request's subject", got, err)
	}

	inbox := b.Conn().NewRespInbox()
	sub, err := b.Conn().SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := b.Conn().PublishRequest("pv.query.msg.handed", inbox, nil); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(5 * time.Second)
	if err != nil || string(m.Data) != "from elsewhere" {
		t.Fatalf("answer %v, %v; want the one handed on", m, err)
	}
	// A second answer would go out as soon as the handler returned: give
	// it the time a later request takes to be answered.
	if _, err := b.Request(rctx, "pv.query.msg.after", nil); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := sub.Pending(); n != 0 {
		t.Errorf("%d more answers to the request handed on", n)
	}
}
