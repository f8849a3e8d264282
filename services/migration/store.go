package migration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/record"
)

// store reads and writes the service's records (KV `migrations`, `drains`)
// and reads the other services' read models (pods, hosts, net-hosts).
// Writes are compare-and-set on the key's revision: the handlers and the
// migration's runner may write one record at the same time, and the loser
// retries on fresh data.
type store struct {
	migs, drains          jetstream.KeyValue
	pods, hosts, netHosts jetstream.KeyValue
	now                   func() time.Time
}

// casAttempts bounds a compare-and-set loop; only a burst of writers to one
// record makes it lose more than once or twice.
const casAttempts = 20

func openStore(ctx context.Context, b *bus.Bus, now func() time.Time) (*store, error) {
	st := &store{now: now}
	var errs []error
	open := func(bucket string) jetstream.KeyValue {
		kv, err := b.KV(ctx, bucket)
		if err != nil {
			errs = append(errs, fmt.Errorf("KV %s (is the topology declared?): %w", bucket, err))
		}
		return kv
	}
	st.migs = open(events.BucketMigrations)
	st.pods = open(events.BucketPods)
	st.hosts = open(events.BucketHosts)
	st.netHosts = open(events.BucketNetHosts)
	// The drains bucket is the migration service's own: it declares it
	// (idempotently) rather than relying on the shared topology, replicated
	// like the migrations bucket.
	drains, err := b.OwnBucket(ctx, jetstream.KeyValueConfig{
		Bucket:      events.BucketDrains,
		Description: "podvisor drain records (written by the migration service)",
		History:     1,
		Storage:     jetstream.FileStorage,
		MaxBytes:    bus.BucketMaxBytes,
	}, events.BucketMigrations)
	if err != nil {
		errs = append(errs, fmt.Errorf("KV %s: %w", events.BucketDrains, err))
	}
	st.drains = drains
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return st, nil
}

// kvCallTimeout bounds one KV read or write. The KV client applies its own
// default only to a context without a deadline; a drain's context has one
// (DrainTimeout, half an hour away), and a request whose answer was lost
// with a NATS node waited that long, holding the drain (the full run's
// stall).
const kvCallTimeout = 10 * time.Second

func getJSON[T any](ctx context.Context, kv jetstream.KeyValue, key string) (*T, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, kvCallTimeout)
	defer cancel()
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("get %s: %w", key, err)
	}
	v := new(T)
	if err := json.Unmarshal(e.Value(), v); err != nil {
		return nil, 0, fmt.Errorf("decode %s: %w", key, err)
	}
	return v, e.Revision(), nil
}

// listTimeout bounds one listing of a bucket. A watcher whose replay
// stalls (its consumer lost with a NATS node, the end-of-replay mark never
// sent) would otherwise hold its caller for good — the sweep, a drain, or
// a new leader's recovery, with the lease still renewed — and nothing
// would ever retry.
var listTimeout = 30 * time.Second

// listJSON reads every value of a bucket. A watcher replays the current
// value of each key and then signals the end with nil, which is one pass
// over the stream instead of one request per key.
func listJSON[T any](ctx context.Context, kv jetstream.KeyValue) ([]*T, error) {
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", kv.Bucket(), err)
	}
	defer func() { _ = w.Stop() }()
	var out []*T
	for {
		select {
		case <-ctx.Done():
			if parent.Err() != nil {
				return nil, parent.Err()
			}
			return nil, fmt.Errorf("list %s: the replay did not end within %s (%d records read)", kv.Bucket(), listTimeout, len(out))
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("watch closed")
			}
			if e == nil {
				return out, nil
			}
			if e.Operation() != jetstream.KeyValuePut || e.Key() == events.MigrationLeaderKey {
				continue // the leader lease is no record
			}
			v := new(T)
			if err := json.Unmarshal(e.Value(), v); err != nil {
				continue // a record another version wrote; not ours to judge
			}
			out = append(out, v)
		}
	}
}

func (s *store) migration(ctx context.Context, id string) (*events.MigrationRecord, error) {
	r, _, err := getJSON[events.MigrationRecord](ctx, s.migs, events.MigrationRecordKey(id))
	return r, err
}

func (s *store) migrations(ctx context.Context) ([]*events.MigrationRecord, error) {
	return listJSON[events.MigrationRecord](ctx, s.migs)
}

// createMigration writes a new record; errExists when the ID is taken.
func (s *store) createMigration(ctx context.Context, r *events.MigrationRecord) error {
	now := s.now().UTC()
	if r.CreatedAt.IsZero() {
		r.CreatedAt = now
	}
	r.UpdatedAt = now
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, kvCallTimeout)
	defer cancel()
	if _, err := s.migs.Create(cctx, events.MigrationRecordKey(r.ID), data); err != nil {
		if record.Conflict(err) {
			return errExists
		}
		return fmt.Errorf("create migration %s: %w", r.ID, err)
	}
	return nil
}

