package scheduler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/services/scheduler/inventory"
	"github.com/podvisor/podvisor/services/scheduler/ledger"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/periodic"
	"github.com/podvisor/podvisor/shared/record"
)

// This file folds the scheduler's inputs into the snapshot the framework
// reads: host records (inventory + cordons), ledger entries and network
// availability. Every function ending in Locked expects s.mu held.

// loadHostRecords reads KV `hosts`: the inventory of the previous run, so
// that a restart neither forgets cordons nor re-announces every host.
func (s *Service) loadHostRecords(ctx context.Context) error {
	lister, err := s.hostsKV.ListKeys(ctx)
	if err != nil {
		return fmt.Errorf("scheduler: list hosts: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range lister.Keys() {
		kve, err := s.hostsKV.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("scheduler: get host %s: %w", k, err)
		}
		var rec events.HostRecord
		if err := json.Unmarshal(kve.Value(), &rec); err != nil {
			s.log.Warn("skip undecodable host record", "key", k, "err", err)
			continue
		}
		s.records[rec.Name] = &rec
		s.recordRevs[rec.Name] = kve.Revision()
		s.recordValues[rec.Name] = hostRecordFacts(&rec)
	}
	return nil
}

// fact is a host event to publish once the state is updated.
type fact struct {
	ceType string
	host   string
	data   events.Payload
}

// applyObservations folds what vCenter reports into the host records and
// the snapshot and publishes the host facts that follow. With full, hosts
// missing from obs have left the inventory.
func (s *Service) applyObservations(ctx context.Context, obs []inventory.Observation, full bool) {
	var facts []fact
	kick := false
	now := time.Now().UTC()
	s.mu.Lock()
	seen := map[string]bool{}
	for _, o := range obs {
		seen[o.Info.Name] = true
		old := s.records[o.Info.Name]
		rec := &events.HostRecord{HostInfo: o.Info, ResourcePool: o.ResourcePool, Ref: o.Ref,
			CPUCapacityMilli: s.profile.CPUCapacityMilli(o.Info.CPUCores), MemoryCapacityBytes: o.Info.MemoryBytes,
			MaxPods: s.profile.MaxPodsPerHost}
		connected := rec.ConnectionState == events.HostConnected
		switch {
		case old == nil:
			if !connected {
				rec.LostAt = now
			}
			facts = append(facts, fact{events.TypeHostDiscovered, rec.Name, &events.HostDiscovered{Host: rec.HostInfo}})
			kick = kick || rec.Schedulable()
		default:
			rec.Cordoned, rec.LostAt = old.Cordoned, old.LostAt
			wasConnected := old.ConnectionState == events.HostConnected
			switch {
			case wasConnected && !connected:
				rec.LostAt = now
				reason := "NotResponding"
				if rec.ConnectionState == events.HostDisconnected {
					reason = "Disconnected"
				}
				facts = append(facts, fact{events.TypeHostLost, rec.Name, &events.HostLost{Name: rec.Name, Cluster: rec.Cluster, Reason: reason}})
			case !wasConnected && connected:
				rec.LostAt = time.Time{}
				facts = append(facts, fact{events.TypeHostRecovered, rec.Name, &events.HostRecovered{Name: rec.Name, Cluster: rec.Cluster}})
				kick = true
			case !reflect.DeepEqual(announced(old.HostInfo), announced(rec.HostInfo)) || old.ResourcePool != rec.ResourcePool:
				facts = append(facts, fact{events.TypeHostUpdated, rec.Name, &events.HostUpdated{Host: rec.HostInfo}})
				kick = kick || rec.Schedulable() && (!old.Schedulable() || rec.MemoryBytes > old.MemoryBytes ||
					rec.CPUCores > old.CPUCores || len(rec.Labels) != len(old.Labels))
			}
		}
		s.records[rec.Name] = rec
		s.snap.SetHost(s.hostFromRecordLocked(rec))
		if old == nil || observedChanged(old, rec) || full && s.cfg.InventoryPoll == 0 {
			// An unchanged host is not written again on every poll; a
			// periodic resync (watch mode) still refreshes every record.
			s.dirty[rec.Name] = true
			// What vCenter says of a host (it appeared, reconnected,
			// entered or left maintenance) is written at once; only the
			// allocation totals wait for the interval.
			s.flushSoonLocked()
		}
	}
	if full {
		for name, rec := range s.records {
			if seen[name] {
				continue
			}
			facts = append(facts, s.removeHostLocked(rec)...)
		}
	}
	s.mu.Unlock()
	s.publishFacts(ctx, facts)
	if kick {
		s.pending.kickAll()
	}
}

