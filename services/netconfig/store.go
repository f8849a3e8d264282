package netconfig

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/record"
)

// store reads and writes network-config's records: `networks` by
// compare-and-set, `net-hosts` as a derived read model.
type store struct {
	networks *record.Store[events.NetworkRecord]
	netHosts *record.Store[events.NetworkAvailability]
}

func newStore(networks, netHosts jetstream.KeyValue) *store {
	n := record.New[events.NetworkRecord](networks, "network")
	n.BeforeWrite = func(r *events.NetworkRecord) { r.UpdatedAt = time.Now().UTC() }
	return &store{networks: n, netHosts: record.New[events.NetworkAvailability](netHosts, "availability of network")}
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

// remove deletes a network's record and its availability.
func (s *store) remove(ctx context.Context, name string) error {
	if err := s.netHosts.Delete(ctx, events.NetworkRecordKey(name)); err != nil {
		return err
	}
	return s.networks.Delete(ctx, events.NetworkRecordKey(name))
}

// publishAvailability derives and writes the `net-hosts` read model of a record.
func (s *store) publishAvailability(ctx context.Context, rec *events.NetworkRecord) error {
	a := events.NetworkAvailability{
		Network: rec.Name,
		Version: rec.Version,
		Hosts:   rec.RealizedHosts(),
		Scope:   rec.Scope,
	}
	for name, h := range rec.Hosts {
		if h.State == events.NetworkHostStateFailed && rec.Version > 0 {
			a.Failed = append(a.Failed, name)
		}
	}
	slices.Sort(a.Failed)
	if a.Hosts == nil {
		a.Hosts = []string{}
	}
	if a.Scope == nil {
		a.Scope = []string{}
	}
	// Compare-and-set, and never back: a replica holding an older version
	// of the record leaves a newer availability in place.
	_, err := s.netHosts.Upsert(ctx, events.NetworkRecordKey(rec.Name), func(v *events.NetworkAvailability, exists bool) error {
		if exists && v.Version > a.Version {
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
