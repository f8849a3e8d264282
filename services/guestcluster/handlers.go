package guestcluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/compat"
	"github.com/podvisor/podvisor/shared/record"
)

// onRequested creates (or converges) a guest cluster: record,
// compatibility check, identity, control plane, then Ready.
//
// Requests are ordered by the GUESTCLUSTERS stream (requestGeneration):
// the record holds the generation of the request whose spec it took, and a
// request older than that one (a delivery retried after a newer request
// was stored, or one a replica took late) is acked and does nothing.
// Everything a handler builds is built from the record as its own
// compare-and-set stored it, never from its message, and it stops
// (errSuperseded) as soon as it finds a newer request stored: that one's
// handler, on whichever replica, converges the cluster.
func (s *Service) onRequested(ctx context.Context, m *bus.Message, p *events.GuestClusterRequested) error {
	err := s.handleRequest(ctx, m, p, requestGeneration(m))
	if errors.Is(err, errSuperseded) {
		m.Log.Info("a newer request of the guest cluster is stored; this one does nothing more", "seq", m.StreamSeq)
		return nil
	}
	return err
}

func (s *Service) handleRequest(ctx context.Context, m *bus.Message, p *events.GuestClusterRequested, gen generation) error {
	g := p.GuestCluster
	g.Normalize()
	ns, name := g.Metadata.Namespace, g.Metadata.Name
	key := events.GuestClusterRecordKey(ns, name)
	if s.unavailable != nil {
		return bus.Permanent(bus.WithReason("GuestClustersUnavailable", s.unavailable))
	}
	cur, _, err := s.clusters.Get(ctx, key)
	switch {
	case err != nil:
		return err
	case cur != nil && cur.supersedes(gen):
		// Not even an upgrade's check: the request is past.
		return errSuperseded
	case cur != nil && cur.Spec.Version != g.Spec.Version && running(&cur.GuestClusterRecord):
		// An upgrade (another version of a running cluster) is checked
		// against the infrastructure's and the vCenter's offers like a
		// create, the result sent to the VI control plane, and refused:
		// an incompatible one naming each unmet requirement, a compatible
		// one because this podvisor runs one guest control-plane version.
		return s.refuseUpgrade(ctx, &m.Event, &cur.GuestClusterRecord, g.Spec.Version)
	}
	now := time.Now().UTC()
	// checked: this version was found compatible before (an unchanged
	// re-apply), so it is not checked, posted and published again.
	// hadRefusals: the record held refused workers, which this request
	// tries again.
	var checked, hadRefusals bool
	rec, err := s.upsertRequest(ctx, key, gen, func(r *clusterRecord, exists bool) error {
		// Under the compare-and-set: a newer request stored since the
		// read above wins, on whichever replica it ran.
		if exists && r.supersedes(gen) {
			return errSuperseded
		}
		checked = exists && r.Spec.Version == g.Spec.Version && r.Phase != events.GuestClusterPhaseFailed && compatibleRecorded(&r.GuestClusterRecord)
		if exists && r.Phase == events.GuestClusterPhaseDeleting {
			return bus.Permanent(bus.WithReason("Deleting", fmt.Errorf("guest cluster %s/%s is being deleted; apply it again once it is gone", ns, name)))
		}
		if exists && r.Spec.Version != g.Spec.Version && running(&r.GuestClusterRecord) {
			return bus.Permanent(bus.WithReason(reasonUpgradeUnsupported, fmt.Errorf("spec.version: %s runs %s; upgrades are not supported yet", key, r.Spec.Version)))
		}
		if err := g.Spec.ChangeRefused(r.Spec); exists && err != nil {
			return bus.Permanent(bus.WithReason(reasonControlPlaneImmutable, fmt.Errorf("guest cluster %s: %w", key, err)))
		}
		if !exists {
			*r = clusterRecord{GuestClusterRecord: events.GuestClusterRecord{Namespace: ns, Name: name, CreatedAt: now,
				Phase: events.GuestClusterPhaseProvisioning}}
		}
		if r.Phase == events.GuestClusterPhaseFailed {
			r.Phase, r.Reason, r.Message = events.GuestClusterPhaseProvisioning, "", ""
		}
		if !checked {
			// Until this request's check says otherwise, the spec is not
			// known compatible: a pass of another request that follows
			// it (declareWorkers) builds nothing from it meanwhile.
			r.SetCondition(events.GuestClusterConditionCompatible, events.ConditionUnknown, "Checking",
				fmt.Sprintf("the compatibility check of version %s is under way", g.Spec.Version), now)
		}
		r.Spec = g.Spec
		// A new request is a new try of every worker refused before it
		// (as a person applying again expects); a redelivery of the
		// request the record holds is the same try.
		hadRefusals = false
		if r.Generation != gen.seq || !r.GenerationAt.Equal(gen.at) {
			hadRefusals = len(r.RefusedWorkers) > 0
			r.RefusedWorkers = nil
		}
		r.Generation, r.GenerationAt = gen.seq, gen.at
		return nil
	})
	if err != nil {
		return err
	}
	// From here on, what is built is built from the record as stored by
	// this handler's write (its generation): spec, not g.Spec.
	spec := rec.Spec
	// Nothing is built before the version is found compatible with what
	// the infrastructure and the vCenter offer.
	if !checked {
		if err := s.admitCompatible(ctx, &m.Event, key, ns, name, spec.Version, gen); err != nil {
			return err
		}
	}
	if !slices.Contains(events.GuestClusterVersions, spec.Version) {
		return bus.Permanent(bus.WithReason("UnsupportedVersion",
			fmt.Errorf("spec.version %s: this podvisor runs guest control planes of %v", spec.Version, events.GuestClusterVersions)))
	}
	// The worker VMs are made while the control plane starts, from the
	// record read again under the cluster's lock (declareWorkers).
	if err := s.declareWorkers(ctx, &m.Event, ns, name, workerPass{request: &gen}); err != nil {
		return err
	}
	if hadRefusals {
		// The nodes and condition WorkersAccepted said the refusals this
		// request tries again; the record no longer holds them.
		if cur, _, err := s.clusters.Get(ctx, key); err == nil && cur != nil && !cur.supersedes(gen) {
			if _, err := s.refreshWorkers(ctx, cur); err != nil {
				m.Log.Warn("refresh the worker nodes", "err", err)
			}
		}
	}
	// The control plane's VMs are declared from the stored spec too; a
	// handler that finds a newer request stored leaves them to it.
	cur, _, err = s.clusters.Get(ctx, key)
	switch {
	case err != nil:
		return err
	case cur != nil && cur.supersedes(gen):
		return errSuperseded
	}
	var endpoint string
	if cur != nil {
		endpoint = cur.Endpoint
	}
	ep, err := s.ensureControlPlane(ctx, ns, name, spec, endpoint)
	if err != nil {
		return bus.WithReason("ControlPlaneFailed", err)
	}
	ready, err := s.recordEndpoint(ctx, key, ns, name, ep, &gen)
	if err != nil {
		return err
	}
	s.log.Info("guest cluster ready", "guestcluster", key, "endpoint", ready.Endpoint)
	return s.out.Emit(ctx, &m.Event, &events.GuestClusterReady{
		GuestClusterRef: events.GuestClusterRef{Namespace: ns, Name: name}, Endpoint: ready.Endpoint})
}

