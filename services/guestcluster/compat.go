package guestcluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/compat"
	"github.com/podvisor/podvisor/shared/record"
)

// Compatibility checks (shared/compat): before anything of a guest cluster
// is built, and whenever a client asks (`podvisor check guestcluster`),
// the guest cluster version's requires document is checked against what
// podvisor's services and the vCenter offer. The result goes to the VI
// control plane as a vCenter event on the compute cluster the guest
// cluster runs in, and on the bus as guestcluster.compatibility. An
// incompatible create is refused: the record is Failed with the condition
// Compatible=False naming each unmet requirement.

// ReasonIncompatible is the reason of a guest cluster refused by its
// compatibility check.
const ReasonIncompatible = "Incompatible"

// checkCompat runs the check of version for the guest cluster ns/name,
// posts it to vCenter and publishes guestcluster.compatibility. An error
// means the check could not be made; a version without known requirements
// is a permanent error naming the known ones.
func (s *Service) checkCompat(ctx context.Context, cause *event.Event, ns, name, version, trigger, checkID string) (*events.GuestClusterCompatibility, error) {
	cluster, err := s.computeCluster(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := compat.GuestClusterRequires(version); err != nil {
		return nil, bus.Permanent(bus.WithReason("UnsupportedVersion", fmt.Errorf("spec.version: %w", err)))
	}
	res, err := compat.CheckGuestCluster(ctx, s.vs.Vim(), compat.GuestCluster{Namespace: ns, Name: name, Version: version,
		Cluster: cluster, Trigger: trigger, CheckID: checkID})
	if err != nil {
		return nil, fmt.Errorf("compatibility check of %s/%s: %w", ns, name, err)
	}
	// One answer per check: a redelivered request republishes the same
	// id (the vCenter event may be posted twice; the bus de-duplicates).
	if err := s.out.Emit(ctx, cause, res, bus.Distinct(trigger+"/"+checkID)); err != nil {
		return nil, err
	}
	s.log.Info("guest cluster compatibility checked", "guestcluster", ns+"/"+name, "version", version,
		"compatible", res.Compatible, "unmet", len(res.Unmet), "vcenterEvent", res.VCenterEventKey)
	return res, nil
}

// computeCluster is the compute cluster the guest clusters' VMs run in,
// where the check's vCenter event is posted: the first of the datacenter
// by name (podvisor places a guest cluster's VMs through the same
// scheduler as any VM; the event goes on one cluster so that it is found
// in one place).
func (s *Service) computeCluster(ctx context.Context) (types.ManagedObjectReference, error) {
	list, err := s.vs.Finder.ClusterComputeResourceList(ctx, "*")
	if err != nil {
		return types.ManagedObjectReference{}, fmt.Errorf("compute clusters of the datacenter: %w", err)
	}
	if len(list) == 0 {
		return types.ManagedObjectReference{}, errors.New("the datacenter has no compute cluster to report the compatibility check on")
	}
	slices.SortFunc(list, func(a, b *object.ClusterComputeResource) int { return strings.Compare(a.Name(), b.Name()) })
	return list[0].Reference(), nil
}

// admitCompatible checks a create: compatible goes on (the condition
// recorded True); incompatible is refused, the record Failed with the
// condition False naming each unmet requirement. The condition is the
// record's spec's: a request whose record a newer one took records
// nothing (errSuperseded).
func (s *Service) admitCompatible(ctx context.Context, cause *event.Event, key, ns, name, version string, gen generation) error {
	res, err := s.checkCompat(ctx, cause, ns, name, version, events.CompatTriggerCreate, compatCheckID(cause))
	if err != nil {
		return err
	}
	status, reason := events.ConditionTrue, "Compatible"
	if !res.Compatible {
		status, reason = events.ConditionFalse, ReasonIncompatible
	}
	if _, err := s.clusters.Mutate(ctx, key, func(r *clusterRecord) error {
		if r.supersedes(gen) {
			return errSuperseded
		}
		if !r.SetCondition(events.GuestClusterConditionCompatible, status, reason, res.Message, time.Now().UTC()) {
			return record.ErrUnchanged
		}
		return nil
	}); err != nil {
		return err
	}
	if !res.Compatible {
		return bus.Permanent(bus.WithReason(ReasonIncompatible, errors.New(res.Message)))
	}
	return nil
}

// compatibleRecorded says the record holds a passed check of its version
// (condition Compatible=True).
func compatibleRecorded(r *events.GuestClusterRecord) bool {
	for _, c := range r.Conditions {
		if c.Type == events.GuestClusterConditionCompatible {
			return c.Status == events.ConditionTrue
		}
	}
	return false
}

// admitted says the record's spec passed its request's admission: found
// compatible (a new version's check resets the condition to Unknown in the
// compare-and-set that stores it), of a version this podvisor runs, and
// not Failed. Only such a spec is built from by a pass that is not its
// request's own (declareWorkers' follow).
func admitted(r *clusterRecord) bool {
	return r.Phase != events.GuestClusterPhaseFailed && compatibleRecorded(&r.GuestClusterRecord) &&
		slices.Contains(events.GuestClusterVersions, r.Spec.Version)
}

// onCheckRequested answers `podvisor check guestcluster NAME`: the check of
// the guest cluster's recorded version, with the request's id.
func (s *Service) onCheckRequested(ctx context.Context, m *bus.Message, p *events.GuestClusterCheckRequested) error {
	rec, _, err := s.clusters.Get(ctx, events.GuestClusterRecordKey(p.Namespace, p.Name))
	if err != nil {
		return err
	}
	if rec == nil {
		s.log.Info("compatibility check of a guest cluster that does not exist", "guestcluster", p.ObjectKey())
		return nil
	}
	_, err = s.checkCompat(ctx, &m.Event, p.Namespace, p.Name, rec.Spec.Version, events.CompatTriggerRequest, p.ID)
	return err
}

// compatCheckID derives a create's check id from its cause, so a
// redelivery answers with the same id.
func compatCheckID(cause *event.Event) string { return "create-" + cause.ID() }
