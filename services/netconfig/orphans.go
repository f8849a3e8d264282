package netconfig

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/periodic"
)

// Orphaned addresses. pod.deleted, pod.failed and vm.deleted free an
// owner's addresses, but an attach can still allocate one after that
// release ran: a pod.scheduled redelivered to another replica (its first
// delivery's process died) and handled after the pod was deleted. Nothing
// would free that address again. The orphan sweep does: an address whose
// owner has no record (no pod and no VM of that namespace and name) in two
// sweeps at least an interval apart, and that is older than the interval,
// is released, compare-and-set on the address's revision as every release
// is (ipam.Release), so an address taken again meanwhile is left alone.
//
// A network service's address (owner service-<name>, serviceOwner) is
// orphaned the same way: a retry for a waiting service (serveWaiting) can
// take it again right after the service's delete gave it back, then fail
// its record write, and the delete removes the record. Its owner is the
// service's record in net-services naming the address's network: an
// address whose service has no record, or one that no longer names that
// network, is released on the same two sightings. A record that names the
// network keeps the address even without a profile there: the service is
// waiting, and its next retry records the address it holds.
//
// Two sightings, because a record read can be answered by a NATS node that
// has not applied the record yet; an owner missing for a whole interval is
// gone. The sightings are only this process's reason to look again: the
// release itself re-reads the owner, and any replica may run the sweep.
//
// An address whose pod name was taken by a new pod (another uid) is not
// released while that name has a record: the sweep lists the records' keys,
// not their values, to stay cheap at ten thousand pods.

// orphanSeen is the first sweep that found an address's owner missing, by
// network, address and owner uid.
type orphanSeen struct {
	mu sync.Mutex
	at map[string]time.Time
}

func (s *Service) orphanLoop(ctx context.Context) {
	periodic.Every(ctx, s.cfg.OrphanSweepInterval, s.log, "orphan address sweep", func(ctx context.Context) error {
		// Bounded: a listing whose replay stalls (a NATS node lost
		// meanwhile) must not hold the loop for good.
		ctx, cancel := context.WithTimeout(ctx, s.cfg.OrphanSweepInterval)
		defer cancel()
		_, err := s.SweepOrphans(ctx, time.Now())
		return err
	})
}

// SweepOrphans releases the addresses whose owner was found missing by an
// earlier sweep at least OrphanSweepInterval before now and is still
// missing, and notes those found missing for the first time. It returns the
// addresses released ("network/ip").
func (s *Service) SweepOrphans(ctx context.Context, now time.Time) ([]string, error) {
	owners, err := s.ownerKeys(ctx)
	if err != nil {
		return nil, err
	}
	served, err := s.servedNetworks(ctx)
	if err != nil {
		return nil, err
	}
	recs, err := s.store.list(ctx)
	if err != nil {
		return nil, err
	}
	interval := s.cfg.OrphanSweepInterval
	missing := map[string]bool{}
	var released []string
	var errs []error
	for _, r := range recs {
		allocs, err := s.ipam.Allocations(ctx, r.Name)
		if err != nil {
			errs = append(errs, fmt.Errorf("network %s: %w", r.Name, err))
			continue
		}
		for _, a := range allocs {
			present := owners[events.PodRecordKey(a.Namespace, a.Name)]
			if isServiceAddress(a) {
				present = slices.Contains(served[a.Name], r.Name)
			}
			if present || now.Sub(a.AllocatedAt) < interval {
				continue
			}
			id := r.Name + "/" + a.IP + "/" + a.UID // the next owner of the address starts afresh
			missing[id] = true
			s.orphans.mu.Lock()
			first, seen := s.orphans.at[id]
			if !seen {
				s.orphans.at[id] = now
			}
			s.orphans.mu.Unlock()
			if !seen || now.Sub(first) < interval {
				continue
			}
			gone, err := s.ownerGone(ctx, r.Name, a)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if !gone {
				continue
			}
			ip, err := s.ipam.Release(ctx, r.Name, a.UID)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if ip != "" {
				released = append(released, r.Name+"/"+ip)
				s.recountSoon(r.Name)
				s.log.Warn("released an address whose owner is gone", "network", r.Name, "ip", ip,
					"owner", a.Namespace+"/"+a.Name, "uid", a.UID, "allocated_at", a.AllocatedAt, "missing_since", first)
			}
		}
	}
	s.orphans.mu.Lock()
	for id := range s.orphans.at {
		if !missing[id] {
			delete(s.orphans.at, id) // its owner came back, or it was released
		}
	}
	s.orphans.mu.Unlock()
	return released, errors.Join(errs...)
}

// ownerKeys lists the keys of every pod and VM record (pod and VM records
// share the namespace/name key form).
func (s *Service) ownerKeys(ctx context.Context) (map[string]bool, error) {
	keys := map[string]bool{}
	for _, kv := range []jetstream.KeyValue{s.pods, s.vms} {
		lister, err := kv.ListKeys(ctx)
		if err != nil {
			return nil, fmt.Errorf("list owners in %s: %w", kv.Bucket(), err)
		}
		for k := range lister.Keys() {
			keys[k] = true
		}
	}
	return keys, nil
}

// servedNetworks lists the networks each network service's record names,
// by service.
func (s *Service) servedNetworks(ctx context.Context) (map[string][]string, error) {
	recs, err := s.serviceRecords(ctx)
	if err != nil {
		return nil, err
	}
	served := make(map[string][]string, len(recs))
	for _, r := range recs {
		served[r.Name] = r.Spec.Networks
	}
	return served, nil
}

// isServiceAddress reports whether an address is a network service's.
func isServiceAddress(a events.IPAllocation) bool {
	return a.Namespace == ServiceNamespace && a.UID == serviceOwner(a.Name).UID
}

// ownerGone reads the address's owner on network again: a service's
// record, gone when it does not name the network; else pod then VM, gone
// when neither record exists with the address's uid.
func (s *Service) ownerGone(ctx context.Context, network string, a events.IPAllocation) (bool, error) {
	if isServiceAddress(a) {
		rec, _, err := s.services.Get(ctx, a.Name)
		if err != nil {
			return false, fmt.Errorf("read network service %s of %s: %w", a.Name, a.IP, err)
		}
		return rec == nil || !slices.Contains(rec.Spec.Networks, network), nil
	}
	for _, kv := range []jetstream.KeyValue{s.pods, s.vms} {
		key := events.PodRecordKey(a.Namespace, a.Name) // VMRecordKey is the same
		e, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("read owner %s of %s: %w", key, a.IP, err)
		}
		var owner struct {
			UID string `json:"uid"`
		}
		if err := json.Unmarshal(e.Value(), &owner); err != nil || owner.UID == a.UID {
			return false, nil // undecodable or the owner: not ours to free
		}
	}
	return true, nil
}
