package netconfig

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/record"
)

// store reads and writes network-config's records: `networks` and
// `net-realized` (one key per network and host) by compare-and-set,
// `net-hosts` as a derived read model.
//
// What a host carries is its own key, not an entry of the network record:
// at thousands of hosts a record holding every host was hundreds of
// kilobytes, read and decoded by every attach and rewritten whole by every
// push and recount. Now the record is the same size at any host count, an
// attach reads the record and its host's key, and a push writes only the
// hosts whose state changed.
type store struct {
	networks *record.Store[events.NetworkRecord]
	netHosts *record.Store[events.NetworkAvailability]
	realized *record.Store[events.NetworkHostRecord]
	// realizedKV is the bucket under realized, for listing one network's
	// hosts in one watch.
	realizedKV jetstream.KeyValue
}

func newStore(networks, netHosts, realized jetstream.KeyValue) *store {
	n := record.New[events.NetworkRecord](networks, "network")
	n.BeforeWrite = func(r *events.NetworkRecord) { r.UpdatedAt = time.Now().UTC() }
	return &store{
		networks:   n,
		netHosts:   record.New[events.NetworkAvailability](netHosts, "availability of network"),
		realized:   record.New[events.NetworkHostRecord](realized, "network on host"),
		realizedKV: realized,
	}
}

// realizedBucket is the configuration of events.BucketNetRealized, which
// network-config declares itself (replicated like `networks`). One
// revision per key: the history of a network is its record's. A key is
// about 200 bytes, so realizedMaxBytes holds 10,000 hosts' states of
// dozens of networks, and reserves less of the server's storage than a
// topology bucket.
func realizedBucket() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      events.BucketNetRealized,
		Description: "podvisor networks per host: what each host in a network's scope carries (written by network-config)",
		History:     1,
		Storage:     jetstream.FileStorage,
		MaxBytes:    realizedMaxBytes,
	}
}

const realizedMaxBytes = 64 << 20

// hostEntry is one host's stored state of a network and its revision.
type hostEntry struct {
	events.NetworkHostRecord
	rev uint64
}

// hostState returns what host carries of a network; nil when the host has
// no state (not in scope at the last push, or never pushed).
func (s *store) hostState(ctx context.Context, network, host string) (*events.NetworkHostRecord, error) {
	h, _, err := s.realized.Get(ctx, events.NetworkHostKey(network, host))
	return h, err
}

// hostStates returns every host's state of a network, by host name, in one
// watch of the network's keys.
func (s *store) hostStates(ctx context.Context, network string) (map[string]hostEntry, error) {
	w, err := s.realizedKV.Watch(ctx, events.NetworkHostKeys(network), jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("list hosts of network %s: %w", network, err)
	}
	defer func() { _ = w.Stop() }()
	out := map[string]hostEntry{}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("list hosts of network %s: watch closed", network)
			}
			if e == nil {
				return out, nil // the current values are all in
			}
			var h events.NetworkHostRecord
			if err := json.Unmarshal(e.Value(), &h); err != nil {
				return nil, fmt.Errorf("decode network on host %s: %w", e.Key(), err)
			}
			out[h.Host] = hostEntry{NetworkHostRecord: h, rev: e.Revision()}
		}
	}
}

// sameHostState compares what a host carries, not when it was observed: a
// push that reads back what was there writes nothing.
func sameHostState(a, b events.NetworkHostState) bool {
	return a.State == b.State && a.Version == b.Version && a.Reason == b.Reason && a.Message == b.Message
}

// hostWriteParallelism bounds the per-host writes of one push.
const hostWriteParallelism = 32

