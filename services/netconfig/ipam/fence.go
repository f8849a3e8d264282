package ipam

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/record"
)

// A network's allocation fence orders its address allocations against its
// deletion across replicas, with compare-and-set writes only (a read may be
// served by a lagging replica of a clustered bucket; a compare-and-set is
// decided by the leader). An allocation creates its address key, then
// advances the fence's revision unless the fence says the network is being
// deleted; a delete first marks the fence (compare-and-set), then lists the
// network's addresses. Of an allocation and a delete racing, either the
// allocation's fence write comes first, and then its address was written
// before the delete listed the addresses, or the delete's mark comes first,
// and then the allocation's write fails on the revision, sees the mark and
// gives its address back. So a network is never deleted while an address
// on it is held.
//
// The same fence orders allocations against a change of the network's
// addressing (a version with another CIDR or gateway), which must not be
// stored while an address it would leave out is held: the change adds its
// own hold to the fence, above the revision of the network record it read,
// then lists the addresses, then stores the new version with a
// compare-and-set on that revision; stored, its hold becomes the fence's
// floor for good (Kept, which never goes down); refused, it removes its
// hold and no other. An allocation carries the revision of the record its
// pool came from (Pool.Record) and commits only if it is not below
// MinRecord, which is always the highest of Kept and the holds. Of an allocation and such a change racing, either the allocation
// commits first, and then the change lists its address, or the change
// holds first, and then the allocation, made from the record as it was,
// gives its address back and is tried again on the record that follows. An allocation from a record written after the one
// the change read (a recount, a push) may commit, but that write fails the
// change's compare-and-set, and the change is tried again.
//
// A change whose put fails with an outcome unknown (a timeout: the new
// version may be stored all the same) can neither keep nor release its
// hold. It reads the record again and settles the hold from what it finds
// (SettleAddressing): written since, the hold is kept; not, the put did not
// land and the hold is lifted. A hold nobody settles (that read failed too,
// or the process died holding) lapses HoldLease after it was taken, so that
// allocations from the record as it stands are not refused until the next
// write of it. A change must therefore store its version well within
// HoldLease of taking its hold.

// ErrNetworkDeleting is returned (wrapped) by Allocate while the network is
// being deleted.
var ErrNetworkDeleting = errors.New("network is being deleted")

// ErrReaddressing is returned (wrapped) by Allocate for an allocation made
// from a network record older than the fence allows: the network's
// addressing is being changed. Read the record again and allocate again.
var ErrReaddressing = errors.New("network addressing is changing")

// fence is the value of a network's fence key.
type fence struct {
	// Deleting is set while a delete counts the network's addresses.
	Deleting bool `json:"deleting,omitempty"`
	// Since is when Deleting was set (shown to a person; never compared).
	Since time.Time `json:"since,omitzero"`
	// MinRecord is the oldest revision of the network record an allocation
	// may have taken its pool from: the highest of Kept and the holds,
	// kept up to date by every change of them. (A replica of a version
	// before Kept and Holds honours MinRecord alone and, writing the fence
	// back, drops the other two: the floor then stays where it was, the
	// safe way, and normalize makes it permanent.)
	MinRecord uint64 `json:"minRecord,omitempty"`
	// Kept is the floor the addressing changes stored set (KeepAddressing);
	// it never goes down.
	Kept uint64 `json:"kept,omitempty"`
	// Holds are the addressing changes under way, each under its own token
	// with the oldest revision it allows (HoldAddressing); a change removes
	// only its own.
	Holds map[string]uint64 `json:"holds,omitempty"`
	// Expires is when each hold lapses (HoldLease after it was taken). A
	// hold without one, taken or written back by a replica of a version
	// before it, lasts until it is kept, released or covered by Kept.
	Expires map[string]time.Time `json:"expires,omitempty"`
}

// HoldLease is how long an addressing change's hold counts when nobody
// keeps, releases or settles it: far longer than a change takes from its
// hold to its put (a listing of the network's addresses and one write),
// short enough that the attaches refused meanwhile succeed within their
// redeliveries.
const HoldLease = 2 * time.Minute