// updateMigration applies mutate to the current record and writes it back
// by compare-and-set, retrying on a concurrent write. mutate returns false
// to leave the record as it is. It returns the record as written (or as
// found).
//
// Every caller updates a record it read or created before, and only
// finished records are ever removed (prune), so a record not found here
// is a read answered by a NATS node that has not applied it yet (a KV
// read is a direct get, which any replica of the bucket answers): that is
// an error (errNoRecord), for the caller to try again, never "nothing to
// do".
func (s *store) updateMigration(ctx context.Context, id string, mutate func(r *events.MigrationRecord) bool) (*events.MigrationRecord, error) {
	key := events.MigrationRecordKey(id)
	for range casAttempts {
		r, rev, err := getJSON[events.MigrationRecord](ctx, s.migs, key)
		if err != nil {
			return nil, err
		}
		if r == nil {
			return nil, fmt.Errorf("update migration %s: %w", id, errNoRecord)
		}
		if !mutate(r) {
			return r, nil
		}
		r.UpdatedAt = s.now().UTC()
		data, err := json.Marshal(r)
		if err != nil {
			return nil, err
		}
		cctx, cancel := context.WithTimeout(ctx, kvCallTimeout)
		_, err = s.migs.Update(cctx, key, data, rev)
		cancel()
		if err != nil {
			if record.Conflict(err) {
				continue
			}
			return nil, fmt.Errorf("update migration %s: %w", id, err)
		}
		return r, nil
	}
	return nil, fmt.Errorf("update migration %s: too many concurrent writers", id)
}

func (s *store) drain(ctx context.Context, host string) (*events.DrainRecord, uint64, error) {
	return getJSON[events.DrainRecord](ctx, s.drains, events.DrainRecordKey(host))
}

func (s *store) drainRecords(ctx context.Context) ([]*events.DrainRecord, error) {
	return listJSON[events.DrainRecord](ctx, s.drains)
}

// putDrain writes a drain record: Create when rev is 0, else Update at rev.
func (s *store) putDrain(ctx context.Context, r *events.DrainRecord, rev uint64) (uint64, error) {
	r.UpdatedAt = s.now().UTC()
	data, err := json.Marshal(r)
	if err != nil {
		return 0, err
	}
	key := events.DrainRecordKey(r.Host)
	ctx, cancel := context.WithTimeout(ctx, kvCallTimeout)
	defer cancel()
	if rev == 0 {
		rev, err = s.drains.Create(ctx, key, data)
	} else {
		rev, err = s.drains.Update(ctx, key, data, rev)
	}
	if err != nil {
		return 0, fmt.Errorf("write drain record %s: %w", r.Host, err)
	}
	return rev, nil
}

// updateDrain is updateMigration for drain records: a record not found is
// errNoRecord, for the caller to try again (a drain's runner stops and the
// leader's sweep resumes the drain), never "nothing to do" — a drain's
// steps update a record they read before, and a read answered by a NATS
// node not yet current must not end a drain unrecorded. The one caller
// for which "no record" is an answer (an uncordon of a host never
// drained, a vm.migrated no drain asked for) says so itself.
func (s *store) updateDrain(ctx context.Context, host string, mutate func(r *events.DrainRecord) bool) (*events.DrainRecord, error) {
	for range casAttempts {
		r, rev, err := s.drain(ctx, host)
		if err != nil {
			return nil, err
		}
		if r == nil {
			return nil, fmt.Errorf("update drain %s: %w", host, errNoRecord)
		}
		if !mutate(r) {
			return r, nil
		}
		if _, err := s.putDrain(ctx, r, rev); err != nil {
			if record.Conflict(err) {
				continue
			}
			return nil, err
		}
		return r, nil
	}
	return nil, fmt.Errorf("update drain %s: too many concurrent writers", host)
}

func (s *store) pod(ctx context.Context, namespace, name string) (*events.PodRecord, error) {
	r, _, err := getJSON[events.PodRecord](ctx, s.pods, events.PodRecordKey(namespace, name))
	return r, err
}

// podsOnHost lists the pod records whose host is host.
func (s *store) podsOnHost(ctx context.Context, host string) ([]*events.PodRecord, error) {
	all, err := listJSON[events.PodRecord](ctx, s.pods)
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	var out []*events.PodRecord
	for _, p := range all {
		if p.Host == host {
			out = append(out, p)
		}
	}
	return out, nil
}

func (s *store) host(ctx context.Context, name string) (*events.HostRecord, error) {
	r, _, err := getJSON[events.HostRecord](ctx, s.hosts, events.HostRecordKey(name))
	return r, err
}

func (s *store) network(ctx context.Context, name string) (*events.NetworkAvailability, error) {
	r, _, err := getJSON[events.NetworkAvailability](ctx, s.netHosts, events.NetworkRecordKey(name))
	return r, err
}