// recordEndpoint keeps what a control plane's Ensure returned: the admin
// kubeconfig in the bucket clients cannot read, first, then the record
// Ready with the endpoint. A control plane started again (after a restart
// of the supervisor) can answer at another address: the resync records it
// the same way, so the kubeconfig handed out next is current. gen, for a
// request's handler: the record is left to a newer request's
// (errSuperseded), which may have failed and said so.
func (s *Service) recordEndpoint(ctx context.Context, key, ns, name string, ep Endpoint, gen *generation) (*clusterRecord, error) {
	if _, err := s.kubeconfigs.Upsert(ctx, key, func(k *events.GuestClusterKubeconfig, _ bool) error {
		if k.Kubeconfig == string(ep.Kubeconfig) {
			return record.ErrUnchanged
		}
		*k = events.GuestClusterKubeconfig{Namespace: ns, Name: name, Kubeconfig: string(ep.Kubeconfig)}
		return nil
	}); err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	return s.clusters.Mutate(ctx, key, func(r *clusterRecord) error {
		// A delete stored after the request supersedes it too (the mark
		// takes its generation).
		if gen != nil && r.supersedes(*gen) {
			return errSuperseded
		}
		if r.Phase == events.GuestClusterPhaseDeleting {
			return bus.Permanent(bus.WithReason("Deleting", fmt.Errorf("guest cluster %s was deleted while it started", key)))
		}
		if r.Phase == events.GuestClusterPhaseReady && r.Endpoint == ep.URL && r.HasKubeconfig {
			return record.ErrUnchanged
		}
		if r.Phase != events.GuestClusterPhaseReady || r.ReadyAt == nil {
			r.ReadyAt = &now
		}
		if r.Reason == reasonControlPlaneLost {
			r.Reason, r.Message = "", ""
		}
		r.Phase, r.Endpoint, r.HasKubeconfig = events.GuestClusterPhaseReady, ep.URL, true
		r.Identity = bus.GuestClusterIdentity(ns, name).Name
		return nil
	})
}

