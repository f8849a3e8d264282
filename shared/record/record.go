package record

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

var (
	// ErrNotFound: the record does not exist.
	ErrNotFound = errors.New("record not found")
	// ErrExists: Create found the key taken.
	ErrExists = errors.New("record already exists")
	// ErrConflict: another writer changed the record since it was read.
	ErrConflict = errors.New("record changed concurrently")
	// ErrUnchanged is returned by a Mutate or Upsert change function that
	// has nothing to write; the call then returns the record as read and
	// no error.
	ErrUnchanged = errors.New("record unchanged")
)

// DefaultAttempts bounds Mutate's read-change-write rounds.
const DefaultAttempts = 8

// Store is a typed view of one KV bucket whose values are T as JSON.
type Store[T any] struct {
	kv   jetstream.KeyValue
	noun string
	// Attempts bounds Mutate's rounds on conflicts; default DefaultAttempts.
	Attempts int
	// BeforeWrite, if set, runs on every value just before it is written
	// (to stamp an UpdatedAt field, for example).
	BeforeWrite func(*T)
	// CallTimeout, when set, bounds each request to the bucket. The KV
	// client bounds a request by itself only when its context has no
	// deadline: a caller whose context ends far away (a drain's half hour)
	// would otherwise wait that long for an answer lost with a NATS node.
	CallTimeout time.Duration
	// ScanTimeout bounds Scan's pass over the bucket; default
	// DefaultScanTimeout.
	ScanTimeout time.Duration
	// Skip, when set, names keys of the bucket that hold no record of T (a
	// lease kept beside the records): Scan leaves them out.
	Skip func(key string) bool
	// Strict makes Scan fail on a value that does not decode as T instead
	// of leaving it out: for a reader that takes a missing record for a
	// gone one (and frees what it held), a record it cannot read must stop
	// the pass.
	Strict bool
	// Undecodable, when set and not Strict, is told of each value Scan
	// leaves out because it does not decode: a reader whose pass has parts
	// that a missing record would mislead skips those parts and does the
	// rest.
	Undecodable func(key string, err error)
}

// DefaultScanTimeout is Store.ScanTimeout's default.
const DefaultScanTimeout = 30 * time.Second

// call bounds one request by CallTimeout, when set.
func (s *Store[T]) call(ctx context.Context) (context.Context, context.CancelFunc) {
	if s.CallTimeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, s.CallTimeout)
}

// New returns the store of bucket kv; noun names a record in errors
// ("pod", "network").
func New[T any](kv jetstream.KeyValue, noun string) *Store[T] {
	return &Store[T]{kv: kv, noun: noun}
}

// KV is the underlying bucket.
func (s *Store[T]) KV() jetstream.KeyValue { return s.kv }

// Get returns the record at key and its revision, or nil, 0 and no error
// when there is none.
func (s *Store[T]) Get(ctx context.Context, key string) (*T, uint64, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read %s %s: %w", s.noun, key, err)
	}
	v, err := s.decode(key, e.Value())
	if err != nil {
		return nil, 0, err
	}
	return v, e.Revision(), nil
}

func (s *Store[T]) decode(key string, data []byte) (*T, error) {
	v := new(T)
	if err := json.Unmarshal(data, v); err != nil {
		return nil, fmt.Errorf("decode %s %s: %w", s.noun, key, err)
	}
	return v, nil
}

func (s *Store[T]) encode(key string, v *T) ([]byte, error) {
	if s.BeforeWrite != nil {
		s.BeforeWrite(v)
	}
	data, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %s %s: %w", s.noun, key, err)
	}
	return data, nil
}

// Create writes v at key if the key is free (or deleted); ErrExists
// otherwise, in whichever form JetStream reported the taken key (Conflict).
func (s *Store[T]) Create(ctx context.Context, key string, v *T) (uint64, error) {
	data, err := s.encode(key, v)
	if err != nil {
		return 0, err
	}
	ctx, cancel := s.call(ctx)
	defer cancel()
	rev, err := s.kv.Create(ctx, key, data)
	if err != nil {
		// Every form of a lost compare-and-set: on a replicated bucket a
		// Create of a taken key can come back as the stream's "wrong last
		// sequence" rather than ErrKeyExists.
		if Conflict(err) {
			return 0, fmt.Errorf("create %s %s: %w", s.noun, key, ErrExists)
		}
		return 0, fmt.Errorf("create %s %s: %w", s.noun, key, err)
	}
	return rev, nil
}

