package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler/ledger"
	"github.com/podvisor/podvisor/shared/record"
)

// The ledger sweep repairs what the event handlers cannot see: it compares
// the ledger with the provisioner's pod records, which say where each pod's
// VM was placed (pod.scheduled) or moved (migration.completed), and fixes
// the ledger where the two disagree for good.
//
//   - A pod with no record is gone (a record exists before pod.accepted and
//     goes once the VM is destroyed): its allocations are freed. This covers
//     a pod.deleted handled by a replica that had nothing to release yet
//     while another replica was placing the pod.
//   - A migration's reservation (uid@id) whose migration has ended, as the
//     migration service's record (KV `migrations`) says, or has no record
//     long after it was made, is freed: it holds room for a VM that will
//     not come. This covers any end whose release was lost or never
//     published (a request handled again after its migration completed,
//     a release whose publication died with its process). A migration
//     completed to the host is the exception while the pod's own
//     allocation is not there yet: migration.completed promotes it.
//   - A placed pod (Scheduled to Running, not migrating, not being deleted)
//     is held on its record's host and on no other: the allocation a
//     losing replica failed to release, a replay answered before a claim,
//     or a migration whose ledger move was lost all leave the pod's room on
//     a host where its VM is not. The sweep reserves the pod on its host
//     (whatever the room: the VM is there), binds it there and frees the
//     other hosts.
//   - A native VM's allocation without the VM flag (written before VMs were
//     told apart, or rewritten by a replica of that version during a
//     rollout, which drops the field) counts as a pod against the pod cap:
//     it is flagged (also once at start, before the first placement).
//
// The handlers and the sweep race (a placement, an eviction or a migration
// in flight shows the same disagreement for a while: an eviction keeps the
// record on the old host while the provisioner waits up to 30 s for the
// old VM's removal), so the sweep acts on a placed pod only when every pass
// over three rescan intervals (45 s by default) found the same
// disagreement; every step is idempotent, so two replicas sweeping at once
// converge.

// sweepMark is a disagreement the sweep found, and since when.
type sweepMark struct {
	what  string
	since time.Time
}

// sweepLedger runs one pass, every rescan interval.
func (s *Service) sweepLedger(ctx context.Context, every time.Duration) error {
	var undecodable []string
	skip := func(key string, _ error) { undecodable = append(undecodable, key) }
	records, err := s.podRecordsByUID(ctx, skip)
	if err != nil {
		return err
	}
	vms, err := s.vmUIDs(ctx, skip)
	if err != nil {
		return fmt.Errorf("not sweeping: %w", err)
	}
	entries, err := s.ledger.List(ctx)
	if err != nil {
		return err
	}
	// Every pass, not only at start: while replicas of an older version
	// run, one rewriting an entry drops the VM flags in it.
	marked := s.markVMs(ctx, entries, vms)
	var orphans error
	if len(undecodable) > 0 {
		// A record the sweep cannot read would pass for a gone pod (or
		// VM), whose room it frees: no allocation is freed for want of a
		// record until every record reads. The rest of the pass needs no
		// record it does not have.
		orphans = fmt.Errorf("not freeing allocations without a record: %d records do not decode (%s)",
			len(undecodable), strings.Join(undecodable, ", "))
	} else {
		orphans = s.releaseOrphans(ctx, records, vms, entries, 2*every)
	}
	// A migration record the KV store did not answer does not hold up
	// the placements' repair.
	return errors.Join(marked, orphans, s.releaseEndedReservations(ctx, entries, 3*every), s.repairPlacements(ctx, records, entries, 3*every))
}

// markVMs flags the native VMs' allocations in entries that lack the flag
// (written before VMs were told apart, or by a replica of that version):
// until then each counts as a pod against MaxPodsPerHost. The write is a
// compare-and-set from the listed entry; a replica that flagged the entry
// first leaves nothing to write, and a host still contended after the
// ledger's retries is left to the next pass (the error says which).
func (s *Service) markVMs(ctx context.Context, entries []ledger.Entry, vms map[string]bool) error {
	var errs []error
	marked := false
	for i := range entries {
		// From the listed entry: an entry with nothing to flag costs no
		// round trip.
		updated, n, err := s.ledger.MarkVMs(ctx, entries[i].Host, &entries[i], func(uid string) bool { return vms[uid] })
		if err != nil {
			errs = append(errs, fmt.Errorf("flag VM allocations on %s: %w", entries[i].Host, err))
			continue
		}
		if n == 0 {
			continue
		}
		s.log.Info("flagged native VM allocations written without the flag", "host", updated.Host, "allocations", n)
		entries[i] = updated
		s.mu.Lock()
		s.applyEntryLocked(updated)
		s.mu.Unlock()
		marked = true
	}
	if marked {
		s.pending.kickAll() // VMs counted as pods no more: room for pods
	}
	return errors.Join(errs...)
}

