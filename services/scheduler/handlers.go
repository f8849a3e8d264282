package scheduler

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/record"
)

// routes are the scheduler's handlers, one per event it consumes.
func (s *Service) routes() *bus.Router {
	r := bus.NewRouter(Name, s.log)
	bus.Handle(r, s.onPodAccepted)
	bus.Handle(r, s.onPodDeleted)
	bus.Handle(r, s.onPodFailed)
	bus.Handle(r, s.onPodEvicted)
	bus.Handle(r, s.onPodNetworkFailed)
	bus.Handle(r, s.onHostCordoned)
	bus.Handle(r, s.onHostUncordoned)
	bus.Handle(r, s.onHostRecovered)
	bus.Handle(r, s.onNetworkHostReady)
	bus.Handle(r, s.onNetworkRealized)
	bus.Handle(r, s.onMigrationRequested).OnFailure(s.migrationRequestFailed)
	bus.Handle(r, s.onMigrationCompletedEvent)
	bus.Handle(r, s.onMigrationFailed)
	bus.Handle(r, s.onMigrationCancelled)
	bus.Handle(r, s.onMigrationRejected)
	bus.Handle(r, s.onVMAccepted)
	bus.Handle(r, s.onVMDeleted)
	bus.Handle(r, s.onVMEvicted)
	bus.Handle(r, s.onVMMigrateRequested)
	bus.Handle(r, s.onVMMigrated)
	return r
}

// tuneConsumer sizes each stream's consumer: pods get the configured
// workers (and hold at most two messages each, so a burst spreads over
// replicas); host and network events are few; migration requests wait on
// the scheduling loop, so many run at once.
func (s *Service) tuneConsumer(c *bus.ConsumerConfig) {
	switch c.Stream {
	case events.StreamPods:
		c.Workers, c.MaxPending = s.cfg.Workers, 2*s.cfg.Workers
	case events.StreamHosts:
		c.Workers = 4
	case events.StreamNetworks:
		c.Workers = 2
	case events.StreamMigrations:
		c.Workers = 16
	case events.StreamVMs:
		c.Workers = 8
	}
}

func (s *Service) onPodDeleted(ctx context.Context, _ *bus.Message, e *events.PodDeleted) error {
	annotate(ctx, e.ObjectKey(), e.UID)
	return s.onPodGone(ctx, e.ObjectKey(), e.UID, e.Host, true)
}

func (s *Service) onPodFailed(ctx context.Context, _ *bus.Message, e *events.PodFailed) error {
	annotate(ctx, e.ObjectKey(), e.UID)
	return s.onPodGone(ctx, e.ObjectKey(), e.UID, e.Host, false)
}

// podInfo compiles a pod for the framework. The memory reserved is the
// VM's configured memory (MemoryMiB, rounded up to vSphere's 4 MiB
// granularity), because that is what the host gives the VM; the CPU is the
// request, overhead included.
func podInfo(pod *corev1.Pod, uid string, size events.PodVMSize, networks []string) (*framework.PodInfo, error) {
	mem := max(size.MemoryMiB<<20, size.MemoryBytes)
	return framework.NewPodInfo(pod, uid, framework.PodSize{CPUMilli: size.CPUMilli, MemoryBytes: mem}, networks)
}

func (s *Service) onPodAccepted(ctx context.Context, m *bus.Message, e *events.PodAccepted) error {
	annotate(ctx, e.ObjectKey(), e.UID)
	cause := m.Event
	p, err := podInfo(&e.Pod, e.UID, e.Size, e.Networks)
	if err != nil {
		// The pod can never be placed as written: say so once, for a
		// person to fix the manifest.
		stub := &framework.PodInfo{Namespace: e.Namespace, Name: e.Name, UID: e.UID, Key: e.ObjectKey()}
		return s.publishUnschedulableMessage(ctx, cause, stub, err.Error(), nil, 0)
	}
	return s.schedulePod(ctx, cause, p)
}

