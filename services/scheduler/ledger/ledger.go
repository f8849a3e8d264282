// Package ledger is the scheduler's placement ledger: per host, the pod VMs
// placed there and their sizes, in the KV bucket `ledger` (one
// events.LedgerEntry per host).
//
// Every change is a compare-and-set on the host's key: read the entry and its
// revision, change it, write it back with Update(key, value, revision). If
// another scheduler wrote the host in between, the write fails, the change is
// recomputed on the fresh entry and tried again. Capacity is checked inside
// that loop, against the entry actually being replaced, so two schedulers
// racing for the last room on a host cannot both win: the second one's
// write either fails (and its retry sees the first pod) or was never based on
// stale data.
//
// Reservations are idempotent by allocation key (the pod uid, or uid@id for
// a migration's target): replaying a reservation after a crash finds the
// allocation in place and succeeds without adding it twice. Releases are
// idempotent too.
//
// A native VM's allocation is flagged (Allocation.VM): it holds room but
// is no pod, so the pod cap leaves it out. Entries written before the flag
// existed lack it; MarkVMs sets it, as a compare-and-set like every change.
package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/record"
)

// maxAttempts bounds the CAS loop. Each failed attempt means another writer
// made progress on the same host, so running out means heavy contention, not
// a stuck ledger; the caller retries later.
const maxAttempts = 64

// ErrContention is returned when the CAS loop ran out of attempts.
var ErrContention = errors.New("ledger: too many concurrent writers on the host")

// Capacity is what pod VMs may hold on a host.
type Capacity struct {
	CPUMilli    int64
	MemoryBytes int64
	// MaxPods caps the allocations (0 = no cap).
	MaxPods int
	// IgnoreCordon records an allocation on a cordoned host: for a pod VM
	// that is already there (a completed migration), which a cordon does
	// not undo. New placements leave it false.
	IgnoreCordon bool
}

// Entry is a host's ledger entry with its KV revision (0 = never written).
type Entry struct {
	events.LedgerEntry
	Revision uint64
}

// Ledger reads and writes the ledger bucket.
type Ledger struct {
	kv  jetstream.KeyValue
	now func() time.Time
}

// New returns a ledger over the `ledger` KV bucket.
func New(kv jetstream.KeyValue) *Ledger {
	return &Ledger{kv: kv, now: time.Now}
}

// KV is the underlying bucket (for watching).
func (l *Ledger) KV() jetstream.KeyValue { return l.kv }

// Get returns a host's entry; a host never written has an empty entry at
// revision 0.
func (l *Ledger) Get(ctx context.Context, host string) (Entry, error) {
	kve, err := l.kv.Get(ctx, events.LedgerEntryKey(host))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Entry{LedgerEntry: events.LedgerEntry{Host: host, Allocations: map[string]events.Allocation{}}}, nil
	}
	if err != nil {
		return Entry{}, fmt.Errorf("ledger: get %s: %w", host, err)
	}
	return Decode(kve)
}

// Decode turns a KV entry into an Entry.
func Decode(kve jetstream.KeyValueEntry) (Entry, error) {
	var e events.LedgerEntry
	if len(kve.Value()) > 0 {
		if err := json.Unmarshal(kve.Value(), &e); err != nil {
			return Entry{}, fmt.Errorf("ledger: decode %s@%d: %w", kve.Key(), kve.Revision(), err)
		}
	}
	if e.Allocations == nil {
		e.Allocations = map[string]events.Allocation{}
	}
	return Entry{LedgerEntry: e, Revision: kve.Revision()}, nil
}

// Mutate applies change to the host's current entry and writes it with
// compare-and-set, retrying on conflict. change returns whether it changed
// anything; when it did not, nothing is written. change may be called
// several times and must compute its result from the entry it is given.
func (l *Ledger) Mutate(ctx context.Context, host string, change func(e *events.LedgerEntry) (bool, error)) (Entry, error) {
	return l.mutate(ctx, host, nil, change)
}

