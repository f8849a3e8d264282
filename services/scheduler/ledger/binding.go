package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/record"
)

// Pod bindings make a pod's placement unique across hosts (the per-host
// compare-and-set only makes each host's entry consistent). The protocol,
// for a scheduler placing pod uid on host:
//
//  1. Reserve the allocation on host (the usual per-host CAS).
//  2. Claim: create the binding uid → host. If a binding to another host
//     exists and is live (that host's entry holds the pod), the pod is
//     placed there already: release the allocation of step 1. A binding
//     that is not live (its host released the pod: deleted, evicted,
//     moved) is taken over with compare-and-set on its revision.
//
// Whoever claims first wins. A binding is written only after its host's
// entry holds the pod, so the liveness check in step 2 reads a fact, never
// an intention: a loser sees the winner's allocation and backs off, and one
// pod is never allocated on two hosts for longer than a losing writer's
// steps 1-2. A placement costs one write per pod (the claim) besides its
// share of the host's reservation.
//
// Bindings written before this protocol may be unconfirmed (the older one
// bound, reserved, then confirmed); an unconfirmed binding is live like a
// confirmed one when its host holds the pod.

// Binding is a pod's binding with its KV revision.
type Binding struct {
	events.PodBinding
	Revision uint64
	// TookOver is the host a claim took the binding from (its entry no
	// longer held the pod), "" when the claim created it or found it.
	TookOver string
}

// GetBinding reads a pod's binding (ok false when there is none).
func (l *Ledger) GetBinding(ctx context.Context, uid string) (Binding, bool, error) {
	kve, err := l.kv.Get(ctx, events.PodBindingKey(uid))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Binding{}, false, nil
	}
	if err != nil {
		return Binding{}, false, fmt.Errorf("ledger: binding of %s: %w", uid, err)
	}
	var b Binding
	if err := json.Unmarshal(kve.Value(), &b.PodBinding); err != nil {
		return Binding{}, false, fmt.Errorf("ledger: decode binding of %s: %w", uid, err)
	}
	b.Revision = kve.Revision()
	return b, true, nil
}

// Claim binds uid to host once host's entry holds the pod's allocation
// (step 2). It returns the binding now in force: Host == host means the
// pod is this host's; another Host means the pod is live there and the
// caller's allocation on host must go.
func (l *Ledger) Claim(ctx context.Context, uid, host string) (Binding, error) {
	key := events.PodBindingKey(uid)
	mine := events.PodBinding{Host: host, UID: uid, Confirmed: true}
	data, _ := json.Marshal(mine)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		rev, err := l.kv.Create(ctx, key, data)
		if err == nil {
			return Binding{PodBinding: mine, Revision: rev}, nil
		}
		if !record.Conflict(err) {
			return Binding{}, fmt.Errorf("ledger: claim %s: %w", uid, err)
		}
		cur, ok, err := l.GetBinding(ctx, uid)
		if err != nil {
			return Binding{}, err
		}
		if !ok {
			continue // deleted meanwhile: create again
		}
		if cur.Host == host && cur.Confirmed {
			return cur, nil // ours already (a replay)
		}
		if cur.Host != host {
			live, err := l.holds(ctx, cur.Host, uid)
			if err != nil {
				return Binding{}, err
			}
			if live {
				return cur, nil // live elsewhere
			}
		}
		rev, err = l.kv.Update(ctx, key, data, cur.Revision)
		if err == nil {
			b := Binding{PodBinding: mine, Revision: rev}
			if cur.Host != host {
				b.TookOver = cur.Host
			}
			return b, nil
		}
		if !record.Conflict(err) {
			return Binding{}, fmt.Errorf("ledger: take over binding of %s: %w", uid, err)
		}
	}
	return Binding{}, fmt.Errorf("%w: binding of %s", ErrContention, uid)
}

// holds reports whether host's entry holds the pod's own allocation, on
// the entry as it stands. A read may be served by a NATS node that has not
// applied the latest writes yet (KV reads are direct gets, which any
// replica answers), and a claim that took a stale "not held" for the truth
// would take a live pod's binding and place it twice. So a "not held" is
// proved current by writing the entry back unchanged at the revision read
// (a compare-and-set that fails on a stale read, which is then read
// again). A stale "held" errs the safe way: the caller gives up its own
// reservation and names a host the pod was on, never places it twice.
func (l *Ledger) holds(ctx context.Context, host, uid string) (bool, error) {
	held := false
	_, err := l.Mutate(ctx, host, func(e *events.LedgerEntry) (bool, error) {
		a, ok := e.Allocations[uid]
		held = ok && a.Kind == events.AllocationPod
		return !held, nil
	})
	return held, err
}

// Rebind moves a confirmed binding to another host (a completed
// migration).
// It is a compare-and-set on the binding as read, so that it never
// overwrites a binding another scheduler changed in between unseen.
func (l *Ledger) Rebind(ctx context.Context, uid, host string) error {
	data, _ := json.Marshal(events.PodBinding{Host: host, UID: uid, Confirmed: true})
	key := events.PodBindingKey(uid)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		cur, ok, err := l.GetBinding(ctx, uid)
		if err != nil {
			return err
		}
		switch {
		case ok && cur.Host == host && cur.Confirmed:
			return nil
		case ok:
			_, err = l.kv.Update(ctx, key, data, cur.Revision)
		default:
			_, err = l.kv.Create(ctx, key, data)
		}
		if err == nil {
			return nil
		}
		if !record.Conflict(err) {
			return fmt.Errorf("ledger: rebind %s: %w", uid, err)
		}
	}
	return fmt.Errorf("%w: rebind of %s", ErrContention, uid)
}

// Unbind removes a pod's binding (pod deleted, failed or evicted). With
// rev > 0 only that revision is removed (a writer dropping a binding it
// holds but could not use).
func (l *Ledger) Unbind(ctx context.Context, uid string, rev uint64) error {
	var opts []jetstream.KVDeleteOpt
	if rev > 0 {
		opts = append(opts, jetstream.LastRevision(rev))
	}
	err := l.kv.Delete(ctx, events.PodBindingKey(uid), opts...)
	if err == nil || errors.Is(err, jetstream.ErrKeyNotFound) || (rev > 0 && record.Conflict(err)) {
		return nil
	}
	return fmt.Errorf("ledger: unbind %s: %w", uid, err)
}
