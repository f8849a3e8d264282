package migration

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// Native VMs (events vm.*) on a drained or lost host get what pods get,
// through the native VM controller and the scheduler rather than this
// service's own migration runner (a VM's vMotion is the provisioner's
// native VM controller's, see services/provisioner/nativevm):
//
//   - a drain, once its pods are handled, asks for a migration of every VM
//     on the host (vm.migrate.requested: the scheduler reserves a target,
//     the controller relocates the VM, powered on or off, and announces
//     vm.migrated). A VM that cannot move (no target, the relocation
//     failed) is evicted (vm.evicted, reason DrainUnmovable): the
//     scheduler places it again away from the host and the controller
//     makes it again there from its spec, removing the one it left. The
//     drain waits until no VM is on the host; a VM still there when the
//     wait ends is listed as unmovable and the host stays out of
//     maintenance mode.
//   - a lost host's VMs are evicted (vm.evicted, reason HostLost): they are
//     placed elsewhere and made again from their spec, in their declared
//     power state, as vSphere HA restarts them.

// ReasonDrainUnmovable is the reason of vm.evicted for a VM a drain could
// not move.
const ReasonDrainUnmovable = "DrainUnmovable"

// vmLeaveTimeout bounds how long a drain waits for one VM to leave its
// host (moved, or made again elsewhere after its eviction).
const vmLeaveTimeout = 2 * time.Minute

// nativeVMs is this service's view of the native VMs a drain moves.
type nativeVMs struct {
	mu sync.Mutex
	kv jetstream.KeyValue
	// outcomes are the vm.migrated seen of the drains' migrations, by ID.
	outcomes map[string]*events.VMMigrated
}

// vmsKV opens the provisioner's VM records (a read model here).
func (s *Service) vmsKV(ctx context.Context) (jetstream.KeyValue, error) {
	s.nvm.mu.Lock()
	defer s.nvm.mu.Unlock()
	if s.nvm.kv != nil {
		return s.nvm.kv, nil
	}
	kv, err := s.bus.KV(ctx, events.BucketVMs)
	if err != nil {
		return nil, fmt.Errorf("KV %s: %w", events.BucketVMs, err)
	}
	s.nvm.kv = kv
	return kv, nil
}

// vmsOnHost lists the VMs placed on host that are not being deleted.
func (s *Service) vmsOnHost(ctx context.Context, host string) ([]*events.VMRecord, error) {
	kv, err := s.vmsKV(ctx)
	if err != nil {
		return nil, err
	}
	all, err := listJSON[events.VMRecord](ctx, kv)
	if err != nil {
		return nil, fmt.Errorf("list VMs: %w", err)
	}
	var out []*events.VMRecord
	for _, r := range all {
		if r.Status.Host == host && r.DeletionRequestedAt.IsZero() {
			out = append(out, r)
		}
	}
	return out, nil
}

func (s *Service) vmRecord(ctx context.Context, ns, name string) (*events.VMRecord, error) {
	kv, err := s.vmsKV(ctx)
	if err != nil {
		return nil, err
	}
	r, _, err := getJSON[events.VMRecord](ctx, kv, events.VMRecordKey(ns, name))
	return r, err
}

// onVMMigrated keeps the outcome of a drain's VM migration for the drain
// that waits for it.
func (s *Service) onVMMigrated(_ context.Context, _ *bus.Message, e *events.VMMigrated) error {
	s.nvm.mu.Lock()
	defer s.nvm.mu.Unlock()
	if s.nvm.outcomes == nil {
		s.nvm.outcomes = map[string]*events.VMMigrated{}
	}
	s.nvm.outcomes[e.ID] = e
	return nil
}

func (s *Service) vmOutcome(id string) *events.VMMigrated {
	s.nvm.mu.Lock()
	defer s.nvm.mu.Unlock()
	return s.nvm.outcomes[id]
}

func (s *Service) forgetVMOutcome(id string) {
	s.nvm.mu.Lock()
	defer s.nvm.mu.Unlock()
	delete(s.nvm.outcomes, id)
}