// normalize reads a fence as written by any version: with no hold, all of
// MinRecord is a stored change's floor.
func (f *fence) normalize(now time.Time) {
	if len(f.Holds) == 0 {
		f.Kept = max(f.Kept, f.MinRecord)
	}
	f.settle(now)
}

// settle sets MinRecord from Kept and the holds, and drops the holds Kept
// covers and those lapsed by now.
func (f *fence) settle(now time.Time) {
	m := f.Kept
	for h, v := range f.Holds {
		if exp, ok := f.Expires[h]; v <= f.Kept || (ok && !now.Before(exp)) {
			delete(f.Holds, h)
			continue
		}
		m = max(m, v)
	}
	for h := range f.Expires {
		if _, ok := f.Holds[h]; !ok {
			delete(f.Expires, h)
		}
	}
	f.MinRecord = m
}

// fenceKey has three tokens, like a pod binding, so that neither the
// listing of a network's addresses (<network>.*) nor of its bindings
// (<network>.pod.*) sees it.
func fenceKey(network string) string { return network + ".fence.allocations" }

// commit advances the network's fence after the address key at addrRev was
// created for an allocation; a network being deleted makes it give the
// address back.
//
// The allocations of one network that finish their address keys while a
// fence write is in flight are committed together by the next one (a group
// commit): under a burst one write commits many addresses instead of one
// each, and the allocations no longer race each other for the fence. The
// order the fence guarantees is the same for each of them: its address key
// was created before the write that commits it was read and made.
func (a *Allocator) commit(ctx context.Context, pool Pool, ip string, addrRev uint64, uid string, bindRev uint64) error {
	network := pool.Network
	w := &pendingCommit{ip: ip, rev: addrRev, record: pool.Record, uid: uid, bindRev: bindRev, done: make(chan error, 1)}
	a.fmu.Lock()
	g := a.fences[network]
	if g == nil {
		g = &fenceGroup{}
		a.fences[network] = g
	}
	g.queue = append(g.queue, w)
	lead := !g.running
	g.running = true
	a.fmu.Unlock()
	if lead {
		// The leader writes for everyone queued, its own request among
		// them, until the queue is empty; a caller that gives up waiting
		// does not stop the writes the others wait for.
		go a.runFence(context.WithoutCancel(ctx), network, g)
	}
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fenceGroup queues the allocations of one network waiting for a fence
// write.
type fenceGroup struct {
	queue   []*pendingCommit
	running bool
}

type pendingCommit struct {
	ip  string
	rev uint64
	// uid is the pod's, and bindRev the revision its binding to ip was
	// written at: an address given back takes the binding with it, so
	// that the pod's next allocation finds no binding under way.
	uid     string
	bindRev uint64
	// record is the revision of the network record the allocation's pool
	// came from (Pool.Record).
	record uint64
	done   chan error
}

// fenceWriteTimeout bounds one group's fence write (its reads and
// compare-and-sets) whatever the callers' deadlines.
const fenceWriteTimeout = 30 * time.Second

func (a *Allocator) runFence(ctx context.Context, network string, g *fenceGroup) {
	for {
		a.fmu.Lock()
		batch := g.queue
		g.queue = nil
		if len(batch) == 0 {
			g.running = false
			a.fmu.Unlock()
			return
		}
		a.fmu.Unlock()
		wctx, cancel := context.WithTimeout(ctx, fenceWriteTimeout)
		a.commitGroup(wctx, network, batch)
		cancel()
	}
}

// commitGroup is one fence write for the batch's addresses, each created
// before the fence is read below.
func (a *Allocator) commitGroup(ctx context.Context, network string, batch []*pendingCommit) {
	for range maxCreateRaces {
		f, rev, err := a.readFence(ctx, network)
		if err != nil {
			finish(batch, err)
			return
		}
		if f.Deleting {
			a.giveBack(ctx, network, batch, ErrNetworkDeleting)
			return
		}
		if floor := f.MinRecord; floor > 0 {
			// Allocations made from a record older than an addressing
			// change allows go back; the others commit.
			var stale []*pendingCommit
			batch = slices.DeleteFunc(batch, func(w *pendingCommit) bool {
				if w.record > 0 && w.record < floor {
					stale = append(stale, w)
					return true
				}
				return false
			})
			a.giveBack(ctx, network, stale, ErrReaddressing)
			if len(batch) == 0 {
				return
			}
		}
		if err := a.writeFence(ctx, network, f, rev); err == nil {
			finish(batch, nil)
			return
		} else if !record.Conflict(err) {
			finish(batch, fmt.Errorf("allocate on %s: fence: %w", network, err))
			return
		}
	}
	finish(batch, fmt.Errorf("allocate on %s: fence: lost %d races, giving up for now", network, maxCreateRaces))
}

// giveBack deletes the addresses of allocations the fence refuses and
// tells each why.
func (a *Allocator) giveBack(ctx context.Context, network string, batch []*pendingCommit, why error) {
	for _, w := range batch {
		err := a.kv.Delete(ctx, events.IPAllocationKey(network, w.ip), jetstream.LastRevision(w.rev))
		if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) && !record.Conflict(err) {
			w.done <- fmt.Errorf("give back %s on %s: %w", w.ip, network, err)
			continue
		}
		// The binding goes too, unless written again since (another
		// allocation of the pod took it over): left, it would look like
		// an allocation under way to the pod's next one, which would
		// wait for it to be abandoned.
		if w.bindRev > 0 {
			err := a.kv.Delete(ctx, events.IPPodBindingKey(network, w.uid), jetstream.LastRevision(w.bindRev))
			if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) && !record.Conflict(err) {
				w.done <- fmt.Errorf("give back the binding of %s on %s: %w", w.uid, network, err)
				continue
			}
		}
		w.done <- fmt.Errorf("allocate %s on %s: %w", w.ip, network, why)
	}
}

