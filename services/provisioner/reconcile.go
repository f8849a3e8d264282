package provisioner

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/podvisor/podvisor/agent/guestchannel"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/record"
	"github.com/vmware/govmomi/vim25/types"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
)

// ready says whether the pod has everything its VM needs: a host, a
// prepared image per container, and every network attached on that host.
func ready(r *events.PodRecord) bool {
	return len(r.Pod.Spec.Containers) > 0 && len(missingFacts(r)) == 0
}

// Facts a pod VM needs, by what missingFacts calls them.
const (
	factHost     = "host"     // pod.scheduled (scheduler)
	factImages   = "images"   // pod.images.ready (image cache)
	factNetworks = "networks" // pod.network.attached on the pod's host (network-config)
)

// missingFacts names the facts the record lacks before a VM can be made.
func missingFacts(r *events.PodRecord) []string {
	var out []string
	if r.Host == "" {
		out = append(out, factHost)
	}
	if len(r.Images) != len(r.Pod.Spec.InitContainers)+len(r.Pod.Spec.Containers) || !imagesOnHost(r) {
		out = append(out, factImages)
	}
	if len(r.Networks) == 0 || len(r.Attachments) != len(r.Networks) || (r.Host != "" && r.NetworkHost != r.Host) {
		out = append(out, factNetworks)
	}
	return out
}

// imagesOnHost says whether every image disk chain of the record is on a
// datastore its host mounts (r.Datastores, from pod.scheduled; true while
// that is unknown). Chains prepared for an earlier placement, on another
// cluster's datastore, are not the images of this one: the image cache
// prepares them again on the new host's datastores (its pod.images.ready
// follows the new pod.scheduled), and until then the pod waits for them
// rather than failing on a create the host cannot do.
func imagesOnHost(r *events.PodRecord) bool {
	if len(r.Datastores) == 0 {
		return true
	}
	for _, img := range r.Images {
		if img.Datastore != "" && !slices.Contains(r.Datastores, img.Datastore) {
			return false
		}
	}
	return true
}

// reconcileOutcome reconciles and classifies the failure (the one error
// model, package bus): a vSphere step's fault that can pass is retried with
// backoff, any other step failure is Permanent; either way the route's
// failure hook (gaveUp) fails the pod when the step is given up. Anything
// that is not a vSphere step (the bus, the KV store) is podvisor's own
// trouble: retried, and past the last delivery dead-lettered, while drift
// repair drives the pod on later.
func (s *Service) reconcileOutcome(ctx context.Context, r *events.PodRecord, reserved bool) error {
	err := s.reconcile(ctx, r, reserved)
	switch {
	case err == nil || errors.Is(err, errConflict):
		return err
	case ctx.Err() != nil:
		// Cut off (shutting down): says nothing about the pod.
		return fmt.Errorf("%w (interrupted: %v)", ctx.Err(), err)
	case bus.ReasonOf(err, "") == "" || bus.CodeOf(err) != bus.CodeRetry || podvm.IsTransient(err):
		s.log.Info("pod not converged yet", "key", r.Key(), "err", err)
		return err
	}
	return bus.Permanent(err)
}

// gaveUp is the failure hook of the pod routes: a vSphere step that failed
// for good, or kept failing until the deliveries ran out, fails the pod
// (pod.failed names the step and the fault, the owners release what they
// hold); a delete that cannot finish is recorded as stalled, for drift
// repair to retry. Errors without a step's reason fail no pod.
func (s *Service) gaveUp(ctx context.Context, m *bus.Message, podKey string, err error) error {
	if bus.ReasonOf(err, "") == "" {
		return bus.ErrNoFailureEvent
	}
	ns, name, kerr := events.SplitPodKey(podKey)
	if kerr != nil {
		return bus.ErrNoFailureEvent
	}
	r, rerr := s.recs.get(ctx, events.PodRecordKey(ns, name))
	switch {
	case rerr != nil:
		return rerr
	case r == nil:
		return bus.ErrNoFailureEvent // gone meanwhile: nobody to tell
	case m.Stream == events.StreamPods && r.RequestedAfter(m.StreamSeq):
		// Stored before this pod's request: about an earlier pod of the
		// name, whose failure says nothing of this one.
		return bus.ErrNoFailureEvent
	case !r.DeletionRequestedAt.IsZero():
		return s.deleteStalled(ctx, r, err)
	case r.Phase == events.PodPhaseFailed:
		return nil // told already
	}
	reason, msg := failureOf(m, err)
	return s.fail(ctx, r, reason, msg)
}

// reconcile converges vCenter towards the record. reserved says the record
// was saved with its first create attempt reserved (see beginProvisioning).
func (s *Service) reconcile(ctx context.Context, r *events.PodRecord, reserved bool) error {
	switch {
	case !r.DeletionRequestedAt.IsZero():
		return s.teardown(ctx, r)
	case s.earlyForkable(r):
		return s.forkEarly(ctx, r)
	case !provisionable(r):
		return nil
	}
	return s.provision(ctx, r, reserved)
}

// provisionable reports whether the record asks for its VM to be made and
// run: not being deleted, not failed, without a VM already on (Starting,
// Running, Migrating, Succeeded), and with everything the VM needs.
func provisionable(r *events.PodRecord) bool {
	if r.Phase == events.PodPhaseFailed || events.PodHasVM(r.Phase) {
		return false
	}
	return r.DeletionRequestedAt.IsZero() && ready(r)
}

