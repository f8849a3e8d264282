package provisioner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/podvisor/podvisor/events"
)

// errConflict means the record changed between read and write (another
// writer won the compare-and-set); the caller re-reads and tries again.
var errConflict = errors.New("pod record changed concurrently")

// records is the KV bucket `pods`, written only by compare-and-set.
type records struct {
	kv  jetstream.KeyValue
	now func() time.Time
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
	rev, err := s.kv.Create(ctx, events.PodRecordKey(r.Namespace, r.Name), b)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return errConflict
	}
	if err != nil {
		return fmt.Errorf("create pod record %s: %w", r.Key(), err)
	}
	r.ResourceVersion = rev
	return nil
}

// update writes r if the stored revision is still r.ResourceVersion.
func (s *records) update(ctx context.Context, r *events.PodRecord) error {
	r.UpdatedAt = s.now().UTC()
	b, err := encodeRecord(r)
	if err != nil {
		return err
	}
	rev, err := s.kv.Update(ctx, events.PodRecordKey(r.Namespace, r.Name), b, r.ResourceVersion)
	if err != nil {
		if isWrongRevision(err) {
			return errConflict
		}
		return fmt.Errorf("update pod record %s: %w", r.Key(), err)
	}
	r.ResourceVersion = rev
	return nil
}

// remove deletes the record if it is still at r.ResourceVersion.
func (s *records) remove(ctx context.Context, r *events.PodRecord) error {
	err := s.kv.Delete(ctx, events.PodRecordKey(r.Namespace, r.Name), jetstream.LastRevision(r.ResourceVersion))
	if err != nil {
		if isWrongRevision(err) {
			return errConflict
		}
		return fmt.Errorf("delete pod record %s: %w", r.Key(), err)
	}
	return nil
}

// list returns every record.
func (s *records) list(ctx context.Context) ([]*events.PodRecord, error) {
	lister, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list pod records: %w", err)
	}
	defer func() { _ = lister.Stop() }()
	var out []*events.PodRecord
	for key := range lister.Keys() {
		r, err := s.get(ctx, key)
		if err != nil {
			return nil, err
		}
		if r != nil {
			out = append(out, r)
		}
	}
	return out, nil
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

// isWrongRevision recognizes a failed compare-and-set, in both forms the
// server reports it (single replica and replicated streams).
func isWrongRevision(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