// observedChanged reports whether what vCenter says of a host (and what
// follows from it) differs between two records; the allocation fields and
// UpdatedAt are the flush's, not the inventory's.
// announced is what of a host's inventory a change of is announced
// (host.updated): all but its vSphere networks. Those change on every host
// whenever network-config adds or removes a port group, its own doing;
// announcing that for every host would only echo it back to network-config.
// The record still shows them.
func announced(h events.HostInfo) events.HostInfo {
	h.Networks = nil
	return h
}

func observedChanged(old, rec *events.HostRecord) bool {
	return !reflect.DeepEqual(old.HostInfo, rec.HostInfo) || old.ResourcePool != rec.ResourcePool || old.Ref != rec.Ref ||
		old.CPUCapacityMilli != rec.CPUCapacityMilli || old.MemoryCapacityBytes != rec.MemoryCapacityBytes ||
		old.MaxPods != rec.MaxPods || !old.LostAt.Equal(rec.LostAt) || old.Cordoned != rec.Cordoned
}

// removeHostsByName handles hosts that left the inventory.
func (s *Service) removeHostsByName(ctx context.Context, names []string) {
	var facts []fact
	s.mu.Lock()
	for _, n := range names {
		if rec, ok := s.records[n]; ok {
			facts = append(facts, s.removeHostLocked(rec)...)
		}
	}
	s.mu.Unlock()
	s.publishFacts(ctx, facts)
}

func (s *Service) removeHostLocked(rec *events.HostRecord) []fact {
	delete(s.records, rec.Name)
	s.snap.RemoveHost(rec.Name)
	s.dirty[rec.Name] = true // written as a delete
	s.flushSoonLocked()
	if rec.ConnectionState != events.HostConnected && !rec.LostAt.IsZero() {
		return nil // already announced as lost
	}
	return []fact{{events.TypeHostLost, rec.Name, &events.HostLost{Name: rec.Name, Cluster: rec.Cluster, Reason: "Removed"}}}
}

// publishFacts publishes host facts. A fact that cannot be published is
// logged: the record in KV `hosts` still tells the truth, and the next
// change publishes the full state again.
func (s *Service) publishFacts(ctx context.Context, facts []fact) {
	for _, f := range facts {
		if err := s.out.Emit(ctx, nil, f.data, bus.About(f.host)); err != nil {
			s.log.Error("publish host fact", "ce_type", f.ceType, "host", f.host, "err", err)
			continue
		}
		s.log.Info("host fact", "ce_type", f.ceType, "host", f.host)
	}
}

// hostFromRecordLocked is the framework's view of a host record. Pods is
// left nil so that SetHost keeps the host's allocations.
func (s *Service) hostFromRecordLocked(rec *events.HostRecord) *framework.Host {
	h := &framework.Host{
		Name: rec.Name, Cluster: rec.Cluster, ResourcePool: rec.ResourcePool,
		ConnectionState: rec.ConnectionState, Maintenance: rec.Maintenance, Cordoned: rec.Cordoned,
		CPUCapacityMilli: rec.CPUCapacityMilli, MemoryCapacityBytes: rec.MemoryCapacityBytes, MaxPods: rec.MaxPods,
		Datastores: rec.Datastores, Labels: rec.Labels,
		Networks: map[string]framework.NetworkState{},
	}
	for n, a := range s.netAvail {
		if st := networkState(a, rec.Name); st != framework.NetworkAbsent {
			h.Networks[n] = st
		}
	}
	return h
}

// networkState is the framework's view of a network on a host; a host
// where the network failed counts as absent (events.NetworkUsable, the
// definition the migration precheck shares).
func networkState(a *events.NetworkAvailability, host string) framework.NetworkState {
	switch a.On(host) {
	case events.NetworkOnHostRealized:
		return framework.NetworkRealized
	case events.NetworkOnHostInScope:
		return framework.NetworkInScope
	}
	return framework.NetworkAbsent
}

