package provisioner

import (
	"context"
	"fmt"
	"slices"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/podvisor/podvisor/services/provisioner/templates"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Forking before the network is attached.
//
// A pod VM forked from a template needs its host (the template is the
// host's) and its images (the template's image disks are the pod's), not
// its network: the network only decides where its cards go and what its
// guest configures. So once a pod is placed and its images are ready, and
// its shape has a template ready, the pod VM is forked at once, its cards
// with their cables out and its guest spec waiting for the network
// (guestchannel.PodSpec.NetworkPending): the child's agent creates the
// containers while network-config attaches the pod's networks. When
// pod.network.attached comes, the provisioner moves the cards onto the
// pod's port groups with the pod's MACs and gives the guest the spec with
// the network, in one reconfigure (attachEarlyFork); the agent configures
// the cards and starts the containers. Only then is the VM announced ready
// (pod.vm.ready), and the pod Running once its guest reports the
// containers started, as for any pod VM.
//
// The record says which VM is such a fork: the VMForked condition with
// reason templates.ReasonForkedEarly, saved with the reserved create
// attempt before the fork (a crash after the fork finds the VM by name and
// still attaches its network). A pod whose network then fails has its
// fork destroyed with it (fail), and one whose host refuses its network
// has its fork destroyed before it is placed elsewhere (networkRefused).
// Whenever a fork ahead of the network is not possible, nothing is done
// early: the pod VM is made once the network is attached, as before.

// earlyForkable says whether the pod's VM may be forked now, ahead of its
// network: forking is on, the pod is placed, its images are ready, only
// its network is missing, no VM of it was ever made, and nothing in the
// pod rules a fork out (encryption, the opt-out annotation, init
// containers, which start with their network, never ahead of it).
func (s *Service) earlyForkable(r *events.PodRecord) bool {
	if s.templates == nil || !s.cfg.ForkEarly || r.Phase != events.PodPhaseScheduled || !r.DeletionRequestedAt.IsZero() {
		return false
	}
	if !slices.Equal(missingFacts(r), []string{factNetworks}) || len(r.Networks) == 0 || !neverCreated(r) {
		return false
	}
	return len(r.Pod.Spec.InitContainers) == 0 && !events.PodEphemeralEncryption(&r.Pod) &&
		r.Pod.Annotations[events.AnnotationInstantClone] != "false"
}

// forkEarly forks the pod's VM ahead of its network when its shape has a
// template ready; otherwise it does nothing (the VM is made once the
// network is attached).
func (s *Service) forkEarly(ctx context.Context, r *events.PodRecord) error {
	spec, placement, err := s.vmSpecOf(r, true)
	if err != nil {
		s.log.Info("pod VM not forked ahead of its network", "key", r.Key(), "err", err)
		return nil
	}
	if !s.templates.ReadyFor(spec, placement) {
		return nil
	}
	ctx, span := s.span(ctx, "provisioner.fork_early", r, attribute.String("host", r.Host), attribute.String("vm.name", spec.Name))
	defer span.End()
	// The attempt and the kind of fork are recorded first: that write is
	// the fence (as for a create), and a crash after the fork leaves a
	// record that finds the VM by name and knows it waits for its network.
	now := s.now().UTC()
	r.CreateAttempts = 1
	r.SetCondition(events.PodConditionVMForked, events.ConditionUnknown, templates.ReasonForkedEarly,
		"forking the pod VM from its template before the network is attached", now)
	if err := s.save(ctx, r); err != nil {
		return err
	}
	vm, out := s.templates.Fork(ctx, spec, placement, &r.Pod)
	span.SetAttributes(attribute.String("template", out.Template), attribute.String("reason", out.Reason))
	now = s.now().UTC()
	if !out.Forked {
		if out.Reason == templates.ReasonInstantCloneFailed {
			// A clone that failed after making its child (its power-on
			// failed) leaves a VM of the pod's name with its cables out
			// and its guest waiting for a network nobody would attach:
			// found by name once the network comes, it would be powered
			// on and never run. It goes now; the pod's VM is then made
			// once the network is attached.
			if err := s.removeVMs(ctx, r); err != nil {
				return err
			}
		}
		r.SetCondition(events.PodConditionVMForked, events.ConditionFalse, out.Reason,
			"not forked ahead of the network: "+out.Message, now)
		s.log.Info("pod VM not forked ahead of its network; made once the network is attached", "key", r.Key(), "reason", out.Reason, "message", out.Message)
		return s.save(ctx, r)
	}
	vm.UID, vm.Namespace, vm.Pod = r.UID, r.Namespace, r.Name
	noteVM(r, vm, now)
	r.SetCondition(events.PodConditionVMForked, events.ConditionTrue, templates.ReasonForkedEarly,
		fmt.Sprintf("pod VM %s forked from template %s before the network is attached; its containers start once it is", vm.Name, out.Template), now)
	r.Reason, r.Message = events.ReasonContainerCreating, "pod VM "+vm.Name+" forked; waiting for the network to be attached"
	if err := s.save(ctx, r); err != nil {
		// The VM stays: the retry finds it by name (the attempt and the
		// kind of fork are on the record).
		return err
	}
	s.starts.Add(ctx, 1, metric.WithAttributes(attribute.String("how", "forked"), attribute.String("reason", templates.ReasonForkedEarly)))
	s.log.Info("pod VM forked ahead of its network", "key", r.Key(), "vm", vm.Ref.Value, "template", out.Template)
	return nil
}

// forkedEarly says the record's VM was forked before its network was
// attached and the network is not attached to it yet.
func forkedEarly(r *events.PodRecord) bool {
	c, ok := r.Condition(events.PodConditionVMForked)
	return ok && c.Reason == templates.ReasonForkedEarly
}

// attachEarlyFork attaches the pod's network to its VM when the VM was
// forked before it (forkEarly): the cards moved onto the pod's port groups
// with its MACs and connected, and the guest given the spec with the
// network, in one reconfigure. A VM made otherwise is left alone.
func (s *Service) attachEarlyFork(ctx context.Context, r *events.PodRecord, vm *podvm.VM) error {
	if !forkedEarly(r) || r.VMRef != vm.Ref.Value {
		return nil
	}
	spec, _, err := s.vmSpec(r)
	if err != nil {
		return step(ReasonNetworkFailed, err)
	}
	actx, span := s.span(ctx, "provisioner.attach_network", r, attribute.String("vm", vm.Ref.Value))
	err = s.stepCtx(actx, func(ctx context.Context) error { return s.vms.AttachNetwork(ctx, vm.Ref, spec) })
	span.End()
	if err != nil {
		return step(ReasonNetworkFailed, err)
	}
	// Noted, not saved: saved with pod.vm.ready. A retry before that
	// attaches again, which changes nothing.
	r.SetCondition(events.PodConditionVMForked, events.ConditionTrue, templates.ReasonForked,
		"pod VM "+vm.Name+" forked from its template before the network was attached; network attached since", s.now().UTC())
	return nil
}

// dropEarlyFork destroys the VM forked ahead of the network of a pod that
// must be placed again (its host refused the network): the new host gets a
// VM of its own.
func (s *Service) dropEarlyFork(ctx context.Context, r *events.PodRecord) error {
	if !forkedEarly(r) {
		return nil
	}
	if err := s.removeVMs(ctx, r); err != nil {
		return err
	}
	r.SetCondition(events.PodConditionVMForked, events.ConditionFalse, ReasonNetworkRefused,
		"the VM forked before the network was attached is destroyed: the host refused the network", s.now().UTC())
	return s.save(ctx, r)
}