// provision creates the pod VM if it does not exist, powers it on and
// announces pod.vm.ready; the pod is then Starting until its guest reports
// every container started. Every step is safe to repeat.
func (s *Service) provision(ctx context.Context, r *events.PodRecord, reserved bool) error {
	ctx, span := s.span(ctx, "provisioner.provision", r, attribute.String("host", r.Host), attribute.String("vm.name", r.VMName))
	defer span.End()
	err := s.provisionSteps(ctx, r, reserved)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	return err
}

func (s *Service) provisionSteps(ctx context.Context, r *events.PodRecord, reserved bool) error {
	if r.Phase != events.PodPhaseProvisioning {
		reserved = beginProvisioning(r)
		if err := s.save(ctx, r); err != nil {
			return err
		}
	}
	vm, err := s.ensureVM(ctx, r, reserved)
	if err != nil {
		return err
	}
	if err := s.attachEarlyFork(ctx, r, vm); err != nil {
		return err
	}
	// A VM already on (an instant clone comes up running; a retry may
	// find it on) needs no power-on task, and no fence before one.
	if vm.PowerState != types.VirtualMachinePowerStatePoweredOn {
		if err := s.fence(ctx, r); err != nil {
			return err
		}
		pctx, span := s.span(ctx, "provisioner.power_on", r, attribute.String("vm", vm.Ref.Value))
		err := s.powerOn(pctx, r, vm.Ref)
		span.End()
		if err != nil {
			return step(ReasonPowerOnFailed, err)
		}
	}
	// Announce first, then record: a crash in between re-announces with the
	// same event id (JetStream keeps one), whereas the other order could
	// leave a Starting record whose pod.vm.ready was never sent.
	if err := s.out.Emit(ctx, recordCause(r), &events.PodVMReady{
		PodRef: events.PodRef{Namespace: r.Namespace, Name: r.Name, UID: r.UID}, VM: vm.Ref.Value, Host: r.Host, IP: r.IP,
	}); err != nil {
		return err
	}
	now := s.now().UTC()
	// Powered on is not Running: nothing has said a container started.
	r.Phase = events.PodPhaseStarting
	r.Reason, r.Message = events.ReasonContainerCreating, "pod VM "+r.VMName+" powered on; waiting for its guest to report the containers started"
	r.SetCondition(events.PodConditionVMReady, events.ConditionTrue, "PoweredOn", "pod VM "+r.VMName+" powered on", now)
	// The guest may have reported already (a retry after the power-on).
	if err := s.settle(ctx, r); err != nil {
		return err
	}
	if err := s.save(ctx, r); err != nil {
		return err
	}
	s.log.Info("pod VM ready", "key", r.Key(), "uid", r.UID, "vm", vm.Ref.Value, "host", r.Host, "ip", r.IP, "phase", r.Phase)
	return nil
}

// beginProvisioning moves a ready record to Provisioning (in memory; the
// caller saves it) and, when no VM of the pod can exist yet, records the
// first create attempt in the same write: it then reports true, and the
// create needs no lookup first. A fact that completes a pod's readiness is
// saved together with this, one write instead of two.
func beginProvisioning(r *events.PodRecord) (reserved bool) {
	if r.Phase == events.PodPhaseProvisioning || !provisionable(r) {
		return false
	}
	r.Phase = events.PodPhaseProvisioning
	r.Reason, r.Message = "", ""
	if neverCreated(r) {
		r.CreateAttempts = 1
		return true
	}
	return false
}

// neverCreated reports whether no VM can exist for the record: no create
// was ever submitted for it and it never had a VM.
func neverCreated(r *events.PodRecord) bool {
	_, hadVM := r.Condition(events.PodConditionVMCreated)
	return r.CreateAttempts == 0 && r.VMRef == "" && r.CreateTask == "" && !hadVM
}