// mutate is Mutate starting from hint (the caller's cached copy of the
// entry, as last written or watched) instead of reading it first: when the
// cache is current, a change costs one round trip; when it is not, the
// write fails like any conflict and the loop reads the entry.
func (l *Ledger) mutate(ctx context.Context, host string, hint *Entry, change func(e *events.LedgerEntry) (bool, error)) (Entry, error) {
	key := events.LedgerEntryKey(host)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		var cur Entry
		var err error
		if attempt == 0 && hint != nil {
			cur = hint.clone()
		} else if cur, err = l.Get(ctx, host); err != nil {
			return Entry{}, err
		}
		cur.Host = host
		changed, err := change(&cur.LedgerEntry)
		if err != nil || !changed {
			return cur, err
		}
		cur.UpdatedAt = l.now().UTC()
		data, err := json.Marshal(&cur.LedgerEntry)
		if err != nil {
			return Entry{}, fmt.Errorf("ledger: encode %s: %w", host, err)
		}
		var rev uint64
		if cur.Revision == 0 {
			rev, err = l.kv.Create(ctx, key, data)
		} else {
			rev, err = l.kv.Update(ctx, key, data, cur.Revision)
		}
		if err == nil {
			cur.Revision = rev
			return cur, nil
		}
		if !record.Conflict(err) {
			return Entry{}, fmt.Errorf("ledger: write %s: %w", host, err)
		}
		// Another writer won this round: back off a little (with jitter
		// so that the losers do not collide again in lockstep) and retry
		// on its result.
		select {
		case <-ctx.Done():
			return Entry{}, ctx.Err()
		case <-time.After(time.Duration(rand.IntN(1000*(1+min(attempt, 8)))) * time.Microsecond):
		}
	}
	return Entry{}, fmt.Errorf("%w %s after %d attempts", ErrContention, host, maxAttempts)
}

// clone copies an entry so that a change never touches the caller's copy.
func (e Entry) clone() Entry {
	c := e
	c.Allocations = make(map[string]events.Allocation, len(e.Allocations))
	for k, a := range e.Allocations {
		c.Allocations[k] = a
	}
	return c
}

// Rejection says why an allocation did not fit.
type Rejection struct {
	Reason  string // InsufficientMemory, InsufficientCPU, TooManyPods
	Message string
}

// Result of a reservation.
type Result struct {
	// Entry is the host's entry after the reservation.
	Entry Entry
	// Accepted lists the keys of the allocations now in the entry
	// (including those that already were).
	Accepted []string
	// Rejected maps the keys that did not fit to the reason.
	Rejected map[string]Rejection
}

// Reserve adds allocations to a host if they fit in capacity, in order;
// those that do not fit are rejected, the others are written in one
// compare-and-set. Allocations already in the entry are accepted as they
// are (a replay).
func (l *Ledger) Reserve(ctx context.Context, host string, capacity Capacity, allocs []events.Allocation) (Result, error) {
	return l.ReserveFrom(ctx, nil, host, capacity, allocs)
}

// ReserveFrom is Reserve starting from the caller's cached copy of the
// host's entry (nil to read it): one round trip instead of two when the
// cache is current, and exactly as safe when it is not.
func (l *Ledger) ReserveFrom(ctx context.Context, hint *Entry, host string, capacity Capacity, allocs []events.Allocation) (Result, error) {
	var res Result
	entry, err := l.mutate(ctx, host, hint, func(e *events.LedgerEntry) (bool, error) {
		res = Result{Rejected: map[string]Rejection{}}
		cpu, mem, pods := e.Totals()
		changed := false
		for _, a := range allocs {
			k := a.Key()
			if _, ok := e.Allocations[k]; ok {
				res.Accepted = append(res.Accepted, k)
				continue
			}
			switch {
			case e.Cordoned && !capacity.IgnoreCordon:
				res.Rejected[k] = Rejection{"HostCordoned", "host is cordoned"}
				continue
			case mem+a.MemoryBytes > capacity.MemoryBytes:
				res.Rejected[k] = Rejection{"InsufficientMemory", "insufficient memory"}
				continue
			case cpu+a.CPUMilli > capacity.CPUMilli:
				res.Rejected[k] = Rejection{"InsufficientCPU", "insufficient cpu"}
				continue
			case capacity.MaxPods > 0 && !a.VM && pods+1 > capacity.MaxPods:
				res.Rejected[k] = Rejection{"TooManyPods", "too many pods"}
				continue
			}
			if a.ReservedAt.IsZero() {
				a.ReservedAt = l.now().UTC()
			}
			e.Allocations[k] = a
			cpu, mem = cpu+a.CPUMilli, mem+a.MemoryBytes
			if !a.VM {
				pods++
			}
			res.Accepted = append(res.Accepted, k)
			changed = true
		}
		return changed, nil
	})
	res.Entry = entry
	return res, err
}

