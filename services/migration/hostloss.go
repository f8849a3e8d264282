package migration

import (
	"context"
	"errors"
	"fmt"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/migration/vmotion"
	"github.com/podvisor/podvisor/shared/bus"
)

// A lost host cannot be vMotioned from: its pods are evicted (pod.evicted,
// reason HostLost), and the provisioner and scheduler restart them
// elsewhere, as vSphere HA would. Migrations to or from the host that have
// not begun relocating fail. When the host answers again, the VMs of those
// pods that stayed on it are destroyed, since each pod runs on its new
// host by then.

func (s *Service) onHostLost(ctx context.Context, m *bus.Message, p *events.HostLost) error {
	annotateHost(ctx, p.Name)
	if _, err := s.failMigrationsTouching(ctx, p.Name, nil, ReasonHostLost, fmt.Sprintf("host %s stopped responding", p.Name)); err != nil {
		return err
	}
	pods, err := s.store.podsOnHost(ctx, p.Name)
	if err != nil {
		return err
	}
	evicted := 0
	for _, pod := range pods {
		// A pod that completed keeps its phase and its VM where it was,
		// as a finished pod on a lost node does in Kubernetes: placing it
		// again would run its containers again.
		if gone(pod) || pod.Phase == events.PodPhasePending || pod.Phase == events.PodPhaseSucceeded {
			continue
		}
		if err := s.emit(ctx, &m.Event, &events.PodEvicted{
			PodRef: events.PodRef{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID}, Host: p.Name, Reason: ReasonHostLost,
			Message: fmt.Sprintf("host %s stopped responding (%s); the pod restarts on another host", p.Name, p.Reason),
		}, bus.Flow(pod.TraceParent)); err != nil {
			return err
		}
		evicted++
	}
	s.log.Warn("host lost; pods evicted", "host", p.Name, "reason", p.Reason, "pods", evicted)
	return s.evictVMs(ctx, m, p.Name, p.Reason)
}

// failMigrationsTouching ends, with reason and msg, the migrations to or
// from host that have not begun relocating and that match (nil: all). It
// returns the matching migrations still active after it: those relocating,
// and those whose runner was told to stop and has not yet.
func (s *Service) failMigrationsTouching(ctx context.Context, host string, match func(*events.MigrationRecord) (bool, error), reason, msg string) ([]*events.MigrationRecord, error) {
	recs, err := s.store.migrations(ctx)
	if err != nil {
		return nil, err
	}
	var active []*events.MigrationRecord
	defer s.poke()
	for _, r := range recs {
		if !r.Active() || (r.SourceHost != host && r.TargetHost != host) {
			continue
		}
		if match != nil {
			ok, err := match(r)
			if err != nil {
				return nil, err
			}
			if !ok {
				continue
			}
		}
		if r.Started() {
			active = append(active, r)
			continue
		}
		if r.IsVM() {
			if _, err := s.endQueuedVM(ctx, r, reason, msg); err != nil {
				return nil, err
			}
			continue
		}
		s.mu.Lock()
		queued := s.lim.remove(r.ID)
		f := s.flights[r.ID]
		if f != nil && !f.relocating {
			f.cancelled, f.cancelReason, f.cancelMsg = true, reason, msg
		}
		s.mu.Unlock()
		if !queued {
			active = append(active, r)
			continue
		}
		if err := s.finish(ctx, r, events.MigrationPhaseFailed, reason, msg); err != nil {
			return nil, err
		}
	}
	return active, nil
}

// onHostRecovered destroys the pod VMs left on a host that came back: VMs
// whose pod now runs another VM (it was evicted and restarted elsewhere) or
// no longer exists. The pod's current VM is never touched.
func (s *Service) onHostRecovered(ctx context.Context, p *events.HostRecovered) error {
	vms, err := s.vm.VMsOnHost(ctx, p.Name)
	if errors.Is(err, vmotion.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	removed := 0
	var errs []error
	for _, vm := range vms {
		if vm.UID == "" || vm.Namespace == "" || vm.Pod == "" {
			continue // not made by podvisor's provisioner: not ours to judge
		}
		pod, err := s.store.pod(ctx, vm.Namespace, vm.Pod)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !leftover(pod, vm) {
			continue
		}
		if err := s.vm.Destroy(ctx, vm.Ref); err != nil {
			errs = append(errs, fmt.Errorf("remove leftover VM %s: %w", vm.Name, err))
			continue
		}
		removed++
		s.log.Info("leftover pod VM removed from recovered host", "host", p.Name, "vm", vm.Name, "ref", vm.Ref.Value, "pod", events.PodKey(vm.Namespace, vm.Pod))
	}
	if removed > 0 {
		s.log.Warn("host recovered; leftover pod VMs removed", "host", p.Name, "removed", removed)
	}
	return errors.Join(errs...)
}

// leftover says whether a pod VM is one the pod left behind: its pod is
// gone or replaced, or the pod's record names another VM (the provisioner
// names the VM before creating it, so a VM being created is never taken
// for a leftover).
func leftover(pod *events.PodRecord, vm vmotion.VM) bool {
	switch {
	case pod == nil, pod.UID != vm.UID:
		return true
	case pod.VMName == vm.Name || pod.VMRef == vm.Ref.Value:
		return false
	case pod.VMName == "" && pod.VMRef == "":
		return false // not provisioned yet: cannot tell, leave it
	}
	return true
}