// ensureVM returns the pod's VM, creating it only when none exists: the
// recorded reference, then the recorded create task, then a lookup by name
// are all tried first, so neither a redelivery nor a crash between
// CreateVM and the ack can produce a second VM. reserved says the caller
// has just saved the record's first create attempt: no VM of the pod can
// exist, and nothing needs looking up.
func (s *Service) ensureVM(ctx context.Context, r *events.PodRecord, reserved bool) (*podvm.VM, error) {
	// A pod that had a VM, or a recorded create task, may have left files
	// behind (a VM unregistered meanwhile, a simulator restarted over kept
	// datastores); a first creation has none. An attempt without a recorded
	// task is not reason enough: its create may still be running, and its
	// files are not leftovers.
	removeLeftovers := false
	if !reserved {
		vm, err := s.existingVM(ctx, r)
		if err != nil || vm != nil {
			if vm != nil && r.VMRef != vm.Ref.Value {
				if err := s.recordVM(ctx, r, vm); err != nil {
					return nil, err
				}
			}
			return vm, err
		}
		_, hadVM := r.Condition(events.PodConditionVMCreated)
		removeLeftovers = hadVM || r.CreateTask != ""
		r.CreateAttempts++
		if err := s.prepareEncryption(r); err != nil {
			return nil, err
		}
		if err := s.save(ctx, r); err != nil {
			return nil, err
		}
	} else if events.PodEphemeralEncryption(&r.Pod) && r.Encryption == nil {
		// The first create of an encrypted pod: its nonce and sealed key
		// are saved before the VM that carries the nonce exists.
		if err := s.prepareEncryption(r); err != nil {
			return nil, err
		}
		if err := s.save(ctx, r); err != nil {
			return nil, err
		}
	}

	spec, placement, err := s.vmSpec(r)
	if err != nil {
		return nil, step(ReasonCreateVMFailed, bus.Permanent(err))
	}
	placement.RemoveLeftovers = removeLeftovers
	cctx, span := s.span(ctx, "provisioner.create_vm", r, attribute.String("vm.name", spec.Name), attribute.String("host", placement.Host), attribute.String("folder", placement.Folder))
	defer span.End()
	// No fence read here: on every path the record was just written by
	// compare-and-set (the attempt reserved with the fact that completed
	// the pod, or counted above), and that write is the fence. A replica
	// that took the pod over since would have had to write it after, which
	// the read could not rule out either; the name keeps the VM unique.
	if vm, err := s.forkVM(cctx, r, spec, placement); vm != nil || err != nil {
		return vm, err
	}
	var task types.ManagedObjectReference
	err = s.stepCtx(cctx, func(ctx context.Context) error {
		var err error
		task, err = s.vms.StartCreate(ctx, spec, placement)
		return err
	})
	if err != nil {
		span.RecordError(err)
		if podvm.IsDuplicate(err) {
			return s.adopt(ctx, r, err)
		}
		return nil, step(ReasonCreateVMFailed, err)
	}
	if s.hooks.afterCreateSubmit != nil {
		if err := s.hooks.afterCreateSubmit(ctx, r); err != nil {
			return nil, err
		}
	}
	r.CreateTask = task.Value
	if err := s.save(ctx, r); err != nil {
		// The task runs anyway; the retry finds its VM by name.
		return nil, err
	}
	if s.hooks.afterCreateTask != nil {
		s.hooks.afterCreateTask(ctx, r)
	}
	ref, err := s.waitCreate(cctx, task)
	if err != nil {
		span.RecordError(err)
		if podvm.IsDuplicate(err) {
			s.vms.CreateFailed(spec, placement)
			return s.adopt(ctx, r, err)
		}
		if s.vms.CreateFailed(spec, placement) && !podvm.IsTransient(err) && r.CreateAttempts <= 1 {
			// The create used cached lookups (host, pool, port group) that
			// may have gone stale: forget its task and try once more with
			// fresh ones before calling the failure permanent.
			r.CreateTask = ""
			if serr := s.save(ctx, r); serr != nil {
				return nil, serr
			}
			return nil, step(ReasonCreateVMFailed, bus.RetryAfter(err, 0))
		}
		return nil, step(ReasonCreateVMFailed, err)
	}
	s.vms.CreateDone(spec.Name)
	// The task's result is the VM, made from our spec where we placed it:
	// nothing to read back. (Were it gone already, powering it on fails and
	// the retry starts from the recorded reference.)
	vm := &podvm.VM{Ref: ref, Name: spec.Name, Host: placement.Host, PowerState: types.VirtualMachinePowerStatePoweredOff,
		UID: r.UID, Namespace: r.Namespace, Pod: r.Name}
	// Noted, not saved: the caller saves it with the power-on, one write
	// instead of two. Until then the record holds the create task, which
	// leads a retry to this VM.
	noteVM(r, vm, s.now().UTC())
	return vm, nil
}

// existingVM finds the pod's VM by what the record knows.
func (s *Service) existingVM(ctx context.Context, r *events.PodRecord) (*podvm.VM, error) {
	if r.VMRef != "" {
		vm, err := s.recordedVM(ctx, r)
		if err != nil || vm != nil {
			return vm, err
		}
	}
	if r.CreateTask != "" {
		ref, err := s.waitCreate(ctx, taskRef(r.CreateTask))
		switch {
		case err == nil:
			vm, err := s.getVM(ctx, ref)
			if err != nil || vm != nil {
				return vm, err
			}
		case errors.Is(err, podvm.ErrTaskGone) || podvm.IsDuplicate(err):
			// vCenter forgot the task, or it lost to another create of
			// this pod's VM: the name lookup below decides.
		default:
			// The recorded attempt failed; forget it so the next attempt
			// starts clean, and report its fault.
			r.CreateTask = ""
			if serr := s.save(ctx, r); serr != nil {
				return nil, serr
			}
			return nil, step(ReasonCreateVMFailed, &createTaskFailed{err: err})
		}
	}
	var vm *podvm.VM
	err := s.stepCtx(ctx, func(ctx context.Context) error {
		var err error
		vm, err = s.vms.Find(ctx, r.VMName)
		return err
	})
	return vm, step(ReasonCreateVMFailed, err)
}

