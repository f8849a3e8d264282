package testenv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
	"github.com/podvisor/podvisor/shared/redistest"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
)

// Timeout bounds every wait of the package.
const Timeout = 20 * time.Second

// Env is one test's world.
type Env struct {
	T testing.TB
	// Bus is connected to a JetStream server of the test's own.
	Bus *bus.Bus
	// DC is the simulated datacenter (with Datacenter), else nil.
	DC *sim.Datacenter
	// Redis is a client of the test's redis-server (with Redis), else nil.
	Redis *redis.Client
	// Events records every event published on the bus.
	Events *Recorder
}

type options struct {
	dc         *sim.Config
	redis      bool
	noRecorder bool
}

// Option adds a part to the environment.
type Option func(*options)

// Datacenter starts a simulated vCenter with cfg.
func Datacenter(cfg sim.Config) Option { return func(o *options) { o.dc = &cfg } }

// Redis starts a redis-server.
func Redis() Option { return func(o *options) { o.redis = true } }

// NoRecorder leaves the recorder out (Events is nil): for benchmarks, where
// decoding every event on the side would be measured with the code under
// test.
func NoRecorder() Option { return func(o *options) { o.noRecorder = true } }

// Start starts the bus, the recorder and the parts the options ask for;
// everything stops when the test ends.
func Start(t testing.TB, opts ...Option) *Env {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	e := &Env{T: t, Bus: bustest.Start(t)}
	if !o.noRecorder {
		e.Events = record(t, e.Bus)
	}
	if o.dc != nil {
		e.DC = simtest.Start(t, *o.dc)
	}
	if o.redis {
		e.Redis = redistest.Start(t)
	}
	return e
}

