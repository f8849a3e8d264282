package netconfig

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
)

// store reads and writes network-config's records: `networks` by
// compare-and-set, `net-hosts` as a derived read model.
type store struct {
	networks jetstream.KeyValue
	netHosts jetstream.KeyValue
}

// get returns the record and its revision; nil when the network is unknown.
func (s *store) get(ctx context.Context, name string) (*events.NetworkRecord, uint64, error) {
	e, err := s.networks.Get(ctx, events.NetworkRecordKey(name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read network %s: %w", name, err)
	}
	var rec events.NetworkRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, 0, fmt.Errorf("decode network %s: %w", name, err)
	}
	return &rec, e.Revision(), nil
}

// put writes a record: Create when rev is 0, otherwise Update at rev.
func (s *store) put(ctx context.Context, rec *events.NetworkRecord, rev uint64) (uint64, error) {
	rec.UpdatedAt = time.Now().UTC()
	data, err := json.Marshal(rec)
	if err != nil {
		return 0, err
	}
	key := events.NetworkRecordKey(rec.Name)
	if rev == 0 {
		rev, err = s.networks.Create(ctx, key, data)
	} else {
		rev, err = s.networks.Update(ctx, key, data, rev)
	}
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return 0, fmt.Errorf("write network %s: %w: %w", rec.Name, ErrConflict, err)
		}
		return 0, fmt.Errorf("write network %s: %w", rec.Name, err)
	}
	return rev, nil
}

// update applies change to the current record and writes it with
// compare-and-set, re-reading and re-applying on a conflict. change returns
// false to write nothing.
func (s *store) update(ctx context.Context, name string, change func(*events.NetworkRecord) (bool, error)) (*events.NetworkRecord, error) {
	for attempt := 0; attempt < 8; attempt++ {
		rec, rev, err := s.get(ctx, name)
		if err != nil {
			return nil, err
		}
		if rec == nil {
			return nil, fmt.Errorf("network %s: %w", name, ErrNetworkNotFound)
		}
		write, err := change(rec)
		if err != nil || !write {
			return rec, err
		}
		if _, err := s.put(ctx, rec, rev); err != nil {
			if errors.Is(err, ErrConflict) {
				continue
			}
			return nil, err
		}
		return rec, nil
	}
	return nil, fmt.Errorf("network %s: %w", name, ErrConflict)
}

// list returns every network record.
func (s *store) list(ctx context.Context) ([]events.NetworkRecord, error) {
	lister, err := s.networks.ListKeys(ctx)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("list networks: %w", err)
	}
	var names []string
	for k := range lister.Keys() {
		names = append(names, k)
	}
	var out []events.NetworkRecord
	for _, n := range names {
		rec, _, err := s.get(ctx, n)
		if err != nil {
			return nil, err
		}
		if rec != nil {
			out = append(out, *rec)
		}
	}
	return out, nil
}

// remove deletes a network's record and its availability.
func (s *store) remove(ctx context.Context, name string) error {
	for _, kv := range []jetstream.KeyValue{s.netHosts, s.networks} {
		if err := kv.Delete(ctx, events.NetworkRecordKey(name)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("delete %s from %s: %w", name, kv.Bucket(), err)
		}
	}
	return nil
}

// availability derives and writes the `net-hosts` read model of a record.
func (s *store) publishAvailability(ctx context.Context, rec *events.NetworkRecord) error {
	a := events.NetworkAvailability{
		Network: rec.Name,
		Version: rec.Version,
		Hosts:   rec.RealizedHosts(),
		Scope:   rec.Scope,
	}
	if a.Hosts == nil {
		a.Hosts = []string{}
	}
	if a.Scope == nil {
		a.Scope = []string{}
	}
	data, err := json.Marshal(a)
	if err != nil {
		return err
	}
	if _, err := s.netHosts.Put(ctx, events.NetworkRecordKey(rec.Name), data); err != nil {
		return fmt.Errorf("write availability of %s: %w", rec.Name, err)
	}
	return nil
}

// availability reads the `net-hosts` entry of a network.
func (s *store) availability(ctx context.Context, name string) (*events.NetworkAvailability, error) {
	e, err := s.netHosts.Get(ctx, events.NetworkRecordKey(name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read availability of %s: %w", name, err)
	}
	var a events.NetworkAvailability
	if err := json.Unmarshal(e.Value(), &a); err != nil {
		return nil, fmt.Errorf("decode availability of %s: %w", name, err)
	}
	return &a, nil
}