// Reasons of a refused change to a guest cluster that runs: it is left as
// it was (refusedChange).
const (
	// reasonControlPlaneImmutable refuses a new control-plane count.
	reasonControlPlaneImmutable = "ControlPlaneImmutable"
	// reasonUpgradeIncompatible refuses an upgrade to a version whose
	// requirements the infrastructure or the vCenter do not meet.
	reasonUpgradeIncompatible = "UpgradeIncompatible"
	// reasonUpgradeUnsupported refuses an upgrade to a compatible version:
	// this podvisor runs one guest control-plane version.
	reasonUpgradeUnsupported = "UpgradeUnsupported"
)

var refusedChange = map[string]bool{reasonControlPlaneImmutable: true, reasonUpgradeIncompatible: true, reasonUpgradeUnsupported: true}

// refuseUpgrade checks the requested version of a running guest cluster
// (trigger Upgrade: posted as a vCenter event and published as
// guestcluster.compatibility) and refuses the upgrade, naming each unmet
// requirement when there are.
func (s *Service) refuseUpgrade(ctx context.Context, cause *event.Event, cur *events.GuestClusterRecord, version string) error {
	key := cur.Key()
	if _, err := compat.GuestClusterRequires(version); err != nil {
		return bus.Permanent(bus.WithReason(reasonUpgradeUnsupported, fmt.Errorf("spec.version: %s runs %s; the upgrade to %s is refused: %w",
			key, cur.Spec.Version, version, err)))
	}
	res, err := s.checkCompat(ctx, cause, cur.Namespace, cur.Name, version, events.CompatTriggerUpgrade, "upgrade-"+cause.ID())
	if err != nil {
		return err
	}
	if !res.Compatible {
		return bus.Permanent(bus.WithReason(reasonUpgradeIncompatible, fmt.Errorf("spec.version: %s runs %s; the upgrade to %s is refused: %s",
			key, cur.Spec.Version, version, res.Message)))
	}
	return bus.Permanent(bus.WithReason(reasonUpgradeUnsupported, fmt.Errorf(
		"spec.version: %s runs %s; %s is compatible, but this podvisor runs guest control planes of %v only (upgrades are not supported yet)",
		key, cur.Spec.Version, version, events.GuestClusterVersions)))
}

// ensureControlPlane mints the identity and starts the control plane
// (endpoint: the URL the record holds, which it keeps where it can).
func (s *Service) ensureControlPlane(ctx context.Context, ns, name string, spec events.GuestClusterSpec, endpoint string) (Endpoint, error) {
	creds, err := s.minter.MintGuest(ns, name)
	if err != nil {
		return Endpoint{}, fmt.Errorf("identity of %s/%s: %w", ns, name, err)
	}
	network := spec.Network
	if network == "" {
		network = events.DefaultNetwork
	}
	return s.cps.Ensure(ctx, ControlPlane{Namespace: ns, Name: name, Version: spec.Version, Creds: creds,
		ClassName: spec.ControlPlane.ClassName, Network: network, Replicas: int(spec.ControlPlane.Replicas), Endpoint: endpoint})
}

