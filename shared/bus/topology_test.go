package bus_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bus/natsembed"
	"github.com/podvisor/podvisor/shared/bustest"
)

func TestEnsureTopologyDeclaresStreamsAndBuckets(t *testing.T) {
	b := bustest.Start(t)
	ctx := testContext(t)
	// A second run (every process runs it at start-up) changes nothing and fails nothing.
	if err := b.EnsureTopology(ctx); err != nil {
		t.Fatalf("second EnsureTopology: %v", err)
	}
	for name, subjects := range bus.StreamSubjects() {
		s, err := b.JetStream().Stream(ctx, name)
		if err != nil {
			t.Errorf("stream %s: %v", name, err)
			continue
		}
		cfg := s.CachedInfo().Config
		if !slices.Equal(cfg.Subjects, subjects) {
			t.Errorf("stream %s subjects = %v, want %v", name, cfg.Subjects, subjects)
		}
		if cfg.Storage != jetstream.FileStorage {
			t.Errorf("stream %s storage = %v, want file", name, cfg.Storage)
		}
		if cfg.Duplicates < bus.DuplicateWindow {
			t.Errorf("stream %s duplicate window = %s, want >= %s", name, cfg.Duplicates, bus.DuplicateWindow)
		}
	}
	dlq, err := b.JetStream().Stream(ctx, bus.StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	if got := dlq.CachedInfo().Config.MaxAge; got != bus.DLQRetention {
		t.Errorf("DLQ max age = %s, want %s", got, bus.DLQRetention)
	}
	for _, bucket := range bus.Buckets() {
		if _, err := b.KV(ctx, bucket); err != nil {
			t.Errorf("bucket %s: %v", bucket, err)
		}
	}
	kv, err := b.KV(ctx, bus.BucketNetworks)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.History() < 10 {
		t.Errorf("networks bucket keeps %d versions, want many (versions are restorable snapshots)", st.History())
	}
	if _, err := b.KV(ctx, "typo"); err == nil {
		t.Errorf("KV of an undeclared bucket succeeded")
	}
}

// Streams and buckets survive a restart of the embedded server on its Dir.
func TestEmbeddedServerResumesFromDir(t *testing.T) {
	dir := t.TempDir()
	ctx := testContext(t)

	srv := bustest.StartServerIn(t, dir)
	b, err := bus.Connect(ctx, srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.EnsureTopology(ctx); err != nil {
		t.Fatal(err)
	}
	kv, err := b.KV(ctx, bus.BucketPods)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, "default.web", []byte(`{"phase":"Running"}`)); err != nil {
		t.Fatal(err)
	}
	ev := mustEvent(t, typePodRequested, "default/web", nil)
	mustPublish(t, b, ev)
	b.Close()
	srv.Shutdown()

	srv2 := bustest.StartServerIn(t, dir)
	b2 := bustest.Connect(t, srv2)
	if err := b2.EnsureTopology(ctx); err != nil {
		t.Fatalf("EnsureTopology on a resumed store: %v", err)
	}
	kv2, err := b2.KV(ctx, bus.BucketPods)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv2.Get(ctx, "default.web")
	if err != nil {
		t.Fatalf("KV entry lost across restart: %v", err)
	}
	if string(e.Value()) != `{"phase":"Running"}` {
		t.Errorf("KV value = %s", e.Value())
	}
	// Admission relies on Create failing for an existing key.
	if _, err := kv2.Create(ctx, "default.web", []byte(`{}`)); !errors.Is(err, jetstream.ErrKeyExists) {
		t.Errorf("Create of an existing key: err = %v, want ErrKeyExists", err)
	}
	msgs := streamMsgs(t, b2, events.StreamPods)
	if len(msgs) != 1 || msgs[0].Header.Get("ce-id") != ev.ID() {
		t.Errorf("PODS after restart holds %d messages", len(msgs))
	}
	// The de-duplication window survives too: republishing is still a no-op.
	mustPublish(t, b2, ev)
	if n := len(streamMsgs(t, b2, events.StreamPods)); n != 1 {
		t.Errorf("republish after restart stored a duplicate: %d messages", n)
	}
}

func TestConnectFailsFastWithoutServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	_, err := bus.Connect(ctx, "nats://127.0.0.1:1")
	if err == nil {
		t.Fatal("Connect to a closed port succeeded")
	}
	if time.Since(start) > 3*time.Second {
		t.Errorf("Connect took %s to fail", time.Since(start))
	}
	if _, err := bus.Connect(ctx, ""); err == nil {
		t.Error("Connect with an empty url succeeded")
	}
}

// The store's capacity is what the topology's byte limits are admitted
// against: a server with less than they add up to refuses the topology
// (as one on a short disk does by default), the tests' capacity admits it.
func TestMaxStoreAdmitsTheTopology(t *testing.T) {
	for _, tc := range []struct {
		maxStore int64
		ok       bool
	}{{maxStore: 1 << 30, ok: false}, {maxStore: bustest.TestMaxStore, ok: true}} {
		srv, err := natsembed.Start(natsembed.Config{Dir: t.TempDir(), Host: "127.0.0.1", MaxStore: tc.maxStore})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Shutdown)
		err = bustest.Connect(t, srv).EnsureTopology(testContext(t))
		if tc.ok && err != nil {
			t.Errorf("MaxStore %d: EnsureTopology: %v", tc.maxStore, err)
		}
		if !tc.ok && (err == nil || !strings.Contains(err.Error(), "insufficient storage")) {
			t.Errorf("MaxStore %d: EnsureTopology: %v, want insufficient storage", tc.maxStore, err)
		}
	}
}