func finish(batch []*pendingCommit, err error) {
	for _, w := range batch {
		w.done <- err
	}
}

// BeginDelete marks the network as being deleted: from then on no
// allocation on it succeeds until AbortDelete. The caller lists the
// network's addresses after this returns.
func (a *Allocator) BeginDelete(ctx context.Context, network string) error {
	for range maxCreateRaces {
		f, rev, err := a.readFence(ctx, network)
		if err != nil {
			return err
		}
		if f.Deleting {
			return nil
		}
		f.Deleting, f.Since = true, a.now().UTC()
		if err := a.writeFence(ctx, network, f, rev); err == nil {
			return nil
		} else if !record.Conflict(err) {
			return fmt.Errorf("begin delete of %s: %w", network, err)
		}
	}
	return fmt.Errorf("begin delete of %s: lost %d races for the fence", network, maxCreateRaces)
}

// AbortDelete lifts the mark of BeginDelete (the delete was refused).
func (a *Allocator) AbortDelete(ctx context.Context, network string) error {
	for range maxCreateRaces {
		f, rev, err := a.readFence(ctx, network)
		if err != nil {
			return err
		}
		if !f.Deleting {
			return nil
		}
		f.Deleting, f.Since = false, time.Time{}
		if err := a.writeFence(ctx, network, f, rev); err == nil {
			return nil
		} else if !record.Conflict(err) {
			return fmt.Errorf("abort delete of %s: %w", network, err)
		}
	}
	return fmt.Errorf("abort delete of %s: lost %d races for the fence", network, maxCreateRaces)
}