// adopt handles a create refused because the pod's VM name is taken:
// another create of this pod won (a second replica holding the pod, or an
// attempt whose task reference was never saved). The VM of that name is
// the pod's when it carries the pod's uid, and is adopted; one still being
// registered is retried (not a permanent failure), and one carrying
// another uid is a conflict a person must resolve.
func (s *Service) adopt(ctx context.Context, r *events.PodRecord, dup error) (*podvm.VM, error) {
	var vm *podvm.VM
	err := s.stepCtx(ctx, func(ctx context.Context) error {
		var err error
		vm, err = s.vms.Find(ctx, r.VMName)
		return err
	})
	switch {
	case err != nil:
		return nil, step(ReasonCreateVMFailed, err)
	case vm == nil:
		return nil, step(ReasonCreateVMFailed, bus.RetryAfter(fmt.Errorf("pod VM %s: another create of it is in flight; adopting its VM once registered: %w", r.VMName, dup), 0))
	case vm.UID != "" && vm.UID != r.UID:
		return nil, step(ReasonCreateVMFailed, bus.Permanent(fmt.Errorf("pod VM name %s is taken by a VM of pod uid %s (%s)", r.VMName, vm.UID, vm.Ref.Value)))
	}
	s.log.Info("adopted the pod VM another create made", "key", r.Key(), "vm", vm.Ref.Value, "host", vm.Host)
	return vm, s.recordVM(ctx, r, vm)
}

// fence checks, right before a vSphere task, that the record is still the
// revision this handler last read or wrote. Another replica that took the
// pod over has written it since (every attempt is recorded first), and
// this handler then backs off rather than act on vCenter behind its back:
// the record's revision is the fencing token, checked by the store, not
// by clocks.
func (s *Service) fence(ctx context.Context, r *events.PodRecord) error {
	cur, err := s.recs.get(ctx, events.PodRecordKey(r.Namespace, r.Name))
	if err != nil {
		return err
	}
	if cur == nil || cur.ResourceVersion != r.ResourceVersion {
		return fmt.Errorf("pod %s: record moved on before a vSphere task: %w", r.Key(), errConflict)
	}
	return nil
}

func (s *Service) recordVM(ctx context.Context, r *events.PodRecord, vm *podvm.VM) error {
	noteVM(r, vm, s.now().UTC())
	return s.save(ctx, r)
}

// noteVM puts the pod's VM on the record (in memory; the caller saves).
func noteVM(r *events.PodRecord, vm *podvm.VM, now time.Time) {
	if r.VMRef != vm.Ref.Value {
		forgetGuest(r, now) // a new VM: its guest has said nothing yet
	}
	r.VMRef, r.CreateTask = vm.Ref.Value, ""
	r.SetCondition(events.PodConditionVMCreated, events.ConditionTrue, "Created", fmt.Sprintf("pod VM %s (%s) on %s", vm.Name, vm.Ref.Value, vm.Host), now)
}

// vmSpec derives the pod VM and its placement from the record.
func (s *Service) vmSpec(r *events.PodRecord) (podvm.Spec, podvm.Placement, error) {
	return s.vmSpecOf(r, false)
}

// vmSpecOf derives the pod VM and its placement from the record; early,
// the VM of a pod whose network is not attached yet (forkEarly): a card
// per network without a port group, and a guest spec that waits for the
// network (NetworkPending).
func (s *Service) vmSpecOf(r *events.PodRecord, early bool) (podvm.Spec, podvm.Placement, error) {
	// The VM's files and its ephemeral disk go beside the pod's image
	// chain when the host mounts that datastore: the image cache puts
	// chains on the most widely mounted datastore, so the VM can later move
	// to any host that sees its images, across clusters too. Otherwise they
	// go where the scheduler said.
	ds := s.cfg.Datastore
	if ds == "" && len(r.Images) > 0 && slices.Contains(r.Datastores, r.Images[0].Datastore) {
		ds = r.Images[0].Datastore
	}
	if ds == "" && len(r.Datastores) > 0 {
		ds = r.Datastores[0]
	}
	if ds == "" && len(r.Images) > 0 {
		ds = r.Images[0].Datastore
	}
	if err := s.bootDiskReachable(r); err != nil {
		return podvm.Spec{}, podvm.Placement{}, err
	}
	l, err := layout(r, ds)
	if err != nil {
		return podvm.Spec{}, podvm.Placement{}, err
	}
	l.spec.NetworkPending = early
	if s.cfg.ChannelURI != "" {
		l.spec.ChannelToken = guestchannel.ChannelToken(s.channelKey, r.UID, r.Namespace, r.Name)
	}
	info, err := guestinfo(r, l)
	if err != nil {
		return podvm.Spec{}, podvm.Placement{}, err
	}
	if s.cfg.ChannelURI != "" {
		info[guestchannel.GuestinfoChannel] = podvm.ChannelDevice
	}
	spec := podvm.Spec{
		Name:             r.VMName,
		VCPUs:            r.Size.VCPUs,
		MemoryMiB:        r.Size.MemoryMiB,
		GuestID:          s.cfg.GuestID,
		BootDisk:         s.cfg.BootDisk,
		EphemeralDiskMiB: s.cfg.EphemeralDiskMiB,
		ImageDisks:       l.imageDisks,
		ExtraConfig:      info,
		ChannelURI:       s.cfg.ChannelURI,
	}
	for _, a := range r.Attachments {
		spec.NICs = append(spec.NICs, podvm.NIC{Network: a.Network, PortGroup: a.PortGroup, MAC: a.MAC})
	}
	if early {
		spec.NICs = nil
		for _, n := range r.Networks {
			spec.NICs = append(spec.NICs, podvm.NIC{Network: n})
		}
	}
	return spec, podvm.Placement{
		Host:      r.Host,
		Pool:      r.ResourcePool,
		Folder:    s.cfg.vmFolder(r.Namespace, r.UID),
		Datastore: ds,
	}, nil
}