// podView is the part of a pod record that the sweep and the recovery of
// pending pods decide on. A pass reads every record of the bucket; decoding
// only these fields keeps a few hundred bytes per pod instead of the whole
// pod spec (at 10,000 pods, tens of MiB of heap each pass). A pod the pass
// acts on is read again in full.
type podView struct {
	UID                 string    `json:"uid"`
	Namespace           string    `json:"namespace"`
	Name                string    `json:"name"`
	Phase               string    `json:"phase"`
	Reason              string    `json:"reason,omitempty"`
	Host                string    `json:"host,omitempty"`
	EvictedFrom         string    `json:"evictedFrom,omitempty"`
	DeletionRequestedAt time.Time `json:"deletionRequestedAt,omitzero"`
}

func (p *podView) key() string { return events.PodKey(p.Namespace, p.Name) }

// podViews reads KV `pods` in one replay of the bucket, telling undecodable
// (when set) of each record it cannot read and leaves out.
func (s *Service) podViews(ctx context.Context, undecodable func(key string, err error)) ([]*podView, error) {
	store := record.New[podView](s.podsKV, "pod")
	store.Undecodable = undecodable
	return store.Scan(ctx)
}

// podRecordsByUID reads KV `pods`, by pod uid.
func (s *Service) podRecordsByUID(ctx context.Context, undecodable func(key string, err error)) (map[string]*podView, error) {
	views, err := s.podViews(ctx, undecodable)
	if err != nil {
		return nil, fmt.Errorf("not sweeping: %w", err)
	}
	out := make(map[string]*podView, len(views))
	for _, v := range views {
		out[v.UID] = v
	}
	return out, nil
}

// vmUIDs are the uids of the native VMs recorded in KV `vms` (placed in
// the same ledger as pods).
func (s *Service) vmUIDs(ctx context.Context, undecodable func(key string, err error)) (map[string]bool, error) {
	store := record.New[struct {
		UID string `json:"uid"`
	}](s.vmsKV, "vm")
	store.Undecodable = undecodable
	views, err := store.Scan(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(views))
	for _, v := range views {
		out[v.UID] = true
	}
	return out, nil
}

// releaseOrphans frees the allocations (and bindings) of pods that have no
// record (nor a native VM's) and were reserved more than grace ago.
func (s *Service) releaseOrphans(ctx context.Context, records map[string]*podView, vms map[string]bool, entries []ledger.Entry, grace time.Duration) error {
	cutoff := time.Now().Add(-grace)
	for _, e := range entries {
		var gone []string
		for k, a := range e.Allocations {
			if a.UID != "" && records[a.UID] == nil && !vms[a.UID] && a.ReservedAt.Before(cutoff) {
				gone = append(gone, k)
			}
		}
		if len(gone) == 0 {
			continue
		}
		s.log.Info("releasing allocations of pods that no longer exist", "host", e.Host, "allocations", gone)
		if err := s.release(ctx, map[string][]string{e.Host: gone}); err != nil {
			return err
		}
		for _, k := range gone {
			uid := e.Allocations[k].UID
			if b, ok, err := s.ledger.GetBinding(ctx, uid); err == nil && ok && b.Host == e.Host {
				_ = s.ledger.Unbind(ctx, uid, b.Revision)
			}
		}
	}
	return nil
}

// unrecordedGrace is how long a migration's reservation may go without a
// record in KV `migrations` before the sweep frees it. The migration
// service records a request before the scheduler reserves for it, or
// adopts the migration when the reservation comes first (a request
// published while it was down); this leaves it that long to come back.
const unrecordedGrace = 2 * time.Minute

// releaseEndedReservations frees the migration reservations whose
// migration ended (or was never recorded), once every pass over settle
// found them so: a record read from a NATS node that lags says "no such
// key" for a while, and a migration completed to this host has its
// reservation promoted by migration.completed, which may be on its way.
func (s *Service) releaseEndedReservations(ctx context.Context, entries []ledger.Entry, settle time.Duration) error {
	now := time.Now()
	records := map[string]*events.MigrationRecord{}
	seen := map[string]sweepMark{}
	var errs []error
	for _, e := range entries {
		var ended []string
		for k, a := range e.Allocations {
			if a.Kind != events.AllocationMigration || a.MigrationID == "" {
				continue
			}
			rec, ok := records[a.MigrationID]
			if !ok {
				var err error
				if rec, err = s.migrationRecord(ctx, a.MigrationID); err != nil {
					errs = append(errs, err)
					continue
				}
				records[a.MigrationID] = rec
			}
			what := ""
			switch {
			case rec == nil && now.Sub(a.ReservedAt) >= unrecordedGrace:
				what = "no record"
			case rec == nil || rec.Active():
				continue
			case rec.Phase == events.MigrationPhaseCompleted && rec.TargetHost == e.Host:
				if _, promoted := e.Allocations[a.UID]; !promoted {
					continue // migration.completed makes it the pod's
				}
				what = "completed here, the pod held already"
			default:
				what = rec.Phase
			}
			id := e.Host + "|" + k
			mark := sweepMark{what: what, since: now}
			if prev, ok := s.reservationSeen[id]; ok && prev.what == what {
				mark.since = prev.since
			}
			seen[id] = mark
			if now.Sub(mark.since) >= settle {
				ended = append(ended, k)
			}
		}
		if len(ended) == 0 {
			continue
		}
		slices.Sort(ended)
		s.log.Warn("releasing reservations of migrations that ended", "host", e.Host, "allocations", ended)
		if err := s.release(ctx, map[string][]string{e.Host: ended}); err != nil {
			errs = append(errs, fmt.Errorf("host %s: %w", e.Host, err))
		}
	}
	s.reservationSeen = seen
	return errors.Join(errs...)
}