// Put writes v at key: Create when rev is 0, otherwise an update at rev.
// Either losing to another writer is ErrConflict.
func (s *Store[T]) Put(ctx context.Context, key string, v *T, rev uint64) (uint64, error) {
	data, err := s.encode(key, v)
	if err != nil {
		return 0, err
	}
	ctx, cancel := s.call(ctx)
	defer cancel()
	if rev == 0 {
		rev, err = s.kv.Create(ctx, key, data)
	} else {
		rev, err = s.kv.Update(ctx, key, data, rev)
	}
	if err != nil {
		if Conflict(err) {
			return 0, fmt.Errorf("write %s %s: %w", s.noun, key, ErrConflict)
		}
		return 0, fmt.Errorf("write %s %s: %w", s.noun, key, err)
	}
	return rev, nil
}

// Set writes v at key whatever is there: for derived read models that
// have a single writer and no history worth guarding.
func (s *Store[T]) Set(ctx context.Context, key string, v *T) (uint64, error) {
	data, err := s.encode(key, v)
	if err != nil {
		return 0, err
	}
	ctx, cancel := s.call(ctx)
	defer cancel()
	rev, err := s.kv.Put(ctx, key, data)
	if err != nil {
		return 0, fmt.Errorf("write %s %s: %w", s.noun, key, err)
	}
	return rev, nil
}

// Conflict reports a compare-and-set lost to another writer: a Create of
// a key that exists, an Update or a Delete at a revision that is no longer
// the key's last. JetStream says so in three ways: ErrKeyExists (Create),
// ErrKeyRevisionMismatch (Update), and the raw "wrong last sequence" API
// error (a Delete at a revision, a Create over a delete marker that loses
// its second try). Every owner of KV records decides "someone else wrote
// first" with this one test.
func Conflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// Mutate applies change to the record at key and writes it at the revision
// it read, re-reading and re-applying on a conflict. It returns the record
// as written (or as read, when change returned ErrUnchanged). A missing
// record is ErrNotFound; change's own error is returned as is.
func (s *Store[T]) Mutate(ctx context.Context, key string, change func(*T) error) (*T, error) {
	return s.upsert(ctx, key, false, func(v *T, _ bool) error { return change(v) })
}

// Upsert is Mutate that also creates: change gets a zero T and exists false
// when there is no record yet.
func (s *Store[T]) Upsert(ctx context.Context, key string, change func(v *T, exists bool) error) (*T, error) {
	return s.upsert(ctx, key, true, change)
}

func (s *Store[T]) upsert(ctx context.Context, key string, create bool, change func(*T, bool) error) (*T, error) {
	attempts := s.Attempts
	if attempts <= 0 {
		attempts = DefaultAttempts
	}
	for range attempts {
		v, rev, err := s.Get(ctx, key)
		if err != nil {
			return nil, err
		}
		exists := v != nil
		if !exists {
			if !create {
				return nil, fmt.Errorf("%s %s: %w", s.noun, key, ErrNotFound)
			}
			v = new(T)
		}
		if err := change(v, exists); err != nil {
			if errors.Is(err, ErrUnchanged) {
				if !exists {
					return nil, nil
				}
				return v, nil
			}
			return nil, err
		}
		if _, err := s.Put(ctx, key, v, rev); err != nil {
			if errors.Is(err, ErrConflict) {
				continue
			}
			return nil, err
		}
		return v, nil
	}
	return nil, fmt.Errorf("%s %s: %d attempts: %w", s.noun, key, attempts, ErrConflict)
}

// Delete removes the record at key; a missing one is not an error.
func (s *Store[T]) Delete(ctx context.Context, key string) error {
	ctx, cancel := s.call(ctx)
	defer cancel()
	if err := s.kv.Delete(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("delete %s %s: %w", s.noun, key, err)
	}
	return nil
}

// DeleteIf deletes the record at key if goes(v) says so, by
// compare-and-set at the revision read: a record rewritten meanwhile (a
// template built again by another replica) is read again and judged
// anew, never deleted on the strength of an older value. It says whether
// it deleted; a missing record is no error.
func (s *Store[T]) DeleteIf(ctx context.Context, key string, goes func(*T) bool) (bool, error) {
	attempts := s.Attempts
	if attempts <= 0 {
		attempts = DefaultAttempts
	}
	for range attempts {
		v, rev, err := s.Get(ctx, key)
		if err != nil || v == nil || !goes(v) {
			return false, err
		}
		cctx, cancel := s.call(ctx)
		err = s.kv.Delete(cctx, key, jetstream.LastRevision(rev))
		cancel()
		switch {
		case err == nil:
			return true, nil
		case !Conflict(err):
			return false, fmt.Errorf("delete %s %s: %w", s.noun, key, err)
		}
	}
	return false, fmt.Errorf("delete %s %s: %d attempts: %w", s.noun, key, attempts, ErrConflict)
}