// applyEntryLocked folds a ledger entry into the snapshot and the
// allocation index, unless the snapshot already has a newer one.
func (s *Service) applyEntryLocked(e ledger.Entry) {
	host := e.Host
	if h, ok := s.snap.Host(host); ok && h.LedgerRevision >= e.Revision && e.Revision != 0 {
		return
	}
	if old, ok := s.entries[host]; ok {
		if old.Revision >= e.Revision && e.Revision != 0 {
			return
		}
		for k := range old.Allocations {
			if _, still := e.Allocations[k]; !still && s.allocIndex[k] == host {
				delete(s.allocIndex, k)
			}
		}
	}
	s.entries[host] = e
	s.ledgerKeys[events.LedgerEntryKey(host)] = host
	if rec, ok := s.records[host]; ok && rec.Cordoned != e.Cordoned {
		// The cordon is the ledger's (any replica may have set it); the
		// host record shows it.
		rec.Cordoned = e.Cordoned
		s.snap.SetHost(s.hostFromRecordLocked(rec))
		if !e.Cordoned {
			s.pending.kickAll()
		}
	}
	refs := make([]*framework.PodRef, 0, len(e.Allocations))
	for k, a := range e.Allocations {
		s.allocIndex[k] = host
		refs = append(refs, refOf(a))
	}
	s.snap.SetPods(host, refs, e.Revision)
	s.dirty[host] = true
}

// refOf is the framework's view of a ledger allocation.
func refOf(a events.Allocation) *framework.PodRef {
	return &framework.PodRef{Key: a.Key(), Namespace: a.Namespace, Name: a.Name, UID: a.UID,
		CPUMilli: a.CPUMilli, MemoryBytes: a.MemoryBytes, Labels: a.Labels,
		SpreadGroup: framework.SpreadGroup(a.Namespace, a.Labels), VM: a.VM}
}

// ledgerFoldDelay is how long a watched ledger update may wait before it
// is folded into the snapshot. Updates of one host within it are folded
// once (the latest), and by then this replica's own writes, which come back
// through the watch as fast as their acknowledgement, are applied already
// and skipped without decoding: under a burst that saves a decode of the
// whole entry per write. Another replica's reservation is seen that much
// later, which costs at most a failed compare-and-set.
const ledgerFoldDelay = 20 * time.Millisecond

// watchLedger follows KV `ledger`, which other scheduler instances write
// too, so that their reservations count here.
func (s *Service) watchLedger(ctx context.Context) error {
	var mu sync.Mutex
	latest := map[string]jetstream.KeyValueEntry{}
	wake := make(chan struct{}, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-wake:
			}
			sleep(ctx, ledgerFoldDelay)
			mu.Lock()
			batch := latest
			latest = map[string]jetstream.KeyValueEntry{}
			mu.Unlock()
			retry := s.foldLedger(ctx, batch)
			if len(retry) == 0 {
				continue
			}
			mu.Lock()
			for k, e := range retry {
				if cur, ok := latest[k]; !ok || cur.Revision() < e.Revision() {
					latest[k] = e
				}
			}
			mu.Unlock()
			sleep(ctx, time.Second)
			select {
			case wake <- struct{}{}:
			default:
			}
		}
	}()
	// The watch carries each write's key and revision only, not its value
	// (an entry is the host's every allocation, kilobytes): the writes
	// this replica made are applied already and skipped, and the value of
	// another writer's is read then.
	return s.watchKV(ctx, s.ledgerKV, func(kve jetstream.KeyValueEntry) {
		if kve.Operation() != jetstream.KeyValuePut || events.IsPodBindingKey(kve.Key()) {
			return
		}
		mu.Lock()
		latest[kve.Key()] = kve
		mu.Unlock()
		select {
		case wake <- struct{}{}:
		default:
		}
	}, jetstream.MetaOnly())
}

// foldLedger applies watched ledger entries (the latest per key) that are
// newer than what this replica has, read from the bucket (the watch
// carries no values).
// It returns the entries it could not read, to fold again later.
func (s *Service) foldLedger(ctx context.Context, batch map[string]jetstream.KeyValueEntry) (retry map[string]jetstream.KeyValueEntry) {
	retry = map[string]jetstream.KeyValueEntry{}
	freed := false
	for key, watched := range batch {
		s.mu.Lock()
		host, known := s.ledgerKeys[key]
		seen := known && s.entries[host].Revision >= watched.Revision()
		s.mu.Unlock()
		if seen {
			continue
		}
		kve, err := s.ledgerKV.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue
		}
		if err != nil {
			s.log.Warn("read ledger entry; trying again", "key", key, "err", err)
			retry[key] = watched
			continue
		}
		e, err := ledger.Decode(kve)
		if err != nil {
			s.log.Warn("skip undecodable ledger entry", "key", key, "err", err)
			continue
		}
		s.mu.Lock()
		before := len(s.allocIndex)
		s.applyEntryLocked(e)
		freed = freed || len(s.allocIndex) < before
		s.mu.Unlock()
	}
	if freed {
		s.pending.kickAll()
	}
	return retry
}