// drainVMID names a drain's migration of one VM.
func drainVMID(host, uid string) string {
	id := "vm" + drainMigrationID(host, 0, uid)
	if len(id) > 128 {
		id = id[:128]
	}
	return id
}

// drainVMs moves every VM off host (see above) and tallies them in st.
func (s *Service) drainVMs(ctx context.Context, host, requestID string, st *drainState) error {
	vms, err := s.vmsOnHost(ctx, host)
	if err != nil || len(vms) == 0 {
		return err
	}
	cause := standIn(fmt.Sprintf("drain/%s/%s", host, requestID), "")
	ids := map[string]string{}
	for _, v := range vms {
		id := drainVMID(host, v.UID)
		s.forgetVMOutcome(id)
		ids[v.UID] = id
		if err := s.emit(ctx, cause, &events.VMMigrateRequested{ID: id, Namespace: v.Namespace, Name: v.Name}, bus.Distinct(id)); err != nil {
			return err
		}
	}
	s.log.Info("drain: VM migrations requested", "host", host, "vms", len(vms))
	type waiting struct {
		rec     *events.VMRecord
		evicted bool
		since   time.Time
	}
	left := map[string]*waiting{}
	for _, v := range vms {
		left[v.UID] = &waiting{rec: v, since: time.Now()}
	}
	for len(left) > 0 {
		for uid, w := range left {
			cur, err := s.vmRecord(ctx, w.rec.Namespace, w.rec.Name)
			if err != nil {
				return err
			}
			switch {
			case cur == nil || cur.UID != uid || !cur.DeletionRequestedAt.IsZero():
				delete(left, uid) // deleted meanwhile: nothing to move
				continue
			case cur.Status.Host != "" && cur.Status.Host != host && cur.StaleVM == "":
				st.moved[uid] = true
				delete(left, uid)
				continue
			}
			if o := s.vmOutcome(ids[uid]); o != nil && o.Failed() && !w.evicted {
				msg := fmt.Sprintf("drain of %s: the VM could not move (%s: %s); it is made again on another host from its spec", host, o.Reason, o.Message)
				if err := s.emit(ctx, cause, &events.VMEvicted{Namespace: cur.Namespace, Name: cur.Name, UID: uid, Host: host,
					Reason: ReasonDrainUnmovable, Message: msg}, bus.Distinct("evict/"+uid)); err != nil {
					return err
				}
				s.log.Warn("drain: VM evicted", "host", host, "vm", cur.Key(), "reason", o.Reason)
				w.evicted, w.since = true, time.Now()
			}
			if time.Since(w.since) > vmLeaveTimeout {
				reason := "VMStillOnHost"
				if o := s.vmOutcome(ids[uid]); o != nil && o.Failed() {
					reason = o.Reason
				}
				st.stuck(events.UnmovablePod{Namespace: cur.Namespace, Name: cur.Name, UID: uid, Reason: reason,
					Message: fmt.Sprintf("VM %s is still on %s after %s (phase %s)", cur.Key(), host, vmLeaveTimeout, cur.Status.Phase)})
				delete(left, uid)
			}
		}
		if len(left) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(drainPoll):
		}
	}
	return nil
}

// evictVMs evicts the VMs of a lost host: each is placed elsewhere and
// made again from its spec.
func (s *Service) evictVMs(ctx context.Context, m *bus.Message, host, why string) error {
	vms, err := s.vmsOnHost(ctx, host)
	if err != nil {
		return err
	}
	for _, v := range vms {
		if err := s.emit(ctx, &m.Event, &events.VMEvicted{Namespace: v.Namespace, Name: v.Name, UID: v.UID, Host: host, Reason: ReasonHostLost,
			Message: fmt.Sprintf("host %s stopped responding (%s); the VM is made again on another host", host, why)}, bus.Distinct(v.UID)); err != nil {
			return err
		}
	}
	if len(vms) > 0 {
		s.log.Warn("host lost; VMs evicted", "host", host, "vms", len(vms))
	}
	return nil
}