// migrationRecord reads a migration's record from KV `migrations` (the
// migration service's); nil when there is none.
func (s *Service) migrationRecord(ctx context.Context, id string) (*events.MigrationRecord, error) {
	kve, err := s.migsKV.Get(ctx, events.MigrationRecordKey(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("migration record %s: %w", id, err)
	}
	var rec events.MigrationRecord
	if err := json.Unmarshal(kve.Value(), &rec); err != nil {
		return nil, fmt.Errorf("migration record %s does not decode: %w", id, err)
	}
	return &rec, nil
}

// placedPhases are the phases in which a pod's VM is (or is being made) on
// its record's host and nowhere else.
var placedPhases = map[string]bool{
	events.PodPhaseScheduled: true, events.PodPhaseProvisioning: true,
	events.PodPhaseStarting: true, events.PodPhaseRunning: true,
}

// repairPlacements moves the allocation of every placed pod whose ledger
// disagrees with its record, once the disagreement has lasted settle.
func (s *Service) repairPlacements(ctx context.Context, records map[string]*podView, entries []ledger.Entry, settle time.Duration) error {
	held := map[string][]string{} // pod uid → hosts holding its own allocation
	for _, e := range entries {
		for k, a := range e.Allocations {
			if a.Kind == events.AllocationPod && k == a.UID {
				held[a.UID] = append(held[a.UID], e.Host)
			}
		}
	}
	now := time.Now()
	seen := map[string]sweepMark{}
	var errs []error
	for uid, rec := range records {
		if !placedPhases[rec.Phase] || rec.Host == "" || !rec.DeletionRequestedAt.IsZero() {
			continue
		}
		hosts := held[uid]
		if len(hosts) == 1 && hosts[0] == rec.Host {
			continue
		}
		slices.Sort(hosts)
		mark := sweepMark{what: rec.Host + "|" + strings.Join(hosts, ","), since: now}
		if prev, ok := s.sweepSeen[uid]; ok && prev.what == mark.what {
			mark.since = prev.since
		}
		seen[uid] = mark
		if now.Sub(mark.since) < settle {
			continue // a placement or a move may be under way
		}
		if err := s.repairPlacement(ctx, rec, hosts); err != nil {
			errs = append(errs, fmt.Errorf("pod %s: %w", rec.key(), err))
		}
	}
	s.sweepSeen = seen
	return errors.Join(errs...)
}

// repairPlacement holds a pod on its record's host only. The record is read
// again in full (its spec sizes the allocation); one that changed since the
// pass read it is left to the next pass.
func (s *Service) repairPlacement(ctx context.Context, view *podView, hosts []string) error {
	rec, err := s.podRecord(ctx, view.Namespace, view.Name)
	if err != nil {
		return err
	}
	if rec == nil || rec.UID != view.UID || rec.Host != view.Host || rec.Phase != view.Phase || !rec.DeletionRequestedAt.IsZero() {
		return nil
	}
	s.log.Warn("ledger disagrees with the pod's host: repairing", "pod", rec.Key(), "host", rec.Host, "ledger", hosts)
	if !slices.Contains(hosts, rec.Host) {
		p, err := podInfo(&rec.Pod, rec.UID, rec.Size, rec.Networks)
		if err != nil {
			return err
		}
		a := allocationOf(p)
		a.ReservedAt = time.Now().UTC()
		res, err := s.ledger.Reserve(ctx, rec.Host, unlimited, []events.Allocation{a})
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.applyEntryLocked(res.Entry)
		s.mu.Unlock()
	}
	if err := s.ledger.Rebind(ctx, rec.UID, rec.Host); err != nil {
		return err
	}
	others := map[string][]string{}
	for _, h := range hosts {
		if h != rec.Host {
			others[h] = []string{rec.UID}
		}
	}
	if err := s.release(ctx, others); err != nil {
		return err
	}
	s.pending.kickAll()
	return nil
}
