package imagecache

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

// restoreRefs references the chains the pods use again, each for its pod,
// so that the pod's pod.deleted drops them: those its record names (the
// images pod.images.ready announced for it, which the provisioner folds
// into the pod record) and those its pod VM has attached. The records are
// the truth that outlives every restart: after one of `podvisor up`, whose
// simulated vCenter starts empty, no pod VM exists yet when the rebuild
// runs (the provisioner makes them again later, from the records), and the
// chains of every running pod were left unreferenced. The VMs still count
// for pods whose record lags or is gone while their VM runs.
//
// A pod VM is named pv-<uid>, or pv-<uid>-<n> when made again after an
// eviction; its pod is the uid its guestinfo names, else the one in its
// name (podUID). Template VMs are skipped on purpose, though their disks
// are image disks too: in normal operation a template holds no reference
// (the image cache never hears of templates; the pods forked from them
// hold their own, as pv-<uid>), and a reference taken here under the
// template's name would be one no pod.deleted ever drops, pinning the
// chains for good. The collector keeps a template's chains all the same,
// as long as the template has them attached (CollectGarbage).
//
// A reference that cannot be written fails the rebuild, so that the
// metadata is not marked intact without it and the next check tries
// again; a chain not ready (being evicted, or pulled again) is no such
// failure: its record is not the one the pod's disk was found with.
func (s *Service) restoreRefs(ctx context.Context, restored map[string]events.ChainRecord) (int, error) {
	uses, err := s.recordedUses(ctx)
	if err != nil {
		return 0, err
	}
	vms, err := s.allVMs(ctx, "name", "config.hardware.device", uidProperty)
	if err != nil {
		return 0, err
	}
	for _, vm := range vms {
		if !strings.HasPrefix(vm.Name, podVMPrefix) || strings.HasPrefix(vm.Name, templateVMPrefix) || vm.Config == nil {
			continue
		}
		uid := podUID(vm)
		if uid == "" {
			continue
		}
		for keys := range imageDisksOf(vm) {
			if len(keys) > 0 {
				// The first image disk of the backing chain; its
				// parents are found by the records.
				uses = append(uses, chainUse{uid: uid, key: keys[0], from: "pod VM " + vm.Name})
			}
		}
	}
	n := 0
	done := map[string]bool{} // uid NUL chain record key → referenced
	for _, u := range uses {
		// A chain already referenced for the pod had its parents
		// referenced with it: a pod uses every disk of its chains, and
		// each would walk them again.
		key := u.key
		rec, found := restored[key]
		for found && !done[u.uid+"\x00"+key] {
			done[u.uid+"\x00"+key] = true
			switch _, err := s.db.AddRef(ctx, rec.ChainID, rec.Datastore, u.uid); {
			case err == nil:
				n++
			case !errors.Is(err, chaindb.ErrNotReady):
				return n, fmt.Errorf("rebuild: %s: %w", u.from, err)
			}
			if rec.Parent == "" {
				break
			}
			key = events.ChainRecordKey(rec.Parent, rec.Datastore)
			rec, found = restored[key]
		}
	}
	return n, nil
}

// chainUse is a pod's use of an image disk found by the rebuild: the
// chain record key ("<chainID>@<ds>") of the disk, and where it was found.
type chainUse struct {
	uid, key, from string
}

// recordedUses lists the image disks the pod records name (their
// pod.images.ready, as the provisioner keeps it): every pod that exists,
// with a VM or not yet. No pods bucket (nothing ever ran) is no pod.
func (s *Service) recordedUses(ctx context.Context) ([]chainUse, error) {
	kv, err := s.podsBucket(ctx)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("rebuild: %w", err)
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("rebuild: read the pod records: %w", err)
	}
	defer func() { _ = w.Stop() }()
	var uses []chainUse
	for {
		var entry jetstream.KeyValueEntry
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case entry = <-w.Updates():
		}
		if entry == nil {
			return uses, nil // the current values are all read
		}
		var rec events.PodRecord
		if err := json.Unmarshal(entry.Value(), &rec); err != nil || rec.UID == "" {
			s.log.Warn("rebuild: pod record unreadable; its pod's chains are referenced only through its VM", "key", entry.Key(), "err", err)
			continue
		}
		from := "pod record " + events.PodKey(rec.Namespace, rec.Name)
		for _, img := range rec.Images {
			for _, disk := range append(slices.Clone(img.Chain), img.Disk) {
				if key, ok := imageDiskKey(disk); ok {
					uses = append(uses, chainUse{uid: rec.UID, key: key, from: from})
				}
			}
		}
	}
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