// SetCordon records (on) or lifts a host's cordon in its entry; changed
// reports whether the entry said otherwise before.
func (l *Ledger) SetCordon(ctx context.Context, host string, on bool) (entry Entry, changed bool, err error) {
	entry, err = l.Mutate(ctx, host, func(e *events.LedgerEntry) (bool, error) {
		changed = e.Cordoned != on
		e.Cordoned = on
		return changed, nil
	})
	return entry, changed, err
}

// Release removes allocations by key (absent keys are ignored) and returns
// the entry and the allocations removed.
func (l *Ledger) Release(ctx context.Context, host string, keys ...string) (Entry, []events.Allocation, error) {
	var removed []events.Allocation
	entry, err := l.Mutate(ctx, host, func(e *events.LedgerEntry) (bool, error) {
		removed = removed[:0]
		for _, k := range keys {
			if a, ok := e.Allocations[k]; ok {
				removed = append(removed, a)
				delete(e.Allocations, k)
			}
		}
		return len(removed) > 0, nil
	})
	return entry, removed, err
}

// Promote turns a migration's reservation on its target into the pod's
// allocation there (migration completed). It is idempotent: once promoted
// there is nothing left to promote.
func (l *Ledger) Promote(ctx context.Context, host, uid, migrationID string) (Entry, bool, error) {
	promoted := false
	entry, err := l.Mutate(ctx, host, func(e *events.LedgerEntry) (bool, error) {
		promoted = false
		mk := uid + "@" + migrationID
		a, ok := e.Allocations[mk]
		if !ok {
			return false, nil
		}
		delete(e.Allocations, mk)
		a.Kind, a.MigrationID = events.AllocationPod, ""
		e.Allocations[a.Key()] = a
		promoted = true
		return true, nil
	})
	return entry, promoted, err
}

// MarkVMs flags as a native VM's each allocation of the host that lacks
// the flag and whose uid isVM names a VM: an entry written before VMs were
// told apart (or rewritten by a replica of that version, which drops the
// flag) counts such a VM as a pod. hint is the caller's copy of the entry
// (nil to read it). It returns the entry and how many allocations it
// flagged; when another replica flagged them first there are none, and
// nothing is written.
func (l *Ledger) MarkVMs(ctx context.Context, host string, hint *Entry, isVM func(uid string) bool) (Entry, int, error) {
	marked := 0
	entry, err := l.mutate(ctx, host, hint, func(e *events.LedgerEntry) (bool, error) {
		marked = 0
		for k, a := range e.Allocations {
			if !a.VM && isVM(a.UID) {
				a.VM = true
				e.Allocations[k] = a
				marked++
			}
		}
		return marked > 0, nil
	})
	return entry, marked, err
}

// List returns every host's entry.
func (l *Ledger) List(ctx context.Context) ([]Entry, error) {
	lister, err := l.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("ledger: list: %w", err)
	}
	var out []Entry
	for k := range lister.Keys() {
		if events.IsPodBindingKey(k) {
			continue
		}
		kve, err := l.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("ledger: get %s: %w", k, err)
		}
		e, err := Decode(kve)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}