// HoldAddressing makes every allocation on the network made from a record
// older than minRecord give its address back (ErrReaddressing), from now
// on: a change of the network's addressing calls it with one more than the
// revision of the record it read, lists the addresses, and stores its new
// version at that revision (the record's next revision is then the new
// version). It returns the change's own hold: KeepAddressing(hold) once the
// version is stored, ReleaseAddressing(hold) when it is not. Each change
// holds under its own token, so two changes that read the same record
// (two replicas) hold independently: one's release leaves the other's
// hold standing. A hold nobody keeps, releases or settles lapses after
// HoldLease.
func (a *Allocator) HoldAddressing(ctx context.Context, network string, minRecord uint64) (Hold, error) {
	hold := Hold{Token: rand.Text(), MinRecord: minRecord}
	err := a.updateFence(ctx, network, func(f *fence) bool {
		if f.Kept >= minRecord {
			return false // a stored change holds them already, for good
		}
		if f.Holds == nil {
			f.Holds = map[string]uint64{}
		}
		if f.Expires == nil {
			f.Expires = map[string]time.Time{}
		}
		f.Holds[hold.Token] = minRecord
		f.Expires[hold.Token] = a.now().Add(HoldLease).UTC()
		return true
	})
	if err != nil {
		return Hold{}, fmt.Errorf("hold addressing of %s: %w", network, err)
	}
	return hold, nil
}

// Hold is an addressing change's hold on a network's allocations
// (HoldAddressing).
type Hold struct {
	// Token names the change's hold in the fence.
	Token string
	// MinRecord is the oldest revision of the network record it allows.
	MinRecord uint64
}

// ReleaseAddressing lifts the hold of a change that was not stored; the
// other changes' holds stay.
func (a *Allocator) ReleaseAddressing(ctx context.Context, network string, hold Hold) error {
	err := a.updateFence(ctx, network, func(f *fence) bool {
		if _, ok := f.Holds[hold.Token]; !ok {
			return false
		}
		delete(f.Holds, hold.Token)
		return true
	})
	if err != nil {
		return fmt.Errorf("release addressing of %s: %w", network, err)
	}
	return nil
}

// KeepAddressing makes the hold of a change that was stored permanent: an
// allocation made from a record before the change, however late it
// commits, gives its address back. Kept takes the hold's value and the
// hold goes, with every other one Kept now covers (those of changes that
// read an older record, or whose process died holding). The value is the
// hold's own, so that a hold an older replica dropped from the fence is
// kept all the same.
func (a *Allocator) KeepAddressing(ctx context.Context, network string, hold Hold) error {
	err := a.updateFence(ctx, network, func(f *fence) bool {
		if f.Kept >= hold.MinRecord {
			if _, ok := f.Holds[hold.Token]; !ok {
				return false
			}
		}
		f.Kept = max(f.Kept, hold.MinRecord)
		delete(f.Holds, hold.Token)
		return true
	})
	if err != nil {
		return fmt.Errorf("keep addressing of %s: %w", network, err)
	}
	return nil
}

// SettleAddressing settles the hold of a change whose put of the new
// network version failed with an outcome unknown, from the network record
// read again after that failure: recordRevision is its revision (0 when
// there is none). A record at or past the hold's MinRecord was written
// since the change read it, by the change's put or by another writer: the
// hold is kept (an allocation from the record as it is now passes it, one
// from the record the change read is stale either way). A record below it
// was not written: the put did not land, and the hold is lifted.
func (a *Allocator) SettleAddressing(ctx context.Context, network string, hold Hold, recordRevision uint64) error {
	if recordRevision >= hold.MinRecord {
		return a.KeepAddressing(ctx, network, hold)
	}
	return a.ReleaseAddressing(ctx, network, hold)
}

// updateFence applies change to the network's fence and writes it with
// compare-and-set, re-reading and re-applying on a conflict; change returns
// false to write nothing.
func (a *Allocator) updateFence(ctx context.Context, network string, change func(*fence) bool) error {
	for range maxCreateRaces {
		f, rev, err := a.readFence(ctx, network)
		if err != nil {
			return err
		}
		if !change(&f) {
			return nil
		}
		f.settle(a.now())
		if err := a.writeFence(ctx, network, f, rev); err == nil {
			return nil
		} else if !record.Conflict(err) {
			return err
		}
	}
	return fmt.Errorf("lost %d races for the fence", maxCreateRaces)
}

// ForgetNetwork removes the fence of a deleted network, so that a network
// declared again under the name starts clean.
func (a *Allocator) ForgetNetwork(ctx context.Context, network string) error {
	if err := a.kv.Delete(ctx, fenceKey(network)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("forget fence of %s: %w", network, err)
	}
	return nil
}