// putHostStates records a push of version: each host in states whose
// stored state differs is written (compare-and-set; a state written by a
// push of a newer version is left alone), and each host in prev that is no
// longer in states (a narrowed scope) is removed.
func (s *store) putHostStates(ctx context.Context, network string, version int64, states map[string]events.NetworkHostState, prev map[string]hostEntry) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(hostWriteParallelism)
	for host, st := range states {
		if old, ok := prev[host]; ok && old.Pushed <= version && sameHostState(old.NetworkHostState, st) {
			continue
		}
		g.Go(func() error {
			want := events.NetworkHostRecord{Network: network, Host: host, Pushed: version, NetworkHostState: st}
			_, err := s.realized.Upsert(gctx, events.NetworkHostKey(network, host), func(h *events.NetworkHostRecord, exists bool) error {
				if exists && (h.Pushed > version || h.Pushed == version && sameHostState(h.NetworkHostState, st)) {
					return record.ErrUnchanged
				}
				*h = want
				return nil
			})
			return err
		})
	}
	for host, old := range prev {
		if _, ok := states[host]; ok {
			continue
		}
		g.Go(func() error {
			err := s.realizedKV.Delete(gctx, events.NetworkHostKey(network, host), jetstream.LastRevision(old.rev))
			if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) && !record.Conflict(err) {
				return fmt.Errorf("remove network %s from host %s: %w", network, host, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// putHostState records one host's state after a push of version to that
// host alone.
func (s *store) putHostState(ctx context.Context, network, host string, version int64, st events.NetworkHostState) error {
	return s.putHostStates(ctx, network, version, map[string]events.NetworkHostState{host: st}, nil)
}

// removeHostStates deletes every host's state of a network.
func (s *store) removeHostStates(ctx context.Context, network string) error {
	prev, err := s.hostStates(ctx, network)
	if err != nil {
		return err
	}
	return s.putHostStates(ctx, network, 0, nil, prev)
}

// get returns the record and its revision; nil when the network is unknown.
func (s *store) get(ctx context.Context, name string) (*events.NetworkRecord, uint64, error) {
	return s.networks.Get(ctx, events.NetworkRecordKey(name))
}

// put writes a record: Create when rev is 0, otherwise Update at rev.
func (s *store) put(ctx context.Context, rec *events.NetworkRecord, rev uint64) (uint64, error) {
	return s.networks.Put(ctx, events.NetworkRecordKey(rec.Name), rec, rev)
}

// update applies change to the current record and writes it with
// compare-and-set, re-reading and re-applying on a conflict. change returns
// false to write nothing.
func (s *store) update(ctx context.Context, name string, change func(*events.NetworkRecord) (bool, error)) (*events.NetworkRecord, error) {
	rec, err := s.networks.Mutate(ctx, events.NetworkRecordKey(name), func(r *events.NetworkRecord) error {
		write, err := change(r)
		if err == nil && !write {
			return record.ErrUnchanged
		}
		return err
	})
	if errors.Is(err, record.ErrNotFound) {
		return nil, fmt.Errorf("network %s: %w", name, ErrNetworkNotFound)
	}
	return rec, err
}

// list returns every network record.
func (s *store) list(ctx context.Context) ([]events.NetworkRecord, error) {
	return s.networks.List(ctx)
}

// remove deletes a network's record, its hosts' states and its
// availability.
func (s *store) remove(ctx context.Context, name string) error {
	if err := s.netHosts.Delete(ctx, events.NetworkRecordKey(name)); err != nil {
		return err
	}
	if err := s.removeHostStates(ctx, name); err != nil {
		return err
	}
	return s.networks.Delete(ctx, events.NetworkRecordKey(name))
}

// publishAvailability derives the `net-hosts` read model of a record from
// its hosts' states and writes it if it changed.
func (s *store) publishAvailability(ctx context.Context, rec *events.NetworkRecord, hosts map[string]events.NetworkHostState) error {
	a := events.NetworkAvailability{Network: rec.Name, Version: rec.Version, Hosts: []string{}, Scope: []string{}}
	for name, h := range hosts {
		a.Scope = append(a.Scope, name)
		switch {
		case rec.Version > 0 && h.State == events.NetworkHostStateReady && h.Version == rec.Version:
			a.Hosts = append(a.Hosts, name)
		case rec.Version > 0 && h.State == events.NetworkHostStateFailed:
			a.Failed = append(a.Failed, name)
		}
	}
	slices.Sort(a.Scope)
	slices.Sort(a.Hosts)
	slices.Sort(a.Failed)
	// Compare-and-set, and never back: a replica holding an older version
	// of the record leaves a newer availability in place. An unchanged
	// availability is not written again.
	_, err := s.netHosts.Upsert(ctx, events.NetworkRecordKey(rec.Name), func(v *events.NetworkAvailability, exists bool) error {
		if exists && (v.Version > a.Version || v.Version == a.Version && slices.Equal(v.Hosts, a.Hosts) &&
			slices.Equal(v.Scope, a.Scope) && slices.Equal(v.Failed, a.Failed)) {
			return record.ErrUnchanged
		}
		*v = a
		return nil
	})
	return err
}

// availability reads the `net-hosts` entry of a network; nil when there is none.
func (s *store) availability(ctx context.Context, name string) (*events.NetworkAvailability, error) {
	a, _, err := s.netHosts.Get(ctx, events.NetworkRecordKey(name))
	return a, err
}