// requestFailed records the failure and publishes guestcluster.failed.
func (s *Service) requestFailed(ctx context.Context, m *bus.Message, p *events.GuestClusterRequested, cause error) error {
	g := p.GuestCluster
	g.Normalize()
	ns, name := g.Metadata.Namespace, g.Metadata.Name
	reason := bus.ReasonOf(cause, "ControlPlaneFailed")
	gen := requestGeneration(m)
	// A refused change leaves the cluster as it was: it still runs.
	if reason != "Deleting" && !refusedChange[reason] {
		_, err := s.clusters.Mutate(ctx, events.GuestClusterRecordKey(ns, name), func(r *clusterRecord) error {
			// The record is a newer request's now: its phase is that
			// request's to say.
			if r.Phase == events.GuestClusterPhaseDeleting || r.supersedes(gen) {
				return record.ErrUnchanged
			}
			r.Phase, r.Reason, r.Message = events.GuestClusterPhaseFailed, reason, cause.Error()
			return nil
		})
		if err != nil && !errors.Is(err, record.ErrNotFound) {
			return err
		}
	}
	return s.out.Emit(ctx, &m.Event, &events.GuestClusterFailed{
		GuestClusterRef: events.GuestClusterRef{Namespace: ns, Name: name}, Reason: reason, Message: cause.Error()})
}

// onDeleteRequested deletes the guest cluster: it marks the record
// Deleting with the delete request's generation (a request stored before
// it does nothing from then on; a delete stored before the request the
// record holds does nothing itself), then finishDeletion. A delete of a
// guest cluster with no record leaves its tombstone all the same: a
// request stored before it, not handled yet, must not make it.
func (s *Service) onDeleteRequested(ctx context.Context, m *bus.Message, p *events.GuestClusterDeleteRequested) error {
	key := events.GuestClusterRecordKey(p.Namespace, p.Name)
	gen := requestGeneration(m)
	now := time.Now().UTC()
	// Under workerLocks: replaceWorkers in this process either declared
	// before the mark (deleteWorkers then deletes what it made) or sees
	// Deleting and declares nothing.
	unlock := s.workerLocks.Lock(key)
	rec, err := s.clusters.Mutate(ctx, key, func(r *clusterRecord) error {
		switch {
		case r.supersedes(gen):
			return errSuperseded
		case r.Phase == events.GuestClusterPhaseDeleting && r.generation() == gen:
			return record.ErrUnchanged
		case r.Phase != events.GuestClusterPhaseDeleting:
			r.Phase, r.DeletionRequestedAt = events.GuestClusterPhaseDeleting, &now
		}
		r.Generation, r.GenerationAt = gen.seq, gen.at
		return nil
	})
	unlock()
	switch {
	case errors.Is(err, errSuperseded):
		m.Log.Info("a request of the guest cluster stored after this delete made it; the delete does nothing", "seq", m.StreamSeq)
		return nil
	case errors.Is(err, record.ErrNotFound):
		s.log.Info("delete of a guest cluster that does not exist", "guestcluster", p.ObjectKey())
		// Its tombstone all the same. A request that made the record
		// since the read has bury fail (errRecordBack): the delete is
		// handled again, and marks it.
		return s.bury(ctx, key, gen)
	case err != nil:
		return err
	}
	return s.finishDeletion(ctx, &m.Event, rec)
}

// finishDeletion takes a Deleting guest cluster's deletion to its end:
// control plane first (so its node asks for nothing more), then its pods
// and worker VMs, waiting until their records are gone, then forgetDeleted.
func (s *Service) finishDeletion(ctx context.Context, cause *event.Event, rec *clusterRecord) error {
	if err := s.removeControlPlane(ctx, rec); err != nil {
		return err
	}
	n, err := s.deletePods(ctx, cause, &rec.GuestClusterRecord)
	if err != nil {
		return err
	}
	if _, err := s.deleteWorkers(ctx, cause, &rec.GuestClusterRecord); err != nil {
		return err
	}
	return s.forgetDeleted(ctx, cause, rec, n)
}