// bootDiskReachable refuses a placement whose host does not mount the
// datastore of the boot disk (the scheduler's pod.scheduled lists every
// datastore of the host): the create would fail there with a fault about a
// file, and this says which host and datastore instead. The scheduler does
// not know of the boot disk, so every host that runs pod VMs must mount it.
func (s *Service) bootDiskReachable(r *events.PodRecord) error {
	if s.cfg.BootDisk == "" || len(r.Datastores) == 0 {
		return nil
	}
	dp, err := podvm.ParseBootDisk(s.cfg.BootDisk) // checked at start
	if err != nil || slices.Contains(r.Datastores, dp.Datastore) {
		return err
	}
	return fmt.Errorf("host %s does not mount datastore %s, which holds the boot disk %s (%s): every host that runs pod VMs must",
		r.Host, dp.Datastore, s.cfg.BootDisk, EnvBootDisk)
}

// stepCtx runs one vSphere step under StepTimeout.
func (s *Service) stepCtx(ctx context.Context, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.StepTimeout)
	defer cancel()
	return f(ctx)
}

// recordedVM is the VM the record's reference names, nil when there is
// none or it is not the pod's (podsVM).
func (s *Service) recordedVM(ctx context.Context, r *events.PodRecord) (*podvm.VM, error) {
	return s.podsVM(ctx, r, r.VMRef, r.VMName)
}

// podsVM is the VM of reference ref when it is r's VM named name, nil
// otherwise (events.IsPodVM): acting on another pod's VM that a reused
// reference names would power it off or destroy it.
func (s *Service) podsVM(ctx context.Context, r *events.PodRecord, ref, name string) (*podvm.VM, error) {
	vm, err := s.getVM(ctx, vmRef(ref))
	if err != nil || vm == nil {
		return nil, err
	}
	if !events.IsPodVM(vm.UID, vm.Name, r.UID, name) {
		s.log.Warn("a VM reference of the pod names another VM now", "key", r.Key(), "vm", ref, "name", vm.Name, "vm_uid", vm.UID)
		return nil, nil
	}
	return vm, nil
}

func (s *Service) getVM(ctx context.Context, ref types.ManagedObjectReference) (*podvm.VM, error) {
	var vm *podvm.VM
	err := s.stepCtx(ctx, func(ctx context.Context) error {
		var err error
		vm, err = s.vms.Get(ctx, ref)
		return err
	})
	return vm, err
}

func (s *Service) waitCreate(ctx context.Context, task types.ManagedObjectReference) (types.ManagedObjectReference, error) {
	var ref types.ManagedObjectReference
	err := s.stepCtx(ctx, func(ctx context.Context) error {
		var err error
		ref, err = s.vms.WaitCreate(ctx, task)
		return err
	})
	return ref, err
}

func vmRef(v string) types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VirtualMachine", Value: v}
}

func taskRef(v string) types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "Task", Value: v}
}

// failed handles pod.images.failed and pod.network.failed: the pod cannot
// run as requested.
func (h handling) failed(ctx context.Context, ns, name, uid, reason, message, host string) error {
	r, err := h.s.recs.get(ctx, events.PodRecordKey(ns, name))
	if err != nil || r == nil || r.UID != uid {
		return err
	}
	if host != "" && r.Host != "" && host != r.Host {
		return nil // about an earlier placement
	}
	if events.PodHasVM(r.Phase) || r.Phase == events.PodPhaseFailed || !r.DeletionRequestedAt.IsZero() {
		return nil
	}
	return h.s.fail(ctx, r, reason, message)
}

// fail removes whatever VM the pod has, announces pod.failed so that the
// owners release what they hold, and records the failure. Like provision,
// it announces before it records so that a crash re-announces (same id).
func (s *Service) fail(ctx context.Context, r *events.PodRecord, reason, message string) error {
	ctx, span := s.span(ctx, "provisioner.fail", r, attribute.String("reason", reason))
	defer span.End()
	if err := s.removeVMs(ctx, r); err != nil {
		// The failure is still announced; drift repair removes the VM
		// (found by name: a Failed record without a VM reference owns no
		// VM) once vCenter lets it.
		s.log.Warn("could not remove the VM of a failed pod", "key", r.Key(), "err", err)
		r.VMRef = ""
		loseGuest(r, s.now().UTC())
	}
	if err := s.out.Emit(ctx, recordCause(r), &events.PodFailed{
		PodRef: events.PodRef{Namespace: r.Namespace, Name: r.Name, UID: r.UID}, Host: r.Host, Reason: reason, Message: message,
	}); err != nil {
		return err
	}
	r.Phase, r.Reason, r.Message = events.PodPhaseFailed, reason, message
	r.CreateTask = ""
	if r.IP != "" || len(r.Attachments) > 0 {
		// pod.failed releases every address of the pod (network-config),
		// and another pod may hold one next: the status shows none.
		r.NetworkHost, r.Attachments, r.IP = "", nil, ""
		if _, ok := r.Condition(events.PodConditionNetworkAttached); ok {
			r.SetCondition(events.PodConditionNetworkAttached, events.ConditionFalse, reason, "addresses released: the pod failed", s.now().UTC())
		}
	}
	if err := s.save(ctx, r); err != nil {
		return err
	}
	s.log.Warn("pod failed", "key", r.Key(), "uid", r.UID, "reason", reason, "message", message)
	return nil
}