// schedulePod places a pod and publishes the result. An unschedulable pod
// is kept for retries and its event acknowledged.
func (s *Service) schedulePod(ctx context.Context, cause event.Event, p *framework.PodInfo) error {
	o := s.submit(ctx, newRequest(p, allocationOf(p)))
	switch {
	case errors.Is(o.err, ErrPodGone):
		return nil
	case o.err != nil:
		return fmt.Errorf("schedule %s: %w", p.Key, o.err)
	case o.fit != nil:
		if err := s.publishUnschedulable(ctx, cause, p, o.fit); err != nil {
			return err
		}
		s.pending.add(p, cause, o.fit.Error())
		s.log.Info("pod unschedulable", "pod", p.Key, "reason", o.fit.Error())
		return nil
	}
	if err := s.publishScheduled(ctx, cause, p, o.placement, o.refusals); err != nil {
		// The reservation stands; the redelivery finds it and publishes
		// the same event again.
		return err
	}
	s.pending.remove(p.Key, p.UID)
	return nil
}

// onPodGone releases everything the pod holds: its allocation and any
// migration reservation. A deleted pod's uid is remembered for a while so
// that a placement racing with the delete is dropped.
func (s *Service) onPodGone(ctx context.Context, key, uid, host string, deleted bool) error {
	s.pending.remove(key, uid)
	s.mu.Lock()
	if deleted {
		s.gone[uid] = time.Now()
		for u, at := range s.gone {
			if time.Since(at) > 10*time.Minute {
				delete(s.gone, u)
			}
		}
	}
	hosts := s.allocationsOfLocked(uid)
	s.mu.Unlock()
	if host != "" {
		if _, ok := hosts[host]; !ok {
			hosts[host] = []string{uid}
		}
	}
	if err := s.release(ctx, hosts); err != nil {
		return err
	}
	if err := s.ledger.Unbind(ctx, uid, 0); err != nil {
		return err
	}
	s.pending.kickAll()
	return nil
}

// allocationsOfLocked finds every allocation of a pod uid (its own and
// migration reservations), per host.
func (s *Service) allocationsOfLocked(uid string) map[string][]string {
	out := map[string][]string{}
	for k, h := range s.allocIndex {
		if k == uid || strings.HasPrefix(k, uid+"@") {
			out[h] = append(out[h], k)
		}
	}
	return out
}

// release removes allocations (per host) from the ledger.
func (s *Service) release(ctx context.Context, byHost map[string][]string) error {
	for host, keys := range byHost {
		entry, _, err := s.ledger.Release(ctx, host, keys...)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.applyEntryLocked(entry)
		s.mu.Unlock()
	}
	return nil
}

// onPodEvicted frees the pod's room on the host it was evicted from and
// places it again (HA restart). The pod's manifest comes from the
// provisioner's record.
func (s *Service) onPodEvicted(ctx context.Context, m *bus.Message, e *events.PodEvicted) error {
	annotate(ctx, e.ObjectKey(), e.UID)
	cause := m.Event
	if err := s.unplace(ctx, e.UID, e.Host); err != nil {
		return err
	}
	rec, err := s.podRecord(ctx, e.Namespace, e.Name)
	if err != nil {
		return err
	}
	if rec == nil || rec.UID != e.UID || !rec.DeletionRequestedAt.IsZero() {
		return nil // deleted meanwhile: nothing to place
	}
	p, err := podInfo(&rec.Pod, rec.UID, rec.Size, rec.Networks)
	if err != nil {
		return bus.Permanent(fmt.Errorf("%s: %w", cause.Type(), err))
	}
	s.pending.kickAll()
	return s.schedulePod(ctx, cause, p)
}