func (a *Allocator) readFence(ctx context.Context, network string) (fence, uint64, error) {
	var f fence
	_, rev, err := a.getJSON(ctx, fenceKey(network), &f)
	f.normalize(a.now())
	return f, rev, err
}

// writeFence writes f at rev (0: the key must not exist).
func (a *Allocator) writeFence(ctx context.Context, network string, f fence, rev uint64) error {
	data, _ := json.Marshal(f)
	var err error
	if rev == 0 {
		_, err = a.kv.Create(ctx, fenceKey(network), data)
	} else {
		_, err = a.kv.Update(ctx, fenceKey(network), data, rev)
	}
	return err
}

// bind points the pod's binding on network at ip, with compare-and-set:
// another allocator binding the same pod at the same time makes this one
// fail rather than silently overwrite it.
//
// st is what this allocation knows of the binding, updated by bind as it
// writes. st.absent says the caller read no binding for the pod just
// before: the binding is then Created at once, one round trip instead of a
// read and a write; Create fails if a binding appeared meanwhile, and that
// case takes the full path below. st.rev is the revision this allocation
// last wrote the binding at: a binding still at that revision is this
// allocation's own (its create of the address lost to another pod), and
// no other allocation of the pod relies on it, so it is moved without the
// wait for abandoned bindings, even when the pod that won the address has
// given it back since (an allocation the fence refused). A binding to ip
// written by another allocation is written again, so that one sees it is
// no longer its own.
func (a *Allocator) bind(ctx context.Context, network, uid, ip string, st *bindState) error {
	key := events.IPPodBindingKey(network, uid)
	data, _ := json.Marshal(events.IPPodBinding{IP: ip})
	if st.absent {
		st.absent = false
		rev, err := a.kv.Create(ctx, key, data)
		if err == nil {
			st.rev = rev
			return nil
		}
		if !record.Conflict(err) {
			return fmt.Errorf("bind %s on %s: %w", uid, network, err)
		}
	}
	var b events.IPPodBinding
	ok, rev, err := a.getJSON(ctx, key, &b)
	if err != nil {
		return err
	}
	if ok && b.IP == ip && rev == st.rev {
		return nil
	}
	if ok && b.IP != ip {
		// Another allocation for the pod (a second placement handled by
		// another replica at the same moment): moving the binding away from
		// an address the pod holds, or is about to (its key is created right
		// after the binding), would leave that address with no binding, a
		// leak no release finds. Only a binding left behind by an
		// allocation that never created its address is taken over: this
		// allocation's own at once, another's once it is abandoned.
		var cur events.IPAllocation
		held, _, err := a.getJSON(ctx, events.IPAllocationKey(network, b.IP), &cur)
		if err != nil {
			return err
		}
		if held && cur.UID == uid {
			return fmt.Errorf("bind %s on %s: the pod holds %s already: %w", uid, network, b.IP, ErrAllocationUnderWay)
		}
		if !held && rev != st.rev {
			e, err := a.kv.Get(ctx, key)
			if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
				return fmt.Errorf("bind %s on %s: %w", uid, network, err)
			}
			if err == nil && a.now().Sub(e.Created()) < abandonedAfter {
				return fmt.Errorf("bind %s on %s: an allocation of %s is under way: %w", uid, network, b.IP, ErrAllocationUnderWay)
			}
		}
	}
	if ok {
		rev, err = a.kv.Update(ctx, key, data, rev)
	} else {
		rev, err = a.kv.Create(ctx, key, data)
	}
	if err != nil {
		if record.Conflict(err) {
			return fmt.Errorf("bind %s on %s: another allocation for the pod is under way: %w", uid, network, err)
		}
		return fmt.Errorf("bind %s on %s: %w", uid, network, err)
	}
	st.rev = rev
	return nil
}

// bindState is what one allocation knows of the pod's binding (bind).
type bindState struct {
	// absent: no binding was read for the pod just before.
	absent bool
	// rev is the revision this allocation last wrote the binding at (0:
	// it wrote none).
	rev uint64
}