// Keys lists the keys of the bucket's records, sorted.
func (s *Store[T]) Keys(ctx context.Context) ([]string, error) {
	lister, err := s.kv.ListKeys(ctx)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("list %s records: %w", s.noun, err)
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys, nil
}

// List returns every record, in key order. Records deleted between the
// listing and their read are left out.
func (s *Store[T]) List(ctx context.Context) ([]T, error) {
	keys, err := s.Keys(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(keys))
	for _, k := range keys {
		v, _, err := s.Get(ctx, k)
		if err != nil {
			return nil, err
		}
		if v != nil {
			out = append(out, *v)
		}
	}
	return out, nil
}

// Scan reads every record in one pass over the bucket: a watcher replays
// each key's current value, where List makes a request per key. It is for
// readers of many records (a sweep, a new leader's recovery). Keys Skip
// names and values that do not decode as T (written by another version,
// not this reader's to judge) are left out, unless Strict. T may be a view
// of the record, a struct of the few fields the reader needs: decoding
// skips the rest, so a pass over many large records keeps only what it
// uses. The pass is bounded by
// ScanTimeout: a replay whose end never comes (its consumer lost with a
// NATS node) would otherwise hold its caller for good.
func (s *Store[T]) Scan(ctx context.Context) ([]*T, error) {
	var out []*T
	err := s.ScanEach(ctx, func(_ string, _ uint64, v *T) error {
		out = append(out, v)
		return nil
	})
	return out, err
}

// ScanEach is Scan handing each record to fn as it is read, with its key
// and revision (the precondition of a write that follows the pass). An
// error from fn ends the pass with it.
func (s *Store[T]) ScanEach(ctx context.Context, fn func(key string, rev uint64, v *T) error) error {
	limit := s.ScanTimeout
	if limit <= 0 {
		limit = DefaultScanTimeout
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	w, err := s.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("list %s records: %w", s.noun, err)
	}
	defer func() { _ = w.Stop() }()
	n := 0
	for {
		select {
		case <-ctx.Done():
			if parent.Err() != nil {
				return parent.Err()
			}
			return fmt.Errorf("list %s records: the replay did not end within %s (%d records read)", s.noun, limit, n)
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("list %s records: the watch closed", s.noun)
			}
			if e == nil {
				return nil // the end of the current values
			}
			if e.Operation() != jetstream.KeyValuePut || s.Skip != nil && s.Skip(e.Key()) {
				continue
			}
			v, err := s.decode(e.Key(), e.Value())
			if err != nil {
				if s.Strict {
					return fmt.Errorf("list %s records: %w", s.noun, err)
				}
				if s.Undecodable != nil {
					s.Undecodable(e.Key(), err)
				}
				continue
			}
			n++
			if err := fn(e.Key(), e.Revision(), v); err != nil {
				return err
			}
		}
	}
}

// Change is one observation of Watch.
type Change[T any] struct {
	Key string
	// Value is the record; nil when it was deleted.
	Value    *T
	Revision uint64
	// Initial is set on the values present when the watch started.
	Initial bool
}

// Watch sends the current records matching pattern (a key or a NATS
// wildcard such as ">"), then every change, until ctx ends; the channel is
// closed then. A value that does not decode is reported on errs and
// skipped (the channel carries only records).
func (s *Store[T]) Watch(ctx context.Context, pattern string, errs func(error)) (<-chan Change[T], error) {
	w, err := s.kv.Watch(ctx, pattern)
	if err != nil {
		return nil, fmt.Errorf("watch %s records %s: %w", s.noun, pattern, err)
	}
	out := make(chan Change[T])
	go func() {
		defer close(out)
		defer w.Stop()
		initial := true
		for {
			var e jetstream.KeyValueEntry
			var ok bool
			select {
			case <-ctx.Done():
				return
			case e, ok = <-w.Updates():
				if !ok {
					return
				}
			}
			if e == nil { // end of the current values
				initial = false
				continue
			}
			c := Change[T]{Key: e.Key(), Revision: e.Revision(), Initial: initial}
			if e.Operation() == jetstream.KeyValuePut {
				v, err := s.decode(e.Key(), e.Value())
				if err != nil {
					if errs != nil {
						errs(err)
					}
					continue
				}
				c.Value = v
			}
			select {
			case out <- c:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}