// unplace frees a pod's room on host and its binding there, unless the
// binding already points elsewhere (a replay after the pod was placed
// again).
func (s *Service) unplace(ctx context.Context, uid, host string) error {
	if err := s.release(ctx, map[string][]string{host: {uid}}); err != nil {
		return err
	}
	b, ok, err := s.ledger.GetBinding(ctx, uid)
	if err != nil || !ok || b.Host != host {
		return err
	}
	return s.ledger.Unbind(ctx, uid, b.Revision)
}

// refusalFoldWait is how soon a pod.network.failed whose refusal the pod
// record does not show yet is looked at again, for its first
// refusalQuickTries deliveries: the provisioner folds it in parallel,
// usually within milliseconds. Later deliveries take the consumer's
// backoff (seconds, then minutes), for a provisioner busy for longer
// (starting up, a burst); a refusal folded after them all is taken by the
// pending rescan (recoverPending).
const (
	refusalFoldWait   = 200 * time.Millisecond
	refusalQuickTries = 3
)

// refusalNotFolded is the error of delivery n of a pod.network.failed whose
// refusal the record does not show yet.
func refusalNotFolded(e *events.PodNetworkFailed, n uint64) error {
	err := fmt.Errorf("pod %s: the record does not show host %s's refusal yet", e.ObjectKey(), e.Host)
	if n < refusalQuickTries {
		return bus.RetryAfter(err, refusalFoldWait)
	}
	return err
}

// onPodNetworkFailed places a pod again when the host it was scheduled to
// refused its network for a reason of that host (NotRealizedOnHost,
// NotInScope): another host may carry the network. The provisioner's
// record decides whether it goes on: folding the refusal sends the pod
// back to Pending, or fails it once events.MaxNetworkRefusals hosts refused
// (pod.failed then frees everything). The refused hosts are not tried
// again.
func (s *Service) onPodNetworkFailed(ctx context.Context, m *bus.Message, e *events.PodNetworkFailed) error {
	annotate(ctx, e.ObjectKey(), e.UID)
	if e.Host == "" || !events.HostSpecificNetworkReason(e.Reason) {
		return nil // the pod fails: pod.failed frees its room
	}
	rec, err := s.podRecord(ctx, e.Namespace, e.Name)
	if err != nil {
		return err
	}
	switch {
	case rec == nil || rec.UID != e.UID || !rec.DeletionRequestedAt.IsZero() || rec.Phase == events.PodPhaseFailed:
		return nil
	case !rec.RefusedHosts()[e.Host]:
		return refusalNotFolded(e, m.Delivery)
	case rec.Host != "":
		return nil // placed again already (a replay)
	}
	if err := s.unplace(ctx, e.UID, e.Host); err != nil {
		return err
	}
	p, err := podInfo(&rec.Pod, rec.UID, rec.Size, rec.Networks)
	if err != nil {
		return bus.Permanent(fmt.Errorf("%s: %w", m.Event.Type(), err))
	}
	p.Refused = rec.RefusedHosts()
	s.log.Info("host refused the pod's network; placing it again", "pod", e.ObjectKey(), "host", e.Host, "network", e.Network, "reason", e.Reason)
	return s.schedulePod(ctx, m.Event, p)
}

// podRecord reads the provisioner's record of a pod (nil if none).
func (s *Service) podRecord(ctx context.Context, ns, name string) (*events.PodRecord, error) {
	rec, rev, err := record.New[events.PodRecord](s.podsKV, "pod record").Get(ctx, events.PodRecordKey(ns, name))
	if rec != nil {
		rec.ResourceVersion = rev
	}
	return rec, err
}

// The provisioner's reasons on a record waiting for a host, which the
// pending rescan takes (recoverPending, recoverPendingVMs).
const reasonUnschedulable, reasonNetworkRefused = "Unschedulable", "NetworkRefused"