// loadNetworks reads KV `net-hosts`.
func (s *Service) loadNetworks(ctx context.Context) error {
	lister, err := s.netKV.ListKeys(ctx)
	if err != nil {
		return fmt.Errorf("scheduler: list net-hosts: %w", err)
	}
	for k := range lister.Keys() {
		kve, err := s.netKV.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("scheduler: get net-hosts %s: %w", k, err)
		}
		s.applyNetwork(kve)
	}
	return nil
}

// watchNetworks follows network-config's availability read model.
func (s *Service) watchNetworks(ctx context.Context) error {
	return s.watchKV(ctx, s.netKV, func(kve jetstream.KeyValueEntry) {
		if s.applyNetwork(kve) {
			s.pending.kickAll()
		}
	})
}

// applyNetwork folds one network's availability into every host; it
// reports whether the network reaches more hosts than before.
func (s *Service) applyNetwork(kve jetstream.KeyValueEntry) bool {
	var a *events.NetworkAvailability
	if kve.Operation() == jetstream.KeyValuePut {
		a = &events.NetworkAvailability{}
		if err := json.Unmarshal(kve.Value(), a); err != nil {
			s.log.Warn("skip undecodable network availability", "key", kve.Key(), "err", err)
			return false
		}
		slices.Sort(a.Hosts)
		slices.Sort(a.Scope)
		slices.Sort(a.Failed)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	name := kve.Key()
	if a != nil && a.Network != "" {
		name = a.Network
	}
	old := s.netAvail[name]
	if a == nil {
		delete(s.netAvail, name)
	} else {
		s.netAvail[name] = a
	}
	grew := false
	for _, h := range s.snap.Hosts() {
		st := framework.NetworkAbsent
		if a != nil {
			st = networkState(a, h.Name)
		}
		prev := framework.NetworkAbsent
		if old != nil {
			prev = networkState(old, h.Name)
		}
		if st != prev {
			s.snap.SetNetwork(h.Name, name, st)
			s.dirty[h.Name] = true
			grew = grew || st > prev
		}
	}
	return grew
}

// watchKV runs fn on every update of a bucket until ctx ends, restarting
// the watch if it breaks.
func (s *Service) watchKV(ctx context.Context, kv jetstream.KeyValue, fn func(jetstream.KeyValueEntry), opts ...jetstream.WatchOpt) error {
	for ctx.Err() == nil {
		w, err := kv.WatchAll(ctx, opts...)
		if err != nil {
			s.log.Warn("watch KV", "bucket", kv.Bucket(), "err", err)
			sleep(ctx, time.Second)
			continue
		}
		func() {
			defer w.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case kve, ok := <-w.Updates():
					if !ok {
						return
					}
					if kve != nil {
						fn(kve)
					}
				}
			}
		}()
		sleep(ctx, 100*time.Millisecond)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// watchInventory streams vCenter host changes into the snapshot (unless
// the inventory is polled instead).
func (s *Service) watchInventory(ctx context.Context) {
	if s.cfg.InventoryPoll > 0 {
		return
	}
	for ctx.Err() == nil {
		err := s.source.Watch(ctx, func(u inventory.Update) {
			if len(u.Changed) > 0 {
				s.applyObservations(ctx, u.Changed, false)
			}
			if len(u.Removed) > 0 {
				s.removeHostsByName(ctx, u.Removed)
			}
		})
		if err != nil {
			s.log.Warn("inventory watch broke; restarting", "err", err)
		}
		sleep(ctx, time.Second)
	}
}

// resyncLoop reads the whole inventory periodically: a watch can lag or
// miss an update, a full read cannot. In poll mode (no watch) this is how
// changes are seen, every InventoryPoll.
func (s *Service) resyncLoop(ctx context.Context) {
	every := s.cfg.ResyncInterval
	if s.cfg.InventoryPoll > 0 {
		every = min(every, s.cfg.InventoryPoll)
	}
	wait := every
	for {
		sleep(ctx, wait)
		if ctx.Err() != nil {
			return
		}
		start := time.Now()
		obs, err := s.source.List(ctx)
		if err != nil {
			s.log.Warn("inventory resync", "err", err)
			continue
		}
		s.applyObservations(ctx, obs, true)
		// A full read costs the vCenter (and this process) in proportion
		// to the hosts: with thousands of them a read every second would
		// take a core. The reads stay at most a tenth of the time.
		wait = max(every, resyncCostFactor*time.Since(start))
	}
}

// resyncCostFactor bounds the share of time full inventory reads take.
const resyncCostFactor = 10

// hostRecordLoop writes changed host records (allocation totals change with
// every placement; writing them at most every HostRecordInterval keeps KV
// traffic bounded under load); a change to what vCenter says of a host is
// written at once (flushSoonLocked).
func (s *Service) hostRecordLoop(ctx context.Context) {
	periodic.EveryOrWake(ctx, s.cfg.HostRecordInterval, s.recordWake, s.log, "flush host records", func(ctx context.Context) error {
		s.flushHostRecords(ctx)
		return nil
	})
}

// flushSoonLocked asks the record loop to flush now rather than at its next
// tick (s.mu held).
func (s *Service) flushSoonLocked() {
	select {
	case s.recordWake <- struct{}{}:
	default:
	}
}

func (s *Service) flushHostRecords(ctx context.Context) {
	type write struct {
		name string
		rec  *events.HostRecord // nil: the host left the inventory
	}
	var writes []write
	now := time.Now().UTC()
	s.mu.Lock()
	for name := range s.dirty {
		rec, ok := s.records[name]
		if !ok {
			writes = append(writes, write{name: name})
			continue
		}
		if h, ok := s.snap.Host(name); ok {
			rec.AllocatedCPUMilli, rec.AllocatedMemoryBytes, rec.Pods, rec.VMs = h.RequestedCPUMilli, h.RequestedMemoryBytes, h.PodCount(), h.VMCount()
			rec.PodNetworks = rec.PodNetworks[:0]
			for n, st := range h.Networks {
				if st == framework.NetworkRealized {
					rec.PodNetworks = append(rec.PodNetworks, n)
				}
			}
			slices.Sort(rec.PodNetworks)
		}
		if last, ok := s.recordValues[name]; ok && bytes.Equal(last, hostRecordFacts(rec)) {
			continue // marked dirty, but nothing a reader sees changed
		}
		rec.UpdatedAt = now
		c := *rec
		c.PodNetworks = slices.Clone(rec.PodNetworks)
		writes = append(writes, write{name, &c})
	}
	clear(s.dirty)
	s.mu.Unlock()
	// The records are written side by side, hostRecordWriters at a time:
	// each write waits for the server to sync it, and thousands of hosts
	// written one after the other (a start, a resync) took minutes.
	sem := make(chan struct{}, hostRecordWriters)
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, w := range writes {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			s.flushHostRecord(ctx, w.name, w.rec)
		})
	}
}

