package lease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	kvrecord "github.com/podvisor/podvisor/shared/record"
)

// DefaultTTL is the lease's lifetime when Lease.TTL is zero: a leader that
// dies without releasing is replaced after at most this long.
const DefaultTTL = 10 * time.Second

// Lease is one key in a KV bucket that at most one holder owns at a time.
type Lease struct {
	// KV is the bucket holding the lease key; required.
	KV jetstream.KeyValue
	// Key is the lease's key; required. It must not collide with the
	// bucket's other keys (pick one their naming rules exclude).
	Key string
	// Holder names this replica in the lease value; NewHolder when empty.
	Holder string
	// TTL is how long a lease lives without renewal (DefaultTTL when zero).
	TTL time.Duration
	// Logger defaults to discarding.
	Logger *slog.Logger

	// mu serializes the leader's writes of the key (renewals and fences)
	// and guards rev, the revision it last wrote (0 while not leading).
	mu     sync.Mutex
	rev    uint64
	holder string
}

// record is the lease key's value. Expires is for people reading the key;
// no replica compares it with its own clock (see "Clocks" in the package
// documentation).
type record struct {
	Holder  string    `json:"holder"`
	Expires time.Time `json:"expires"`
}

// NewHolder returns a name for this replica: hostname (the pod name in
// Kubernetes), process id and a random suffix, so that a restarted process
// on the same host never mistakes its predecessor's lease for its own.
func NewHolder() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// ErrLost is the cause of the function's context when the lease was lost
// (taken over, deleted, or not renewed before it would expire).
var ErrLost = errors.New("lease lost")

func (l *Lease) validate() error {
	var errs []error
	if l.KV == nil {
		errs = append(errs, errors.New("lease: KV: required"))
	}
	if l.Key == "" {
		errs = append(errs, errors.New("lease: Key: required"))
	}
	if l.TTL < 0 {
		errs = append(errs, fmt.Errorf("lease: TTL: must be positive, got %s", l.TTL))
	}
	return errors.Join(errs...)
}

func (l *Lease) ttl() time.Duration {
	if l.TTL == 0 {
		return DefaultTTL
	}
	return l.TTL
}

// Run stands by until it holds the lease, runs fn while it does, and
// releases the lease when fn returns; it repeats after a lost lease. It
// returns nil when ctx ends, and fn's error when fn fails while this
// replica still leads. fn's context ends when ctx does or the lease is lost
// (context.Cause is then ErrLost); fn must return promptly then.
func (l *Lease) Run(ctx context.Context, fn func(ctx context.Context) error) error {
	if err := l.validate(); err != nil {
		return err
	}
	if fn == nil {
		return errors.New("lease: fn: required")
	}
	holder := l.Holder
	if holder == "" {
		holder = NewHolder()
	}
	log := l.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("lease", l.Key, "holder", holder)
	for {
		rev, err := l.acquire(ctx, holder, log)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		log.Info("lease acquired: leading")
		lost, err := l.lead(ctx, holder, rev, fn, log)
		if ctx.Err() != nil {
			return nil
		}
		if lost {
			log.Warn("lease lost: stopped leading")
			continue
		}
		return err
	}
}

func (l *Lease) value(holder string) ([]byte, time.Time) {
	exp := time.Now().Add(l.ttl())
	data, _ := json.Marshal(record{Holder: holder, Expires: exp.UTC()})
	return data, exp
}

// acquire returns the revision of the lease this replica just wrote.
func (l *Lease) acquire(ctx context.Context, holder string, log *slog.Logger) (uint64, error) {
	poll := time.NewTicker(l.ttl() / 3)
	defer poll.Stop()
	// A watcher wakes the standby as soon as the leader releases; the
	// ticker is the fallback and what notices an expiry.
	var changed <-chan jetstream.KeyValueEntry
	if w, err := l.KV.Watch(ctx, l.Key, jetstream.UpdatesOnly(), jetstream.MetaOnly()); err == nil {
		defer func() { _ = w.Stop() }()
		changed = w.Updates()
	}
	standingBy := ""
	var seen observed
	for {
		rev, current, err := l.try(ctx, holder, &seen)
		switch {
		case err != nil && ctx.Err() != nil:
			return 0, ctx.Err()
		case err != nil:
			log.Warn("lease: acquire", "err", err)
		case rev != 0:
			return rev, nil
		case current != standingBy:
			standingBy = current
			log.Info("standing by", "leader", current)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-poll.C:
		case _, ok := <-changed:
			if !ok {
				changed = nil
			}
		}
	}
}

// observed is what a standby last saw of the lease key: its revision and
// when (by this process's monotonic clock) that revision was first seen.
type observed struct {
	rev   uint64
	since time.Time
}