// recoverPending finds the pods waiting for a host in the provisioner's
// records: phase Pending, no host. At start-up (all) every such pod is
// taken, since this replica may have acknowledged its pod.accepted before
// it stopped; later rescans take those the provisioner marked
// Unschedulable, which another replica may hold in memory or may have held
// when it died. Holding a pod twice is safe: the pod bindings place it
// once.
//
// A pod held in the ledger while its record shows no host was placed, and
// the pod.scheduled that tells the provisioner is either on its way or
// was never published: a replica that placed a waiting pod from its
// memory died between the ledger write and the publication (nothing
// redelivers a pod.accepted acknowledged long before). Found so for half
// a rescan interval or more, the pod is taken again: the scheduling loop
// finds its allocation and replays the placement, which publishes
// pod.scheduled for the same host (for the provisioner a no-op if the
// first one was only late). Only a pod whose record waits for a first
// placement or says Unschedulable or NetworkRefused is taken so: an
// evicted pod's allocation may be on the host it was evicted from, until
// the pod.evicted handler frees it. A pod held on a host its record says
// refused the pod's network is freed there and placed again. An evicted pod
// held nowhere, found so for half an interval, is taken as an
// Unschedulable one is: its handler's replica may hold it in memory only.
func (s *Service) recoverPending(ctx context.Context, all bool) error {
	// The provisioner's reasons on a record waiting for a host: after
	// pod.unschedulable, and after a host refused the pod's network (the
	// pod.network.failed that places it again may have been dead-lettered
	// before the provisioner folded the refusal).
	waiting := map[string]bool{reasonUnschedulable: true, reasonNetworkRefused: true}
	views, err := s.podViews(ctx, nil)
	if err != nil {
		return err
	}
	now := time.Now()
	placedSeen := map[string]bool{}
	defer s.forgetStranded(placedSeen)
	n := 0
	for _, v := range views {
		if v.Phase != events.PodPhasePending || v.Host != "" || !v.DeletionRequestedAt.IsZero() {
			continue
		}
		s.mu.Lock()
		held, placed := s.allocIndex[v.UID]
		s.mu.Unlock()
		switch {
		case placed:
			if s.pending.has(v.key(), v.UID) {
				continue // this replica's retry publishes it
			}
			if v.Reason != "" && !waiting[v.Reason] && (v.EvictedFrom == "" || held == v.EvictedFrom) {
				// Sent back by an eviction (HostLost, NetworkLost, ...):
				// the allocation may be the old host's, which only the
				// pod.evicted handler frees; replaying it would send
				// the pod back there. Held on another host, it is the
				// new placement, whose pod.scheduled the provisioner
				// may have taken for stale (it came before the
				// eviction was folded): replayed as any other.
				continue
			}
			placedSeen[v.UID] = true
			if v.Reason != reasonNetworkRefused && !s.strandedFor(v.UID, now) {
				continue
			}
		case !all && s.pending.has(v.key(), v.UID):
			continue
		case !all && !waiting[v.Reason]:
			// Sent back by an eviction and placed nowhere: the pod.evicted
			// handler found no host and holds it in its replica's memory,
			// which may be gone (the record keeps the eviction's reason
			// when the provisioner folded the pod.unschedulable before the
			// eviction, as stale). Taken once found so on passes half an
			// interval apart. A pod with no reason yet is left to its
			// pod.accepted, which is redelivered until handled.
			if v.Reason == "" {
				continue
			}
			placedSeen[v.UID] = true
			if !s.strandedFor(v.UID, now) {
				continue
			}
		}
		// The pod's spec is in the full record, read now that it is wanted.
		rec, err := s.podRecord(ctx, v.Namespace, v.Name)
		if err != nil || rec == nil || rec.UID != v.UID || rec.Phase != events.PodPhasePending || rec.Host != "" || !rec.DeletionRequestedAt.IsZero() {
			continue
		}
		switch {
		case placed && rec.RefusedHosts()[held]:
			// Still held on a host the record says refused the pod's
			// network: the pod.network.failed that frees that room and
			// places the pod again was lost. Do its work.
			if err := s.unplace(ctx, v.UID, held); err != nil {
				s.log.Warn("pending rescan: room on a refusing host not freed", "pod", v.key(), "host", held, "err", err)
				continue
			}
		case placed && !s.strandedFor(v.UID, now):
			continue
		case placed:
			s.log.Info("pending rescan: placed, but no host on the record; publishing the placement again", "pod", v.key(), "host", held)
		}
		p, err := podInfo(&rec.Pod, rec.UID, rec.Size, rec.Networks)
		if err != nil {
			continue
		}
		if len(rec.NetworkRefusals) > 0 {
			p.Refused = rec.RefusedHosts()
		}
		// The cause stands in for the pod.accepted that was acknowledged
		// before the restart: its id is stable per placement generation
		// and it carries the pod's trace.
		cause := event.New()
		cause.SetID(fmt.Sprintf("%s/recovered/%d", rec.RequestID, rec.Generation))
		if rec.TraceParent != "" {
			cause.SetExtension(bus.ExtTraceparent, rec.TraceParent)
		}
		s.pending.add(p, cause, rec.Message)
		n++
	}
	vms, err := s.recoverPendingVMs(ctx, all, now, placedSeen)
	n += vms
	if n > 0 {
		s.log.Info("recovered pending pods", "count", n)
		s.pending.kickAll()
	}
	return err
}

