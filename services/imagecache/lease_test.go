package imagecache

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/imagecache/chaindb"
	il "github.com/podvisor/podvisor/shared/imagemeta"
	"github.com/podvisor/podvisor/shared/redistest"
)

// A puller whose lease renewals fail stops before its lease could expire:
// when Redis becomes unreachable the work's context ends with ErrLeaseLost
// within the TTL, and when another puller has taken the lease the work
// stops and finish marks nothing ready and removes nothing.
func TestPullerStopsWhenItsLeaseCannotBeKept(t *testing.T) {
	const ttl = 600 * time.Millisecond
	rec := events.ChainRecord{ChainID: "sha256:" + "ab12", Datastore: "shared-ds", Layer: "sha256:cd34", State: events.ChainStatePulling}

	start := func(t *testing.T) (*Service, *chaindb.DB, func()) {
		srv := redistest.StartServer(t)
		opts, err := redis.ParseURL(srv.URL())
		if err != nil {
			t.Fatal(err)
		}
		opts.MaxRetries = -1 // a renewal against a stopped server fails at once
		c := redis.NewClient(opts)
		t.Cleanup(func() { _ = c.Close() })
		db := chaindb.New(c, time.Now)
		s := &Service{cfg: Config{LeaseTTL: ttl}, db: db, log: slog.New(slog.DiscardHandler), now: time.Now}
		return s, db, srv.Close
	}

	t.Run("renewals fail", func(t *testing.T) {
		s, db, stopRedis := start(t)
		ctx := context.Background()
		if out, err := db.Begin(ctx, rec, "me", ttl); err != nil || out != chaindb.Acquired {
			t.Fatalf("Begin = %v, %v", out, err)
		}
		work, stop := s.keepLease(ctx, rec, "me")
		defer stop()
		stopRedis()
		stopped := time.Now()
		select {
		case <-work.Done():
			if !errors.Is(context.Cause(work), ErrLeaseLost) {
				t.Fatalf("cause %v, want ErrLeaseLost", context.Cause(work))
			}
			if took := time.Since(stopped); took >= ttl {
				t.Fatalf("the puller stopped %s after Redis went, not before its %s lease could expire", took, ttl)
			}
		case <-time.After(3 * ttl):
			t.Fatal("the puller kept going while it could not renew its lease")
		}
	})

	t.Run("lease taken over", func(t *testing.T) {
		s, db, _ := start(t)
		ctx := context.Background()
		if out, err := db.Begin(ctx, rec, "me", ttl); err != nil || out != chaindb.Acquired {
			t.Fatalf("Begin = %v, %v", out, err)
		}
		work, stop := s.keepLease(ctx, rec, "me")
		defer stop()
		// A successor holds the lease (ours expired while we were paused).
		if err := db.Client().Set(ctx, il.ChainLeaseKey(rec.ChainID, rec.Datastore), "successor", ttl*10).Err(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-work.Done():
		case <-time.After(3 * ttl):
			t.Fatal("the puller kept going after its lease was taken")
		}
		if err := s.fenceLease(ctx, rec, "me"); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("fence before a write = %v, want ErrLeaseLost", err)
		}
		_, _, err := s.finish(work, rec, "me", leaseLost(work, work.Err()), true)
		if !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("finish = %v, want ErrLeaseLost", err)
		}
		got, ok, err := db.Get(ctx, rec.ChainID, rec.Datastore)
		if err != nil || !ok || got.State != events.ChainStatePulling {
			t.Fatalf("chain after the lost pull: %+v (found %v, %v), want still pulling (the successor's)", got, ok, err)
		}
	})
}
