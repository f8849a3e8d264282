package provisioner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/record"
)

// errConflict means the record changed between read and write (another
// writer won the compare-and-set); the caller re-reads and tries again.
var errConflict = errors.New("pod record changed concurrently")

// records is the KV bucket `pods`, written only by compare-and-set.
type records struct {
	kv  jetstream.KeyValue
	now func() time.Time

	// written keeps, for the pods on their way to a VM, the value and
	// revision this process last wrote: a fact about such a pod is folded
	// into it and written at that revision without reading the record
	// first. Compare-and-set makes that safe: a record anyone changed since
	// fails the write, and the fact is folded into a fresh read.
	mu      sync.Mutex
	written map[string]writtenRecord
}

type writtenRecord struct {
	rev  uint64
	data []byte
}

// lastWritten returns the record as this process last wrote it, or nil
// when it keeps none for key.
func (s *records) lastWritten(key string) (*events.PodRecord, error) {
	s.mu.Lock()
	w, ok := s.written[key]
	s.mu.Unlock()
	if !ok {
		return nil, nil
	}
	var r events.PodRecord
	if err := json.Unmarshal(w.data, &r); err != nil {
		return nil, fmt.Errorf("decode pod record %s (revision %d): %w", key, w.rev, err)
	}
	r.ResourceVersion = w.rev
	return &r, nil
}

// keep remembers what was just written for key while the pod is on its way
// to a VM (facts still arrive); afterwards, and once it is failed or being
// deleted, the entry goes.
func (s *records) keep(key string, r *events.PodRecord, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if events.PodHasVM(r.Phase) || r.Phase == events.PodPhaseFailed || !r.DeletionRequestedAt.IsZero() {
		delete(s.written, key)
		return
	}
	if s.written == nil {
		s.written = map[string]writtenRecord{}
	}
	s.written[key] = writtenRecord{rev: r.ResourceVersion, data: data}
}

// forget drops what was kept for key (a lost compare-and-set, a delete).
func (s *records) forget(key string) {
	s.mu.Lock()
	delete(s.written, key)
	s.mu.Unlock()
}

// get returns the record of a pod, nil when there is none. ResourceVersion
// is set to the entry's revision, the precondition of the next update.
func (s *records) get(ctx context.Context, key string) (*events.PodRecord, error) {
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read pod record %s: %w", key, err)
	}
	return decodeRecord(e)
}

func decodeRecord(e jetstream.KeyValueEntry) (*events.PodRecord, error) {
	var r events.PodRecord
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, fmt.Errorf("decode pod record %s (revision %d): %w", e.Key(), e.Revision(), err)
	}
	r.ResourceVersion = e.Revision()
	return &r, nil
}

// create stores a new record; errConflict if the key exists.
func (s *records) create(ctx context.Context, r *events.PodRecord) error {
	now := s.now().UTC()
	r.CreatedAt, r.UpdatedAt = now, now
	b, err := encodeRecord(r)
	if err != nil {
		return err
	}
	key := events.PodRecordKey(r.Namespace, r.Name)
	rev, err := s.kv.Create(ctx, key, b)
	if record.Conflict(err) {
		return errConflict
	}
	if err != nil {
		return fmt.Errorf("create pod record %s: %w", r.Key(), err)
	}
	r.ResourceVersion = rev
	s.keep(key, r, b)
	return nil
}

// update writes r if the stored revision is still r.ResourceVersion.
func (s *records) update(ctx context.Context, r *events.PodRecord) error {
	r.UpdatedAt = s.now().UTC()
	b, err := encodeRecord(r)
	if err != nil {
		return err
	}
	key := events.PodRecordKey(r.Namespace, r.Name)
	rev, err := s.kv.Update(ctx, key, b, r.ResourceVersion)
	if err != nil {
		s.forget(key)
		if record.Conflict(err) {
			return errConflict
		}
		return fmt.Errorf("update pod record %s: %w", r.Key(), err)
	}
	r.ResourceVersion = rev
	s.keep(key, r, b)
	return nil
}

// remove deletes the record if it is still at r.ResourceVersion.
func (s *records) remove(ctx context.Context, r *events.PodRecord) error {
	key := events.PodRecordKey(r.Namespace, r.Name)
	s.forget(key)
	err := s.kv.Delete(ctx, key, jetstream.LastRevision(r.ResourceVersion))
	if err != nil {
		if record.Conflict(err) {
			return errConflict
		}
		return fmt.Errorf("delete pod record %s: %w", r.Key(), err)
	}
	return nil
}

// scan hands every record to fn, one at a time as one replay of the bucket
// reads them (not a request per key), each with its revision. A record that
// does not decode is handed to undecodable, or fails the pass when that is
// nil: drift repair must not take it for a pod without one.
func (s *records) scan(ctx context.Context, fn func(*events.PodRecord), undecodable func(key string, err error)) error {
	store := record.New[events.PodRecord](s.kv, "pod")
	store.Strict = undecodable == nil
	store.Undecodable = undecodable
	return store.ScanEach(ctx, func(_ string, rev uint64, r *events.PodRecord) error {
		r.ResourceVersion = rev
		fn(r)
		return nil
	})
}

func encodeRecord(r *events.PodRecord) ([]byte, error) {
	rv := r.ResourceVersion
	r.ResourceVersion = 0 // the revision is the entry's, not the value's
	b, err := json.Marshal(r)
	r.ResourceVersion = rv
	if err != nil {
		return nil, fmt.Errorf("encode pod record %s: %w", r.Key(), err)
	}
	return b, nil
}
