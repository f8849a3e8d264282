package imagecache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/imagecache/chaindb"
)

// EnsureMetadata rebuilds the Redis metadata from the datastores when Redis
// lost it (flushed, restarted without persistence, replaced). Redis is a
// cache: the datastore folders are the truth, and the pods' references are
// found again in the pod VMs' disk chains.
func (s *Service) EnsureMetadata(ctx context.Context) error {
	ok, err := s.db.Intact(ctx)
	if err != nil || ok {
		return err
	}
	_, err = s.Rebuild(ctx)
	return err
}

// RebuildReport says what a rebuild found.
type RebuildReport struct {
	Chains    int // ready chain folders whose record Redis had lost, restored
	Partial   int // unfinished folders left for the next pull to clear
	Manifests int
	Refs      int // pod references found in pod VM disks (one per pod and chain)
	Stale     int // ready records without a ready folder, dropped
}

// Rebuild restores chain records and manifests from every datastore's image
// folders and pod references from the pod VMs, then marks the metadata
// intact. Records Redis still has are kept as they are.
func (s *Service) Rebuild(ctx context.Context) (RebuildReport, error) {
	s.rebuildMu.Lock()
	defer s.rebuildMu.Unlock()
	// Resolutions kept from before wrote manifests and references Redis may
	// have lost: the next pods resolve again and write them back.
	s.resolved.Clear()
	s.manifests.Clear()
	s.ensured.Clear()
	var rep RebuildReport
	inv, err := s.datastores(ctx, true)
	if err != nil {
		return rep, err
	}
	restored := map[string]events.ChainRecord{} // chainID@ds → record
	scanStart := s.now()
	known, err := s.db.Reader().Chains(ctx)
	if err != nil {
		return rep, err
	}
	for _, d := range inv {
		ready, partial, manifests, err := s.store.Scan(ctx, d.Name)
		if err != nil {
			return rep, fmt.Errorf("rebuild: %w", err)
		}
		n, err := s.dropStale(ctx, d.Name, known, ready, scanStart)
		if err != nil {
			return rep, err
		}
		rep.Stale += n
		rep.Partial += len(partial)
		for _, rec := range ready {
			wrote, err := s.db.Restore(ctx, rec)
			if err != nil {
				return rep, err
			}
			restored[events.ChainRecordKey(rec.ChainID, rec.Datastore)] = rec
			if wrote {
				rep.Chains++
			}
		}
		for _, m := range manifests {
			if err := s.db.PutManifest(ctx, m.Image, m); err != nil {
				return rep, err
			}
			rep.Manifests++
		}
	}
	n, err := s.restoreRefs(ctx, restored)
	if err != nil {
		return rep, err
	}
	rep.Refs = n
	if err := s.db.MarkIntact(ctx); err != nil {
		return rep, err
	}
	s.stats.rebuilds.add(1)
	if rep.Chains+rep.Stale == 0 {
		s.log.Info("image metadata in sync with the datastores", "partial", rep.Partial)
	} else {
		s.log.Warn("image metadata repaired from the datastores",
			"restored", rep.Chains, "stale", rep.Stale, "partial", rep.Partial, "manifests", rep.Manifests, "refs", rep.Refs)
	}
	return rep, nil
}

// restoreRefs finds pod VMs (named pv-<uid>, or pv-<uid>-<n> when made
// again after an eviction) whose disks are, or chain to, image disks and
// references those chains, and their parents, for the VM's pod: the uid
// its guestinfo names, else the one in its name (podUID), so that the
// pod's pod.deleted drops them.
//
// Template VMs are skipped on purpose, though their disks are image
// disks too: in normal operation a template holds no reference (the image
// cache never hears of templates; the pods forked from them hold their own,
// as pv-<uid>), and a reference taken here under the template's name would
// be one no pod.deleted ever drops, pinning the chains for good. The
// collector keeps a template's chains all the same, as long as the template
// has them attached (CollectGarbage).
//
// A reference that cannot be written fails the rebuild, so that the
// metadata is not marked intact without it and the next check tries
// again; a chain not ready (being evicted, or pulled again) is no such
// failure: its record is not the one the VM's disk was found with.
func (s *Service) restoreRefs(ctx context.Context, restored map[string]events.ChainRecord) (int, error) {
	vms, err := s.allVMs(ctx, "name", "config.hardware.device", uidProperty)
	if err != nil {
		return 0, err
	}
	n := 0
	done := map[string]bool{} // uid NUL chain record key → referenced
	for _, vm := range vms {
		if !strings.HasPrefix(vm.Name, podVMPrefix) || strings.HasPrefix(vm.Name, templateVMPrefix) || vm.Config == nil {
			continue
		}
		uid := podUID(vm)
		if uid == "" {
			continue
		}
		for keys := range imageDisksOf(vm) {
			if len(keys) == 0 {
				continue
			}
			key := keys[0]
			// The first image disk of the backing chain; its
			// parents are found by the records. A chain already
			// referenced for the pod had its parents referenced
			// with it: a pod VM has every disk of its chains
			// attached, and each would walk them again.
			rec, found := restored[key]
			for found && !done[uid+"\x00"+key] {
				done[uid+"\x00"+key] = true
				switch _, err := s.db.AddRef(ctx, rec.ChainID, rec.Datastore, uid); {
				case err == nil:
					n++
				case !errors.Is(err, chaindb.ErrNotReady):
					return n, fmt.Errorf("rebuild: pod VM %s: %w", vm.Name, err)
				}
				if rec.Parent == "" {
					break
				}
				key = events.ChainRecordKey(rec.Parent, rec.Datastore)
				rec, found = restored[key]
			}
		}
	}
	return n, nil
}

// dropStale forgets ready records of datastore ds whose folder is not ready
// there: the datastore was wiped or replaced (a new simulated datacenter
// under a Redis that kept its data) and a pod must never be handed a disk
// that does not exist. Records that turned ready after the scan started
// are left alone: their folder may have been completed behind the scan.
func (s *Service) dropStale(ctx context.Context, ds string, known, onDisk []events.ChainRecord, scanStart time.Time) (int, error) {
	present := map[string]bool{}
	for _, r := range onDisk {
		present[r.ChainID] = true
	}
	n := 0
	for _, r := range known {
		if r.Datastore != ds || r.State != events.ChainStateReady || present[r.ChainID] || !r.LastUsed.Before(scanStart) {
			continue
		}
		if err := s.db.Forget(ctx, r.ChainID, ds); err != nil {
			return n, err
		}
		if err := s.unannounce(ctx, r.ChainID, ds); err != nil {
			return n, err
		}
		s.log.Warn("chain record without its datastore folder dropped", "chain", events.ChainRecordKey(r.ChainID, ds))
		n++
	}
	return n, nil
}
