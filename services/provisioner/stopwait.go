package provisioner

import (
	"errors"
	"fmt"
	"time"

	"github.com/podvisor/podvisor/events"
)

// errAwaitingStop: a delete is waiting for the pod's containers to stop
// before it powers the VM off (see stopWait). Returned with bus.InProgress:
// not a failure, the guest is stopping them.
var errAwaitingStop = errors.New("waiting for the pod's containers to stop before powering its VM off")

// gracePeriod is the pod's terminationGracePeriodSeconds (30 s when unset,
// as in Kubernetes and in the guest spec).
func gracePeriod(r *events.PodRecord) time.Duration {
	return time.Duration(r.GracePeriodSeconds()) * time.Second
}

// stopWait says how much longer the delete of r must wait before it powers
// the pod's VM off; 0 means now. Everything it decides on is in the record,
// so a redelivery, a restart or drift repair decides the same:
//   - a VM never powered on (or none) has nothing to stop;
//   - the newest report folded after DeletionRequestedAt shows every
//     container terminated, or the guest's phase is Succeeded/Failed: now;
//   - otherwise until DeletionRequestedAt + grace period + GuestStopSlack,
//     after which a silent, frozen or guest-less VM is powered off anyway.
//
// The host agent tells the guest to stop with the grace period when the
// delete is requested; the agent SIGKILLs at the grace period itself, so
// the containers get their whole grace period either way.
func (s *Service) stopWait(r *events.PodRecord) time.Duration {
	if !s.cfg.AwaitGuestStop || r.DeletionRequestedAt.IsZero() || r.VMRef == "" {
		return 0
	}
	if _, poweredOn := r.Condition(events.PodConditionVMReady); !poweredOn {
		return 0
	}
	if containersStopped(r) {
		return 0
	}
	deadline := r.DeletionRequestedAt.Add(gracePeriod(r) + s.cfg.GuestStopSlack)
	return max(deadline.Sub(s.now()), 0)
}

// containersStopped says whether the guest's reports show the pod's
// containers stopped for the delete: its phase is final, or the newest
// report, folded after the delete was requested, has every container
// terminated and no init container running.
func containersStopped(r *events.PodRecord) bool {
	g := r.Guest
	switch {
	case g == nil:
		return false
	case g.Phase == events.GuestPhaseSucceeded || g.Phase == events.GuestPhaseFailed:
		return true
	case g.At.Before(r.DeletionRequestedAt):
		return false
	}
	for _, cs := range r.InitContainerStatuses {
		if cs.State.Running != nil {
			return false
		}
	}
	by := statusesByName(r.ContainerStatuses)
	for _, c := range r.Pod.Spec.Containers {
		if cs, ok := by[c.Name]; !ok || cs.State.Terminated == nil {
			return false
		}
	}
	return true
}

// awaitingStop is the error a delete returns while stopWait holds it.
func awaitingStop(r *events.PodRecord, wait time.Duration) error {
	return fmt.Errorf("pod %s: %w (at most %s more)", r.Key(), errAwaitingStop, wait.Round(time.Millisecond))
}