// removeVMs destroys the pod's current VM, found by reference, create task
// or name, and clears them from the record (in memory; the caller saves).
func (s *Service) removeVMs(ctx context.Context, r *events.PodRecord) error {
	vm, err := s.existingVM(ctx, r)
	if errors.As(err, new(*createTaskFailed)) {
		// The recorded create produced no VM; the task is now forgotten,
		// so this second look goes by name.
		vm, err = s.existingVM(ctx, r)
	}
	if err != nil {
		return err
	}
	if vm != nil {
		ctx, span := s.span(ctx, "provisioner.destroy_vm", r, attribute.String("vm", vm.Ref.Value), attribute.String("host", vm.Host))
		defer span.End()
		if err := s.stepCtx(ctx, func(ctx context.Context) error { return s.vms.Destroy(ctx, vm.Ref) }); err != nil {
			span.RecordError(err)
			return step(ReasonDeleteFailed, fmt.Errorf("destroy pod VM %s (%s): %w", vm.Name, vm.Ref.Value, err))
		}
	}
	r.VMRef, r.CreateTask = "", ""
	if _, ok := r.Condition(events.PodConditionVMCreated); ok {
		r.SetCondition(events.PodConditionVMCreated, events.ConditionFalse, "Destroyed", "pod VM removed", s.now().UTC())
	}
	if _, ok := r.Condition(events.PodConditionVMReady); ok {
		r.SetCondition(events.PodConditionVMReady, events.ConditionFalse, "Destroyed", "pod VM removed", s.now().UTC())
	}
	loseGuest(r, s.now().UTC())
	return nil
}

// forgetGuest drops what the record knows from the guest of a VM that is
// gone or replaced: the next VM's guest starts from nothing. The last
// report is kept aside (GuestBefore) until the next one, which carries its
// containers' restarts if it is another boot's. The conditions the guest's
// reports set say False until the next guest reports: no container of the
// pod runs meanwhile (and init containers run again in a new VM).
func forgetGuest(r *events.PodRecord, now time.Time) {
	forgetGuestOf(r, now, false)
}

// loseGuest is forgetGuest for a VM that is gone (removed, lost, or left on
// an unreachable host): its boot's late reports are not folded.
func loseGuest(r *events.PodRecord, now time.Time) {
	forgetGuestOf(r, now, true)
}

func forgetGuestOf(r *events.PodRecord, now time.Time, gone bool) {
	if r.Guest != nil {
		r.GuestBefore = &events.GuestBefore{Report: *r.Guest, InitContainerStatuses: r.InitContainerStatuses, ContainerStatuses: r.ContainerStatuses}
	}
	if gone && r.GuestBefore != nil {
		r.GuestBefore.Gone = true
	}
	r.Guest, r.InitContainerStatuses, r.ContainerStatuses, r.GuestRepairs = nil, nil, nil, 0
	const why = "the pod VM's guest has not reported its containers yet"
	for _, t := range []string{events.PodConditionContainersReady, events.PodConditionReady} {
		if c, ok := r.Condition(t); ok && c.Status == events.ConditionTrue {
			r.SetCondition(t, events.ConditionFalse, ReasonContainersNotReady, why, now)
		}
	}
	if c, ok := r.Condition(events.PodConditionInitialized); ok && c.Status == events.ConditionTrue && len(r.Pod.Spec.InitContainers) > 0 {
		r.SetCondition(events.PodConditionInitialized, events.ConditionFalse, ReasonContainersNotInitialized, why, now)
	}
}

// deleteRequested handles pod.delete.requested. It applies only to a pod
// requested before it (PodRecord.RequestedAfter): the delete of a name is the delete
// of the pod that name had when it was asked for, as a uid precondition
// would say had the client read one.
func (h handling) deleteRequested(ctx context.Context, p *events.PodDeleteRequested) error {
	ns := p.Namespace
	if ns == "" {
		ns = events.DefaultNamespace
	}
	r, err := h.s.recs.get(ctx, events.PodRecordKey(ns, p.Name))
	if err != nil {
		return err
	}
	if r == nil || r.RequestedAfter(h.seq) {
		return h.nothingToDelete(ctx, ns, p, r)
	}
	return h.deletePod(ctx, p, r)
}

// deletePod starts (or goes on with) the delete of r, the pod p is about.
func (h handling) deletePod(ctx context.Context, p *events.PodDeleteRequested, r *events.PodRecord) error {
	s := h.s
	if p.UID != "" && p.UID != r.UID {
		return s.reject(ctx, h.ev, r.Namespace, p.Name, p.UID, events.ReasonUIDMismatch,
			fmt.Sprintf("pod %s has uid %s, not %s (it was re-created); nothing deleted", r.Key(), r.UID, p.UID), "")
	}
	if r.DeletionRequestedAt.IsZero() {
		r.DeletionRequestedAt = s.now().UTC()
		r.Phase, r.Reason, r.Message = events.PodPhaseTerminating, "", ""
		if err := s.save(ctx, r); err != nil {
			return err
		}
	}
	return s.reconcileOutcome(ctx, r, false)
}