// hostRecordWriters bounds the host records one flush writes at once.
const hostRecordWriters = 16

// flushHostRecord writes one host's record (nil: deletes it); a failure
// leaves the host dirty for the next flush.
func (s *Service) flushHostRecord(ctx context.Context, name string, rec *events.HostRecord) {
	var err error
	if rec == nil {
		err = s.hostRecords.Delete(ctx, events.HostRecordKey(name))
		s.mu.Lock()
		delete(s.recordRevs, name)
		delete(s.recordValues, name)
		s.mu.Unlock()
	} else {
		err = s.writeHostRecord(ctx, rec)
	}
	if err != nil {
		s.log.Warn("write host record", "host", name, "err", err)
		s.mu.Lock()
		s.dirty[name] = true
		s.mu.Unlock()
	}
}

// hostRecordFacts is the encoding of what a host record says, the time of
// its write aside: two records with the same facts encode the same.
func hostRecordFacts(r *events.HostRecord) []byte {
	c := *r
	c.UpdatedAt = time.Time{}
	b, _ := json.Marshal(&c)
	return b
}

// writeHostRecord writes a host record whole. Every replica writes the
// records it sees change, so the write is a compare-and-set: at the
// revision this replica wrote last (no read), or, when another writer came
// in between, at the revision read then. The last writer wins whole, never
// a mix of two. The cordon is the ledger's, and replicas follow the
// ledger, so a replica that has not yet seen a cordon cannot undo it for
// long.
func (s *Service) writeHostRecord(ctx context.Context, rec *events.HostRecord) error {
	key := events.HostRecordKey(rec.Name)
	s.mu.Lock()
	rev, known := s.recordRevs[rec.Name]
	s.mu.Unlock()
	for range 8 {
		if !known {
			_, cur, err := s.hostRecords.Get(ctx, key)
			if err != nil {
				return err
			}
			rev = cur
		}
		next, err := s.hostRecords.Put(ctx, key, rec, rev)
		if err == nil {
			s.mu.Lock()
			s.recordRevs[rec.Name] = next
			s.recordValues[rec.Name] = hostRecordFacts(rec)
			s.mu.Unlock()
			return nil
		}
		if !errors.Is(err, record.ErrConflict) {
			return err
		}
		known = false
	}
	return fmt.Errorf("write host record %s: %w", rec.Name, record.ErrConflict)
}