// Logger is a discarding logger, or one writing to stderr at debug level
// when PODVISOR_TEST_LOG is set.
func Logger() *slog.Logger {
	if os.Getenv("PODVISOR_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// Run runs a service (its Run) until the test ends. stop cancels it and
// waits for Run to return, which must be nil; it runs once, also at
// cleanup.
func (e *Env) Run(name string, run func(context.Context) error) (stop func()) {
	return Run(e.T, name, run)
}

// Run is Env.Run for tests that start their parts themselves: every test
// runs a service this one way, so a Run that fails on the way out or does
// not return fails the test wherever it is started.
func Run(t testing.TB, name string, run func(context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("%s: Run returned %v after cancel, want nil", name, err)
				}
			case <-time.After(40 * time.Second):
				t.Errorf("%s: Run did not return within 40s of cancel", name)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// Publish publishes p as its owner would (the catalog gives its type and
// its producer; its subject is the payload's object), and returns its
// stream sequence (for WaitHandled). Owners publish only valid payloads:
// an invalid one fails the test (PublishAs sends a wrong one on purpose).
func (e *Env) Publish(p events.Payload) uint64 {
	e.T.Helper()
	k, ok := events.KindOf(p)
	if !ok {
		e.T.Fatalf("publish: %T is not a payload of the event catalog", p)
	}
	if err := p.Validate(); err != nil {
		e.T.Fatalf("publish: %s is not valid: %v", k.Type, err)
	}
	return e.PublishAs(events.OwnerSource(k.Type), k.Type, p.ObjectKey(), p)
}

// PublishAs publishes data (any JSON, for events a test makes wrong on
// purpose) with an explicit source ("test/client" for a request), type and
// subject.
func (e *Env) PublishAs(source, ceType, subject string, data any) uint64 {
	e.T.Helper()
	seq, err := e.TryPublish(source, ceType, subject, data)
	if err != nil {
		e.T.Fatal(err)
	}
	return seq
}

// Send publishes p with an explicit source and type ("test/client" for a
// request, a type other than its owner's), its subject the payload's object.
func (e *Env) Send(source, ceType string, p events.Payload) uint64 {
	e.T.Helper()
	return e.PublishAs(source, ceType, p.ObjectKey(), p)
}

// TryPublish is PublishAs returning its error: for goroutines other than
// the test's (a stand-in service), which must not stop the test.
func (e *Env) TryPublish(source, ceType, subject string, data any) (uint64, error) {
	ev, err := bus.NewEvent(source, ceType, subject, data)
	if err != nil {
		return 0, fmt.Errorf("new event %s: %w", ceType, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	seq, err := e.Bus.PublishSeq(ctx, ev)
	if err != nil {
		return 0, fmt.Errorf("publish %s: %w", ceType, err)
	}
	return seq, nil
}

// Eventually polls cond until it holds, failing the test after Timeout.
func (e *Env) Eventually(what string, cond func() bool) {
	e.T.Helper()
	e.EventuallyWithin(what, Timeout, cond)
}

// EventuallyWithin polls cond until it holds, failing the test after d.
func (e *Env) EventuallyWithin(what string, d time.Duration, cond func() bool) {
	e.T.Helper()
	Eventually(e.T, what, d, cond)
}

// Eventually polls cond until it holds, failing t after d: for tests that
// have no Env at hand.
func Eventually(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// WaitHandled waits until the durable consumer on stream has settled the
// message at seq (acked, or terminated and dead-lettered): its ack floor
// passed it. After that, what the handler did or did not do is final.
func (e *Env) WaitHandled(stream, durable string, seq uint64) {
	e.T.Helper()
	ctx := context.Background()
	var last *jetstream.ConsumerInfo
	e.Eventually(fmt.Sprintf("consumer %s to settle %s sequence %d", durable, stream, seq), func() bool {
		c, err := e.Bus.JetStream().Consumer(ctx, stream, durable)
		if err != nil {
			return false
		}
		last, err = c.Info(ctx)
		return err == nil && last.AckFloor.Stream >= seq
	})
}

// PublishHandled publishes p as its owner would and waits until service's
// consumer of p's stream (durable <service>-<stream>) has settled it.
func (e *Env) PublishHandled(service string, p events.Payload) uint64 {
	e.T.Helper()
	seq := e.Publish(p)
	k, _ := events.KindOf(p)
	e.WaitHandled(k.Stream, service+"-"+k.Stream, seq)
	return seq
}

// WaitDeadLetter waits for a dead letter of service whose reason contains
// want, and returns it.
func (e *Env) WaitDeadLetter(service, want string) bus.DeadLetter {
	e.T.Helper()
	var dl bus.DeadLetter
	e.Eventually(fmt.Sprintf("a dead letter of %s with reason %q", service, want), func() bool {
		st, err := e.Bus.JetStream().Stream(context.Background(), bus.StreamDLQ)
		if err != nil {
			return false
		}
		m, err := st.GetLastMsgForSubject(context.Background(), bus.DLQSubject(service))
		if err != nil {
			return false
		}
		dl, err = bus.ReadDeadLetter(m.Header)
		return err == nil && strings.Contains(dl.Reason, want)
	})
	return dl
}

// KV opens a bucket of the catalog.
func (e *Env) KV(bucket string) jetstream.KeyValue {
	e.T.Helper()
	kv, err := e.Bus.KV(context.Background(), bucket)
	if err != nil {
		e.T.Fatalf("bucket %s: %v", bucket, err)
	}
	return kv
}

// Put writes v as JSON under key, as a record owner would.
func Put(e *Env, bucket, key string, v any) {
	e.T.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		e.T.Fatal(err)
	}
	if _, err := e.KV(bucket).Put(context.Background(), key, data); err != nil {
		e.T.Fatalf("put %s/%s: %v", bucket, key, err)
	}
}

// Get reads the record under key; nil when there is none.
func Get[T any](e *Env, bucket, key string) *T {
	e.T.Helper()
	entry, err := e.KV(bucket).Get(context.Background(), key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		e.T.Fatalf("get %s/%s: %v", bucket, key, err)
	}
	var v T
	if err := json.Unmarshal(entry.Value(), &v); err != nil {
		e.T.Fatalf("record %s/%s: %v", bucket, key, err)
	}
	return &v
}

// MustGet reads the record under key, failing the test when there is none.
func MustGet[T any](e *Env, bucket, key string) *T {
	e.T.Helper()
	v := Get[T](e, bucket, key)
	if v == nil {
		e.T.Fatalf("no record %s/%s", bucket, key)
	}
	return v
}

// List reads every record of a bucket, by key.
func List[T any](e *Env, bucket string) map[string]*T {
	e.T.Helper()
	out := map[string]*T{}
	lister, err := e.KV(bucket).ListKeys(context.Background())
	if err != nil {
		return out
	}
	for k := range lister.Keys() {
		if v := Get[T](e, bucket, k); v != nil {
			out[k] = v
		}
	}
	return out
}

// WaitRecord waits until the record under key exists and satisfies ok.
func WaitRecord[T any](e *Env, bucket, key string, ok func(*T) bool) *T {
	e.T.Helper()
	var v *T
	e.Eventually(fmt.Sprintf("record %s/%s to reach the expected state", bucket, key), func() bool {
		v = Get[T](e, bucket, key)
		return v != nil && ok(v)
	})
	return v
}