// resumeDeletion is finishDeletion for the resync, of a Deleting record
// whose delete request's handler may have gone with its process (it is
// redelivered only after AckWait) or may run on another replica: the same
// steps, each harmless when done again, but none that waits. It asks for
// the deletion of the pods that remain (with the ids the request's
// handler gives those requests when the stream still holds the request:
// deletionCause); the worker VMs that remain the resync's sweep asks for
// (sweepOrphanVMs, one id per VM); and it forgets the guest cluster only
// once none of them is left, in this resync or a later one.
func (s *Service) resumeDeletion(ctx context.Context, listed *clusterRecord) error {
	// Read again: the deletion may have ended since the list, and a newer
	// request made the guest cluster again.
	rec, _, err := s.clusters.Get(ctx, listed.Key())
	if err != nil || rec == nil || rec.Phase != events.GuestClusterPhaseDeleting {
		return err
	}
	cause := s.deletionCause(ctx, rec)
	if err := s.removeControlPlane(ctx, rec); err != nil {
		return err
	}
	pods, err := s.askPodDeletions(ctx, &cause, &rec.GuestClusterRecord)
	if err != nil {
		return err
	}
	vms, err := s.workerVMs(ctx, rec.Namespace, rec.Name)
	if err != nil || len(pods) > 0 || len(vms) > 0 {
		return err
	}
	return s.forgetDeleted(ctx, &cause, rec, 0)
}

func (s *Service) removeControlPlane(ctx context.Context, rec *clusterRecord) error {
	if s.cps == nil {
		return nil
	}
	if err := s.cps.Remove(ctx, rec.Namespace, rec.Name); err != nil {
		return fmt.Errorf("remove the control plane of %s/%s: %w", rec.Namespace, rec.Name, err)
	}
	return nil
}

// forgetDeleted ends the deletion of a guest cluster whose pods (n of
// them) and worker VMs are gone: its identity (revoked), its kubeconfig
// and its record, which leaves its tombstone; then guestcluster.deleted.
// What it publishes has its cause's ids: a handler and a resync that end
// the same deletion at once publish each effect once.
func (s *Service) forgetDeleted(ctx context.Context, cause *event.Event, rec *clusterRecord, n int) error {
	ref := events.GuestClusterRef{Namespace: rec.Namespace, Name: rec.Name}
	// The identity is revoked, not only forgotten: a copy of its creds
	// file kept anywhere stops working at once.
	if s.minter != nil {
		id := bus.GuestClusterIdentity(ref.Namespace, ref.Name).Name
		if err := s.minter.Revoke(ctx, id); err != nil {
			return fmt.Errorf("revoke the identity %s of %s: %w", id, ref.ObjectKey(), err)
		}
		if err := s.minter.Forget(id); err != nil {
			return err
		}
	}
	key := rec.Key()
	if err := s.kubeconfigs.KV().Purge(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("remove the kubeconfig of %s: %w", ref.ObjectKey(), err)
	}
	if err := s.bury(ctx, key, rec.generation()); err != nil {
		if errors.Is(err, errRecordBack) {
			// Ended elsewhere meanwhile, and a newer request made the
			// guest cluster again.
			s.log.Info("guest cluster made again before its deletion ended here", "guestcluster", ref.ObjectKey())
			return nil
		}
		return err
	}
	// A VM made after deleteWorkers' last look (declared before the
	// mark) is an orphan now; one made later still, the resync's sweep
	// finds.
	if _, err := s.sweepOrphanVMs(ctx, &ref); err != nil {
		s.log.Warn("sweep the VMs of a deleted guest cluster", "guestcluster", ref.ObjectKey(), "err", err)
	}
	s.log.Info("guest cluster deleted", "guestcluster", ref.ObjectKey(), "pods", n)
	return s.out.Emit(ctx, cause, &events.GuestClusterDeleted{GuestClusterRef: ref, Pods: n})
}

// running says whether a guest cluster runs: Ready, or Ready before and
// being started again (ControlPlaneLost). An upgrade of either is refused.
func running(r *events.GuestClusterRecord) bool {
	return r.Phase == events.GuestClusterPhaseReady ||
		r.Phase == events.GuestClusterPhaseProvisioning && r.Reason == reasonControlPlaneLost
}