// nothingToDelete handles a delete that finds no pod it is about: none of
// the name (r nil), or one requested after it (r).
//
// Delivered again, it may have been done meanwhile: it waited for the
// containers to stop, and the guest's report (or drift repair) finished
// the delete, removing the record after this request was stored. It is
// then acknowledged and does nothing more.
//
// With no record, it may have overtaken its request: the keyed queue
// orders a name's events within one process only, and another replica may
// still be admitting a request stored before this delete. Rejecting it
// then would lose it, so while anything stored before it is unsettled it
// comes back after overtakenWait, up to overtakenDeliveries. Otherwise it
// is rejected with NotFound.
func (h handling) nothingToDelete(ctx context.Context, ns string, p *events.PodDeleteRequested, r *events.PodRecord) error {
	s := h.s
	key := events.PodKey(ns, p.Name)
	if h.delivery > 1 {
		// Without a record, the key's delete marker tells (one read);
		// with a pod requested after this delete in it, the marker is
		// gone, and the pod.deleted stored after this delete tells (a walk
		// of that shared subject: a delete and a new request of the name
		// within one delete's wait are rare).
		done, err := s.recordRemovedSince(ctx, events.PodRecordKey(ns, p.Name), h.stored)
		if err == nil && !done && r != nil {
			var d *jetstream.RawStreamMsg
			d, err = bus.StoredAfter[events.PodDeleted](ctx, s.bus.JetStream(), key, h.seq, nil)
			done = d != nil
		}
		if err != nil || done {
			return err
		}
	}
	if r == nil && h.delivery < s.overtakenDeliveries() {
		behind, err := h.storedBeforeUnsettled(ctx)
		if err != nil {
			return err
		}
		if behind {
			return bus.InProgress(fmt.Errorf("pod %s has no record, and an event stored before this delete is still being handled (maybe its request, on another replica): looking again", key), overtakenWait)
		}
		// Everything stored before this delete is settled, and a request
		// makes its record before it is acknowledged: one that finished
		// after the read above has its record now.
		if r, err = s.recs.get(ctx, events.PodRecordKey(ns, p.Name)); err != nil {
			return err
		}
		if r != nil && !r.RequestedAfter(h.seq) {
			return h.deletePod(ctx, p, r)
		}
	}
	if r == nil {
		return s.reject(ctx, h.ev, ns, p.Name, p.UID, events.ReasonNotFound, fmt.Sprintf("pod %s does not exist", key), "")
	}
	// Stored before the request of the pod that bears the name now: about
	// an earlier pod, gone since.
	h.log.Info("delete stored before the request of the pod named so now; it was about an earlier pod: nothing deleted",
		"uid", r.UID, "request", r.RequestID, "delete_seq", h.seq)
	return s.reject(ctx, h.ev, ns, p.Name, p.UID, events.ReasonNotFound,
		fmt.Sprintf("pod %s was requested again (uid %s) after this delete, which was about an earlier pod of that name: nothing deleted", r.Key(), r.UID), "")
}

// recordRemovedSince reports whether the record key was removed after t:
// the key's last message in the bucket's stream is a delete marker stored
// since (KV reads hide markers; the stream keeps the last one of a key).
// One read of one subject, asked only by a delete delivered again that
// finds no record. The marker's time and t are both the server's store
// times.
func (s *Service) recordRemovedSince(ctx context.Context, key string, t time.Time) (bool, error) {
	bucket := s.recs.kv.Bucket()
	st, err := s.bus.JetStream().Stream(ctx, "KV_"+bucket)
	if err != nil {
		return false, fmt.Errorf("pod records' stream: %w", err)
	}
	m, err := st.GetLastMsgForSubject(ctx, "$KV."+bucket+"."+key)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("last message of pod record %s: %w", key, err)
	}
	return record.IsRemoval(m.Header) && m.Time.After(t), nil
}

// overtakenWait is how long a delete that may have overtaken its request
// waits before it looks again (nothingToDelete): an admission takes
// milliseconds, unless its replica is busy.
const overtakenWait = time.Second

// overtakenNotFoundDeliveries is the delivery of a delete from which a
// pod without a record is taken for one that does not exist, whatever is
// still unsettled before it: with overtakenWait, a name never requested is
// refused within about 3 s however busy the stream.
const overtakenNotFoundDeliveries = 4

// overtakenDeliveries is overtakenNotFoundDeliveries, or the last delivery
// when MaxAttempts allows fewer: that one must answer, not wait.
func (s *Service) overtakenDeliveries() uint64 {
	return uint64(min(overtakenNotFoundDeliveries, s.cfg.MaxAttempts))
}

// storedBeforeUnsettled reports whether the provisioner's durable on the
// pods' stream has not yet settled everything stored before this delivery:
// its ack floor (every sequence up to it acknowledged or given up) is below
// seq-1. It cannot say which event that is, only that a request of the pod
// may be among them; it costs a round trip, asked only by a delete that
// finds no record. Handlers run outside a consumer (no durable) have
// nothing unsettled.
func (h handling) storedBeforeUnsettled(ctx context.Context) (bool, error) {
	if h.seq < 2 {
		return false, nil
	}
	durable := bus.ConsumerConfig{Service: Name, Stream: events.StreamPods}.Durable()
	c, err := h.s.bus.JetStream().Consumer(ctx, events.StreamPods, durable)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("ack floor of %s: %w", durable, err)
	}
	return c.CachedInfo().AckFloor.Stream+1 < h.seq, nil
}

