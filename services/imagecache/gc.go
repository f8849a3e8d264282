package imagecache

import (
	"context"
	"fmt"
	"sort"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	il "github.com/podvisor/podvisor/shared/imagemeta"
)

// CollectGarbage evicts unreferenced chains from every datastore whose image
// data exceeds GCBudgetBytes, until it fits: chains unused for GCGrace,
// deepest first, and a chain only once no chain on the datastore names it as
// parent (children before parents, so no disk ever loses its parent). Each
// eviction deletes the chain's folder, then its record, then announces
// image.evicted. It returns what it evicted.
//
// A chain whose disk a VM in vCenter has attached is never evicted, with
// references or without: a pod VM template (pv-template-<hash>) mounts its
// image's chain disks and holds no reference, and outlives its pods. On
// vCenter the delete of a locked disk fails; on vcsim it succeeds and
// leaves the template without its disks. The VMs' disks are read once per
// pass, and only when some chain is about to go. A VM that attaches a
// chain after that read belongs to a pod that references it, or did
// within GCGrace, so MarkEvicting refuses the chain all the same.
func (s *Service) CollectGarbage(ctx context.Context) ([]events.ImageEvicted, error) {
	chains, err := s.db.Reader().Chains(ctx)
	if err != nil {
		return nil, err
	}
	byDS := map[string][]events.ChainRecord{}
	for _, c := range chains {
		byDS[c.Datastore] = append(byDS[c.Datastore], c)
	}
	cutoff := s.now().Add(-s.cfg.gcGrace())
	var evicted []events.ImageEvicted
	var attached map[string]string // chain record key → a VM that has its disk attached
	dss := make([]string, 0, len(byDS))
	for ds := range byDS {
		dss = append(dss, ds)
	}
	sort.Strings(dss)
	for _, ds := range dss {
		list := byDS[ds]
		var used int64
		children := map[string]int{}
		for _, c := range list {
			if c.State != events.ChainStateFailed {
				used += c.Size
			}
			if c.Parent != "" {
				children[c.Parent]++
			}
		}
		if used <= s.cfg.gcBudget() {
			continue
		}
		// Deepest first; among equals the least recently used.
		sort.SliceStable(list, func(i, j int) bool {
			if list[i].Depth != list[j].Depth {
				return list[i].Depth > list[j].Depth
			}
			return list[i].LastUsed.Before(list[j].LastUsed)
		})
		for _, c := range list {
			if used <= s.cfg.gcBudget() {
				break
			}
			if c.State != events.ChainStateReady || c.Refs > 0 || children[c.ChainID] > 0 || c.LastUsed.After(cutoff) {
				continue
			}
			if attached == nil {
				if attached, err = s.attachedChains(ctx); err != nil {
					return evicted, fmt.Errorf("garbage collection: %w", err)
				}
			}
			key := events.ChainRecordKey(c.ChainID, ds)
			if vm, ok := attached[key]; ok {
				// Its parents stay too: it still names them.
				s.log.Info("unreferenced chain kept: a VM has its disk attached", "chain", key, "vm", vm)
				continue
			}
			ok, err := s.db.MarkEvicting(ctx, c.ChainID, ds, cutoff)
			if err != nil {
				return evicted, err
			}
			if !ok {
				continue // referenced or used since the listing
			}
			if err := s.store.Delete(ctx, ds, c.ChainID); err != nil {
				// The record stays "evicting"; Begin takes it over after a
				// lease TTL and pulls afresh, so nothing is left half-gone.
				return evicted, err
			}
			if err := s.db.Forget(ctx, c.ChainID, ds); err != nil {
				return evicted, err
			}
			if err := s.unannounce(ctx, c.ChainID, ds); err != nil {
				return evicted, err
			}
			used -= c.Size
			if c.Parent != "" {
				children[c.Parent]--
			}
			s.stats.chainsEvicted.add(1)
			s.stats.bytesEvicted.add(c.Size)
			ev := events.ImageEvicted{ChainID: c.ChainID, Disk: c.Disk, Datastore: ds, Bytes: c.Size}
			evicted = append(evicted, ev)
			s.log.Info("chain evicted", "chain", key, "bytes", c.Size)
			out, err := bus.NewEvent(Source, events.TypeImageEvicted, c.ChainID, &ev)
			if err != nil {
				return evicted, err
			}
			if err := s.bus.Publish(ctx, out); err != nil {
				return evicted, err
			}
		}
	}
	return evicted, nil
}

// unannounce forgets that images using an evicted chain were announced on
// the datastore, so that a later pull there announces them again.
func (s *Service) unannounce(ctx context.Context, chainID, ds string) error {
	digests, err := s.db.Client().SMembers(ctx, il.IndexImages).Result()
	if err != nil {
		return err
	}
	for _, d := range digests {
		m, ok, err := s.db.Reader().Manifest(ctx, d)
		if err != nil || !ok {
			continue
		}
		for _, l := range m.Layers {
			if l.ChainID == chainID {
				if err := s.db.Client().SRem(ctx, il.AnnouncedKey(d), ds).Err(); err != nil {
					return err
				}
				break
			}
		}
	}
	return nil
}