// try makes one attempt: the revision written on success, else the
// current holder. A lease whose revision seen has not changed for a whole
// TTL (by this replica's own clock) was not renewed: its holder is gone or
// cut off, and it is taken over with compare-and-set at that revision, so
// that a holder renewing meanwhile wins instead.
func (l *Lease) try(ctx context.Context, holder string, seen *observed) (uint64, string, error) {
	data, _ := l.value(holder)
	e, err := l.KV.Get(ctx, l.Key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		// Create also succeeds over a deleted key's marker.
		rev, err := l.KV.Create(ctx, l.Key, data)
		if kvrecord.Conflict(err) {
			return 0, "(another replica, just now)", nil
		}
		return rev, "", err
	}
	if err != nil {
		return 0, "", err
	}
	var cur record
	if err := json.Unmarshal(e.Value(), &cur); err != nil {
		// Not a lease value: overwrite it only as an expired lease would
		// be, which it cannot be shown to be; refuse to guess.
		return 0, "", fmt.Errorf("key %s holds %q, not a lease", l.Key, e.Value())
	}
	now := time.Now()
	if e.Revision() != seen.rev {
		*seen = observed{rev: e.Revision(), since: now}
	}
	if now.Sub(seen.since) < l.ttl() {
		return 0, cur.Holder, nil
	}
	rev, err := l.KV.Update(ctx, l.Key, data, e.Revision())
	if kvrecord.Conflict(err) {
		return 0, "(another replica, just now)", nil
	}
	return rev, "", err
}

// Fence proves, right before an action the lease guards (a vMotion), that
// this replica still holds the lease: it renews the lease now with
// compare-and-set at the revision it last wrote. A replica that lost the
// lease (a standby took it over while this one was paused) fails here with
// ErrLost instead of acting, whatever the clocks say. The revision is the
// fencing token; the store, not a clock, decides.
func (l *Lease) Fence(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.rev == 0 {
		return fmt.Errorf("lease %s: not leading: %w", l.Key, ErrLost)
	}
	data, _ := l.value(l.holder)
	next, err := l.KV.Update(ctx, l.Key, data, l.rev)
	if err != nil {
		if lostKey(err) {
			l.rev = 0
			return fmt.Errorf("lease %s: %w", l.Key, ErrLost)
		}
		return fmt.Errorf("lease %s: fence: %w", l.Key, err)
	}
	l.rev = next
	return nil
}

func lostKey(err error) bool {
	return kvrecord.Conflict(err) || errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted)
}

// lead runs fn under the lease written at rev, renewing it until fn
// returns; lost reports whether the lease was lost before that.
func (l *Lease) lead(ctx context.Context, holder string, rev uint64, fn func(context.Context) error, log *slog.Logger) (lost bool, err error) {
	ttl := l.ttl()
	expires := time.Now().Add(ttl)
	l.mu.Lock()
	l.rev, l.holder = rev, holder
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.rev = 0
		l.mu.Unlock()
	}()
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan error, 1)
	go func() { done <- fn(fctx) }()
	renew := time.NewTicker(ttl / 3)
	defer renew.Stop()
	held := true
	for {
		select {
		case err := <-done:
			l.mu.Lock()
			rev, held = l.rev, held && l.rev != 0
			l.mu.Unlock()
			if held {
				l.release(holder, rev, log)
			}
			return !held, err
		case <-renew.C:
			if !held || ctx.Err() != nil {
				// Waiting for fn to return. A renewal sent now could still
				// reach the store after its context ends, leaving a revision
				// this replica never learns, so none is sent.
				continue
			}
			data, exp := l.value(holder)
			rctx, rcancel := context.WithTimeout(ctx, ttl/3)
			l.mu.Lock()
			var next uint64
			var err error
			if l.rev == 0 {
				err = jetstream.ErrKeyRevisionMismatch // a fence found it lost
			} else {
				next, err = l.KV.Update(rctx, l.Key, data, l.rev)
				if err == nil {
					l.rev = next
				}
			}
			l.mu.Unlock()
			rcancel()
			switch {
			case err == nil:
				expires = exp
			case ctx.Err() != nil:
				// Shutting down: fn sees ctx end; release after it returns.
			case lostKey(err):
				log.Warn("lease: renewal lost the key to another writer", "err", err)
				held = false
				cancel(ErrLost)
			case time.Now().Add(ttl / 3).After(expires):
				// The lease expires before the next attempt: a standby may
				// take over then, so stop leading now.
				log.Warn("lease: renewal failed and the lease is about to expire", "err", err, "expires", expires)
				held = false
				cancel(ErrLost)
			default:
				log.Warn("lease: renewal failed; retrying", "err", err, "expires", expires)
			}
		}
	}
}

// release deletes the lease key if it is still the one this replica wrote,
// so a standby takes over at once. A renewal whose reply was lost (its
// context ended after the request left) may have moved the key past rev; the
// key is then still this replica's when its value names this holder, and it
// is deleted at the revision read.
func (l *Lease) release(holder string, rev uint64, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), l.ttl()/3)
	defer cancel()
	err := l.KV.Delete(ctx, l.Key, jetstream.LastRevision(rev))
	if kvrecord.Conflict(err) {
		var e jetstream.KeyValueEntry
		if e, err = l.KV.Get(ctx, l.Key); err == nil {
			var cur record
			if json.Unmarshal(e.Value(), &cur) == nil && cur.Holder == holder {
				err = l.KV.Delete(ctx, l.Key, jetstream.LastRevision(e.Revision()))
			} else {
				log.Info("lease: not released: another replica holds it", "holder", cur.Holder)
				return
			}
		}
	}
	if err != nil {
		log.Warn("lease: release", "err", err)
		return
	}
	log.Info("lease released")
}
