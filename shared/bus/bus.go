package bus

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultConnectionName is the NATS connection name when the caller gives
// none; services pass nats.Name("podvisor-<service>") so that the server's
// connection list says who is who.
const DefaultConnectionName = "podvisor"

// Bus is a connection to NATS with JetStream: the one handle a service needs
// to publish events, consume them, and read or write its KV buckets.
type Bus struct {
	nc *nats.Conn
	js jetstream.JetStream
}

// Connect dials url (one or more comma-separated nats:// URLs). The
// connection reconnects forever: a service outlives NATS restarts and rolling
// upgrades, and publishes made while disconnected fail fast with an error the
// handler turns into a retry. Options given by the caller come after the
// defaults and so override them (nats.Name, nats.UserCredentials for
// PODVISOR_NATS_CREDS, TLS).
//
// The first dial is a single attempt bounded by ctx: a process that cannot
// reach NATS at start-up should fail and be restarted by its supervisor
// rather than look healthy while doing nothing.
func Connect(ctx context.Context, url string, opts ...nats.Option) (*Bus, error) {
	if url == "" {
		return nil, errors.New("bus: connect: url is empty (set PODVISOR_NATS_URL)")
	}
	timeout := 5 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return nil, fmt.Errorf("bus: connect %s: %w", url, context.DeadlineExceeded)
		}
	}
	all := append([]nats.Option{
		nats.Name(DefaultConnectionName),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.Timeout(timeout),
		nats.ErrorHandler(reportAsyncError),
	}, opts...)

	type result struct {
		nc  *nats.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		nc, err := nats.Connect(url, all...)
		done <- result{nc, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		// The dial finishes in the background within its own timeout; close
		// whatever it produces so no connection leaks.
		go func() {
			if r := <-done; r.nc != nil {
				r.nc.Close()
			}
		}()
		return nil, fmt.Errorf("bus: connect %s: %w", url, ctx.Err())
	}
	if r.err != nil {
		return nil, fmt.Errorf("bus: connect %s: %w", url, r.err)
	}
	js, err := jetstream.New(r.nc)
	if err != nil {
		r.nc.Close()
		return nil, fmt.Errorf("bus: jetstream on %s: %w", url, err)
	}
	return &Bus{nc: r.nc, js: js}, nil
}

// reportAsyncError writes what the server refused or reported on a
// connection outside any call (a permissions violation, a slow consumer)
// to stderr, as nats.go's default does, but naming the connection
// (podvisor-<service>) rather than only the server's connection id, so
// that the identity concerned is known.
func reportAsyncError(nc *nats.Conn, sub *nats.Subscription, err error) {
	var subject string
	if sub != nil {
		subject = fmt.Sprintf(" for subscription on %q", sub.Subject)
	}
	fmt.Fprintf(os.Stderr, "nats: connection %q: %v%s\n", nc.Opts.Name, err, subject)
}

// Conn is the underlying core NATS connection.
func (b *Bus) Conn() *nats.Conn { return b.nc }

// JetStream is the JetStream context of the connection.
func (b *Bus) JetStream() jetstream.JetStream { return b.js }

// Close drains the connection: pending publishes and acks are flushed before
// it closes, so an ack sent just before Close is not lost.
func (b *Bus) Close() {
	if b == nil || b.nc == nil || b.nc.IsClosed() {
		return
	}
	if err := b.nc.Drain(); err != nil {
		b.nc.Close()
		return
	}
	// Drain closes the connection when it is done; poll rather than take over
	// the caller's ClosedHandler.
	deadline := time.Now().Add(5 * time.Second)
	for !b.nc.IsClosed() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	b.nc.Close()
}

// KV opens one of the topology's key-value buckets. The bucket must exist
// (EnsureTopology declares them); a missing bucket is an error rather than
// created on the fly so that a typo in a bucket name does not silently make an
// empty bucket.
func (b *Bus) KV(ctx context.Context, bucket string) (jetstream.KeyValue, error) {
	if bucket == "" {
		return nil, errors.New("bus: kv: bucket name is empty")
	}
	kv, err := b.js.KeyValue(ctx, bucket)
	if err != nil {
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, fmt.Errorf("bus: kv bucket %q does not exist (run EnsureTopology first): %w", bucket, err)
		}
		return nil, fmt.Errorf("bus: kv bucket %q: %w", bucket, err)
	}
	return kv, nil
}

// OwnBucket declares (idempotently) a KV bucket a service keeps for itself
// outside the shared topology, replicated like the topology's bucket like:
// on a NATS cluster the topology's buckets are replicated, and a service's
// own bucket must survive the loss of a node as they do. cfg.Replicas is
// set from like's (1 when like cannot be read).
func (b *Bus) OwnBucket(ctx context.Context, cfg jetstream.KeyValueConfig, like string) (jetstream.KeyValue, error) {
	cfg.Replicas = 1
	if kv, err := b.js.KeyValue(ctx, like); err == nil {
		if st, err := kv.Status(ctx); err == nil {
			if js, ok := st.(*jetstream.KeyValueBucketStatus); ok && js.StreamInfo() != nil {
				cfg.Replicas = max(1, js.StreamInfo().Config.Replicas)
			}
		}
	}
	kv, err := b.js.CreateOrUpdateKeyValue(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("bus: kv bucket %q (replicas %d, like %s): %w", cfg.Bucket, cfg.Replicas, like, err)
	}
	return kv, nil
}
