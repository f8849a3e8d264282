package migration

import (
	"context"
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

// listTimeout bounds one listing of a bucket. A watcher whose replay
// stalls (its consumer lost with a NATS node, the end-of-replay mark never
// sent) would otherwise hold its caller for good — the sweep, a drain, or
// a new leader's recovery, with the lease still renewed — and nothing
// would ever retry.
var listTimeout = 30 * time.Second

// records is the typed view of a bucket the service reads or writes, with
// the service's bounds on every request and listing. It is made per use
// from the bucket in the store's field, so a test can put a wrapped bucket
// there.
func records[T any](kv jetstream.KeyValue, noun string, stamp func(*T)) *record.Store[T] {
	st := record.New[T](kv, noun)
	st.Attempts, st.CallTimeout, st.ScanTimeout, st.BeforeWrite = casAttempts, kvCallTimeout, listTimeout, stamp
	// The migration leader's lease lives beside the migration records.
	st.Skip = func(key string) bool { return key == events.MigrationLeaderKey }
	return st
}

func (s *store) migrationRecords() *record.Store[events.MigrationRecord] {
	return records(s.migs, "migration", func(r *events.MigrationRecord) {
		now := s.now().UTC()
		if r.CreatedAt.IsZero() {
			r.CreatedAt = now
		}
		r.UpdatedAt = now
	})
}

func (s *store) drainRecordStore() *record.Store[events.DrainRecord] {
	return records(s.drains, "drain", func(r *events.DrainRecord) { r.UpdatedAt = s.now().UTC() })
}

func (s *store) migration(ctx context.Context, id string) (*events.MigrationRecord, error) {
	r, _, err := s.migrationRecords().Get(ctx, events.MigrationRecordKey(id))
	return r, err
}

func (s *store) migrations(ctx context.Context) ([]*events.MigrationRecord, error) {
	return s.migrationRecords().Scan(ctx)
}

// createMigration writes a new record; errExists when the ID is taken.
func (s *store) createMigration(ctx context.Context, r *events.MigrationRecord) error {
	if _, err := s.migrationRecords().Create(ctx, events.MigrationRecordKey(r.ID), r); err != nil {
		if errors.Is(err, record.ErrExists) {
			return errExists
		}
		return err
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
	return update(ctx, s.migrationRecords(), events.MigrationRecordKey(id), mutate)
}

func (s *store) drain(ctx context.Context, host string) (*events.DrainRecord, uint64, error) {
	return s.drainRecordStore().Get(ctx, events.DrainRecordKey(host))
}

func (s *store) drainRecords(ctx context.Context) ([]*events.DrainRecord, error) {
	return s.drainRecordStore().Scan(ctx)
}

// putDrain writes a drain record: Create when rev is 0, else Update at rev.
func (s *store) putDrain(ctx context.Context, r *events.DrainRecord, rev uint64) (uint64, error) {
	return s.drainRecordStore().Put(ctx, events.DrainRecordKey(r.Host), r, rev)
}

// updateDrain is updateMigration for drain records: a record not found is
// errNoRecord, for the caller to try again (a drain's runner stops and the
// leader's sweep resumes the drain), never "nothing to do" — a drain's
// steps update a record they read before, and a read answered by a NATS
// node not yet current must not end a drain unrecorded. The one caller
// for which "no record" is an answer (an uncordon of a host never
// drained, a vm.migrated no drain asked for) says so itself.
func (s *store) updateDrain(ctx context.Context, host string, mutate func(r *events.DrainRecord) bool) (*events.DrainRecord, error) {
	return update(ctx, s.drainRecordStore(), events.DrainRecordKey(host), mutate)
}

// update is Mutate with the service's answers: mutate reports whether it
// changed the record, and a missing record is errNoRecord.
func update[T any](ctx context.Context, st *record.Store[T], key string, mutate func(*T) bool) (*T, error) {
	r, err := st.Mutate(ctx, key, func(r *T) error {
		if !mutate(r) {
			return record.ErrUnchanged
		}
		return nil
	})
	if errors.Is(err, record.ErrNotFound) {
		return nil, fmt.Errorf("update %s: %w", key, errNoRecord)
	}
	return r, err
}

func (s *store) pod(ctx context.Context, namespace, name string) (*events.PodRecord, error) {
	r, _, err := records[events.PodRecord](s.pods, "pod", nil).Get(ctx, events.PodRecordKey(namespace, name))
	return r, err
}

// podsOnHost lists the pod records whose host is host.
func (s *store) podsOnHost(ctx context.Context, host string) ([]*events.PodRecord, error) {
	all, err := records[events.PodRecord](s.pods, "pod", nil).Scan(ctx)
	if err != nil {
		return nil, err
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
	r, _, err := records[events.HostRecord](s.hosts, "host", nil).Get(ctx, events.HostRecordKey(name))
	return r, err
}

func (s *store) network(ctx context.Context, name string) (*events.NetworkAvailability, error) {
	r, _, err := records[events.NetworkAvailability](s.netHosts, "network", nil).Get(ctx, events.NetworkRecordKey(name))
	return r, err
}