// strandedFor reports whether the pending rescan has found the pod (uid)
// placed without a host on its record for half a rescan interval or more,
// remembering the first time it did.
func (s *Service) strandedFor(uid string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	since, ok := s.stranded[uid]
	if !ok {
		s.stranded[uid] = now
		return false
	}
	return now.Sub(since) >= s.cfg.PendingRescan/2
}

// forgetStranded drops the pods a rescan no longer found placed without a
// host on their record.
func (s *Service) forgetStranded(seen map[string]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for uid := range s.stranded {
		if !seen[uid] {
			delete(s.stranded, uid)
		}
	}
}

func (s *Service) onHostCordoned(ctx context.Context, _ *bus.Message, e *events.HostCordoned) error {
	return s.setCordon(ctx, e.Name, true)
}

func (s *Service) onHostUncordoned(ctx context.Context, _ *bus.Message, e *events.HostUncordoned) error {
	return s.setCordon(ctx, e.Name, false)
}

func (s *Service) onHostRecovered(context.Context, *bus.Message, *events.HostRecovered) error {
	s.pending.kickAll()
	return nil
}

// setCordon records a cordon in the host's ledger entry (compare-and-set),
// where every scheduler replica sees it (watchLedger) and where a
// reservation racing with it loses; applying the entry here updates the
// snapshot, the host record and, on an uncordon, wakes the waiting pods.
func (s *Service) setCordon(ctx context.Context, host string, on bool) error {
	entry, changed, err := s.ledger.SetCordon(ctx, host, on)
	if err != nil {
		return fmt.Errorf("cordon %s: %w", host, err)
	}
	s.mu.Lock()
	s.applyEntryLocked(entry)
	s.mu.Unlock()
	if changed {
		s.log.Info("host cordon", "host", host, "cordoned", on)
	}
	return nil
}

func (s *Service) onNetworkHostReady(context.Context, *bus.Message, *events.NetworkHostReady) error {
	s.networksChanged()
	return nil
}

func (s *Service) onNetworkRealized(context.Context, *bus.Message, *events.NetworkRealized) error {
	s.networksChanged()
	return nil
}

// networksChanged wakes the waiting pods: they may fit now. The
// availability itself comes from KV net-hosts (watched); the event is the
// cue. The watch and the event race, so the kick is repeated shortly after.
func (s *Service) networksChanged() {
	s.pending.kickAll()
	go func() {
		sleep(s.runCtx, 300*time.Millisecond)
		s.pending.kickAll()
	}()
}