// teardown removes the pod's VMs, announces pod.deleted with what the owners
// must release, and removes the record. A delete counts only when the VM is
// confirmed gone (Destroy checks).
func (s *Service) teardown(ctx context.Context, r *events.PodRecord) error {
	ctx, span := s.span(ctx, "provisioner.delete", r)
	defer span.End()
	if r.Phase != events.PodPhaseTerminating {
		r.Phase = events.PodPhaseTerminating
	}
	// The containers get their grace period: the VM stays on until the
	// guest reports them stopped, or the bound passes (stopWait).
	if wait := s.stopWait(r); wait > 0 {
		// Not a failure: the guest is stopping them, and its report
		// finishes the delete. The delete request comes back at the
		// bound, the timer no process has to keep.
		return bus.InProgress(awaitingStop(r, wait), wait)
	}
	if err := s.removeVMs(ctx, r); err != nil {
		return err
	}
	for _, st := range r.StaleVMs {
		// Best effort: a stale VM on a host that is still unreachable is
		// an orphan once the record is gone, and drift repair removes it.
		vm, err := s.podsVM(ctx, r, st.Ref, st.Name)
		if err == nil && vm != nil {
			err = s.stepCtx(ctx, func(ctx context.Context) error { return s.vms.Destroy(ctx, vm.Ref) })
		}
		if err != nil {
			s.log.Info("stale VM not removed yet; drift repair will", "key", r.Key(), "vm", st.Ref, "err", err)
		}
	}
	if err := s.out.Emit(ctx, recordCause(r), &events.PodDeleted{
		PodRef: events.PodRef{Namespace: r.Namespace, Name: r.Name, UID: r.UID}, Host: r.Host, Images: r.ImageDigests(), IPs: r.IPs(),
	}); err != nil {
		return err
	}
	if err := s.recs.remove(ctx, r); err != nil {
		return err
	}
	s.log.Info("pod deleted", "key", r.Key(), "uid", r.UID, "host", r.Host)
	return nil
}

// deleteStalled records why a delete is not finishing. Deletion is never
// given up: the record stays Terminating and drift repair tries again.
func (s *Service) deleteStalled(ctx context.Context, r *events.PodRecord, cause error) error {
	r.Reason, r.Message = ReasonDeleteFailed, cause.Error()
	if err := s.save(ctx, r); err != nil && !errors.Is(err, errConflict) {
		return err
	}
	s.log.Warn("pod delete stalled; drift repair will retry", "key", r.Key(), "err", cause)
	return nil
}

// evicted handles pod.evicted: the pod goes back to Pending for a new
// placement. The old VM is removed now if vCenter lets us; otherwise it is
// remembered as stale, and the next VM gets a new name so that two VMs never
// share one.
func (h handling) evicted(ctx context.Context, p *events.PodEvicted) error {
	s := h.s
	r, err := s.recs.get(ctx, events.PodRecordKey(p.Namespace, p.Name))
	if err != nil || r == nil || r.UID != p.UID {
		return err
	}
	if !r.DeletionRequestedAt.IsZero() || r.Phase == events.PodPhaseFailed || r.Phase == events.PodPhaseSucceeded || r.Host != p.Host {
		// Ended (placed again, a completed pod would run its containers
		// again), or not on that host (any more): an eviction folded
		// already (a redelivery, or a late one of an earlier placement)
		// changes nothing, neither the generation nor where the pod was
		// evicted from.
		return nil
	}
	ctx, span := s.span(ctx, "provisioner.evict", r, attribute.String("host", p.Host))
	defer span.End()

	oldName, oldRef := r.VMName, r.VMRef
	rmCtx, cancel := context.WithTimeout(ctx, min(s.cfg.StepTimeout, 30*time.Second))
	rmErr := s.removeVMs(rmCtx, r)
	cancel()
	if rmErr != nil {
		s.log.Warn("evicted pod's VM not removable now; kept as stale", "key", r.Key(), "vm", oldRef, "err", rmErr)
		if oldRef != "" {
			r.StaleVMs = append(r.StaleVMs, events.StaleVM{Ref: oldRef, Name: oldName, Host: p.Host})
		}
		r.VMName = vmName(r.UID, r.Generation+1)
		r.VMRef, r.CreateTask = "", ""
		loseGuest(r, s.now().UTC()) // the pod's next VM starts from nothing, as after a removal
	}
	now := s.now().UTC()
	r.Generation++
	r.Host, r.Cluster, r.ResourcePool, r.Datastores = "", "", "", nil
	r.NetworkHost, r.Attachments, r.IP = "", nil, ""
	r.Phase, r.Reason, r.Message = events.PodPhasePending, p.Reason, fmt.Sprintf("evicted from %s: %s", p.Host, p.Message)
	r.EvictedFrom = p.Host
	r.SetCondition(events.PodConditionScheduled, events.ConditionFalse, p.Reason, "evicted from "+p.Host, now)
	if _, ok := r.Condition(events.PodConditionNetworkAttached); ok {
		r.SetCondition(events.PodConditionNetworkAttached, events.ConditionFalse, p.Reason, "attachments on "+p.Host+" released", now)
	}
	if err := s.save(ctx, r); err != nil {
		return err
	}
	s.log.Info("pod evicted; waiting for a new placement", "key", r.Key(), "from", p.Host, "generation", r.Generation)
	return nil
}
