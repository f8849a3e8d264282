package provisioner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/vmware/govmomi/vim25/types"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Kinds of drift repair (the kind label of podvisor_provisioner_repairs_total).
const (
	// RepairOrphanVM: a pod VM without a pod record, or of a Failed pod,
	// was destroyed.
	RepairOrphanVM = "orphan_vm"
	// RepairStaleVM: a VM of an earlier placement of a pod was destroyed.
	RepairStaleVM = "stale_vm"
	// RepairMissingVM: a Running pod had no VM; it was created again.
	RepairMissingVM = "missing_vm"
	// RepairPowerState: a Running pod's VM was off; it was powered on.
	RepairPowerState = "power_state"
	// RepairStuck: a pod left half-way (provisioning or deleting) for longer
	// than a resync interval was driven on.
	RepairStuck = "stuck"
	// RepairAwaitingFacts: a pod Scheduled without every fact its VM
	// needs for longer than a resync interval had its owners asked again
	// (pod.accepted announced again).
	RepairAwaitingFacts = "awaiting_facts"
	// RepairGuestSilent: a powered-on pod VM whose guest never reported
	// past GuestTimeout was reported on the pod (VMReady False, reason
	// GuestSilent), and on the next pass power-cycled.
	RepairGuestSilent = "guest_silent"
	// RepairGuestRecreate: a guest still silent after GuestRepairs power
	// cycles had its VM destroyed and created again.
	RepairGuestRecreate = "guest_recreate"
)

// RepairReport counts what one drift repair did, by repair kind.
type RepairReport map[string]int

// Resync compares every pod record with the pod VMs in vCenter and repairs
// the difference: orphan VMs are destroyed, records of pods with a VM
// (Starting, Running, Succeeded) whose VM is gone are provisioned again,
// their powered-off VMs are powered on, guests that never report are
// reported and repaired, and pods stuck half-way are driven on. Each repair is logged and counted in
// podvisor_provisioner_repairs_total{kind}. Errors on single pods do not
// stop the pass; they are joined into the returned error.
func (s *Service) Resync(ctx context.Context) (RepairReport, error) {
	ctx, span := s.span(ctx, "provisioner.resync", nil)
	defer span.End()

	// The VMs first, then the records one at a time: a record is kept only
	// when it needs a repair, so that a pass over 10,000 pods does not hold
	// every record in full (its pod spec) at once. A VM made after the
	// listing is not taken for missing: that repair reads the record again
	// and looks the VM up before creating one.
	var vms []podvm.VM
	if err := s.stepCtx(ctx, func(ctx context.Context) error {
		var err error
		vms, err = s.vms.List(ctx, s.cfg.FolderRoot)
		return err
	}); err != nil {
		return nil, fmt.Errorf("resync: %w", err)
	}
	vmsOf := map[string][]podvm.VM{} // pod uid → its VMs
	for _, vm := range vms {
		if vm.UID == "" {
			s.log.Warn("VM in the podvisor folder without a pod uid; left alone", "vm", vm.Ref.Value, "name", vm.Name)
			continue
		}
		vmsOf[vm.UID] = append(vmsOf[vm.UID], vm)
	}
	type repair struct {
		r     *events.PodRecord
		stale []podvm.VM // VMs of the pod that are not the record's
		mark  repairFn
		fix   repairFn
	}
	// A record that changes during the replay can come twice; the later
	// one decides (repairs keyed by uid).
	repairs := map[string]repair{}
	var order []string
	recorded, inOrder := map[string]bool{}, map[string]bool{}
	// A record that does not decode belongs to a pod whose VM would pass
	// for an orphan: while any is there, no orphan is destroyed, and the
	// other repairs go on.
	var undecodable []string
	err := s.recs.scan(ctx, func(r *events.PodRecord) {
		recorded[r.UID] = true
		delete(repairs, r.UID)
		var vm podvm.VM
		hasVM := false
		var stale []podvm.VM
		for _, v := range vmsOf[r.UID] {
			if v.Ref.Value == r.VMRef || (r.VMRef == "" && v.Name == r.VMName) {
				vm, hasVM = v, true
			} else {
				stale = append(stale, v)
			}
		}
		if mark, fix := s.repairOf(r, vm, hasVM); mark != nil || fix != nil || len(stale) > 0 {
			if !inOrder[r.UID] {
				inOrder[r.UID] = true
				order = append(order, r.UID)
			}
			repairs[r.UID] = repair{r: r, stale: stale, mark: mark, fix: fix}
		}
	}, func(key string, err error) { undecodable = append(undecodable, key) })
	if err != nil {
		return nil, fmt.Errorf("resync: %w", err)
	}

	report := RepairReport{}
	var errs []error
	if len(undecodable) > 0 {
		err := fmt.Errorf("resync: %d pod records do not decode (%s): no orphan VM is destroyed until they do, since their pods' VMs would pass for orphans",
			len(undecodable), strings.Join(undecodable, ", "))
		s.log.Error("drift repair", "err", err)
		errs = append(errs, err)
	}
	for _, vm := range vms {
		if vm.UID != "" && !recorded[vm.UID] && len(undecodable) == 0 {
			errs = append(errs, s.repairOrphan(ctx, vm, report))
		}
	}
	// Every record is marked before any VM is made: after a vCenter lost
	// its VMs (a restarted simulated datacenter), no pod goes on saying
	// Running while the pass makes the VMs of the pods before it.
	failed := func(uid string, err error) {
		if err != nil {
			s.failedRepairs.Store(uid, s.now())
			errs = append(errs, err)
		}
	}
	s.failedRepairs.Clear() // this pass decides anew
	for _, uid := range order {
		if rp, ok := repairs[uid]; ok && rp.mark != nil {
			failed(uid, rp.mark(ctx, report))
		}
	}
	if s.native != nil {
		// Native VMs drift as pod VMs do (a vCenter rebuilt from nothing
		// lost them all): their controller repairs its own, after the pods
		// are marked and before their VMs are made, so that no VM record
		// says Ready while the pods' VMs are made.
		repaired, err := s.native.Resync(ctx)
		for kind, n := range repaired {
			for range n {
				s.count(ctx, report, kind)
			}
		}
		errs = append(errs, err)
	}
	for _, uid := range order {
		rp, ok := repairs[uid]
		if !ok {
			continue // its later delivery needed none
		}
		for _, vm := range rp.stale {
			failed(uid, s.repairStale(ctx, rp.r, vm, report))
		}
		if rp.fix != nil {
			failed(uid, rp.fix(ctx, report))
		}
	}
	for kind, n := range report {
		span.SetAttributes(attribute.Int("repairs."+kind, n))
	}
	return report, errors.Join(errs...)
}

func (s *Service) count(ctx context.Context, report RepairReport, kind string) {
	report[kind]++
	s.repairs.Add(ctx, 1, metric.WithAttributes(attribute.String("kind", kind)))
}

// repairOrphan destroys a pod VM whose pod does not exist. The record is
// read again under the pod's lock: the pod may have been admitted after the
// records were listed.
func (s *Service) repairOrphan(ctx context.Context, vm podvm.VM, report RepairReport) error {
	if vm.Namespace != "" && vm.Pod != "" {
		unlock := s.locks.Lock(events.PodKey(vm.Namespace, vm.Pod))
		defer unlock()
		r, err := s.recs.get(ctx, events.PodRecordKey(vm.Namespace, vm.Pod))
		if err != nil {
			return err
		}
		if r != nil && r.UID == vm.UID {
			return nil // admitted meanwhile: not an orphan
		}
	}
	found := false
	if err := s.stepCtx(ctx, func(ctx context.Context) (err error) {
		found, err = s.vms.Remove(ctx, vm.Ref)
		return err
	}); err != nil {
		return fmt.Errorf("remove orphan VM %s (%s): %w", vm.Name, vm.Ref.Value, err)
	}
	if !found {
		// Gone since the listing: its pod's delete removed it (the
		// record went after the VM), which is no drift.
		return nil
	}
	s.log.Warn("drift repair: orphan pod VM destroyed", "kind", RepairOrphanVM, "vm", vm.Ref.Value, "name", vm.Name, "uid", vm.UID, "host", vm.Host)
	s.count(ctx, report, RepairOrphanVM)
	return nil
}

// repairStale destroys a VM of a pod that is not the pod's current VM (left
// behind by an eviction from an unreachable host).
func (s *Service) repairStale(ctx context.Context, r *events.PodRecord, vm podvm.VM, report RepairReport) error {
	unlock := s.locks.Lock(r.Key())
	defer unlock()
	fresh, err := s.recs.get(ctx, events.PodRecordKey(r.Namespace, r.Name))
	if err != nil {
		return err
	}
	if fresh == nil || fresh.UID != r.UID || fresh.VMRef == vm.Ref.Value || fresh.VMName == vm.Name {
		return nil
	}
	if err := s.stepCtx(ctx, func(ctx context.Context) error { return s.vms.Destroy(ctx, vm.Ref) }); err != nil {
		return fmt.Errorf("remove stale VM %s (%s) of %s: %w", vm.Name, vm.Ref.Value, r.Key(), err)
	}
	s.log.Warn("drift repair: stale pod VM destroyed", "kind", RepairStaleVM, "key", r.Key(), "vm", vm.Ref.Value, "name", vm.Name, "host", vm.Host)
	s.count(ctx, report, RepairStaleVM)
	kept := fresh.StaleVMs[:0]
	for _, st := range fresh.StaleVMs {
		if st.Ref != vm.Ref.Value {
			kept = append(kept, st)
		}
	}
	if len(kept) != len(fresh.StaleVMs) {
		fresh.StaleVMs = kept
		return s.save(ctx, fresh)
	}
	return nil
}

// repairFn is one repair of one pod.
type repairFn func(context.Context, RepairReport) error

// repairOf checks one record against its VM (hasVM says whether the
// listing found it) and returns the repair of what differs, nil when
// nothing does. Deciding apart from repairing lets a pass keep only the
// records it repairs. A repair that takes long (making a VM again) comes
// in two steps: mark, a quick record write that makes the status say what
// is being repaired, and fix; a pass runs every mark before any fix.
func (s *Service) repairOf(r *events.PodRecord, vm podvm.VM, hasVM bool) (mark, fix repairFn) {
	// A repair that failed in this process's last pass is taken up again
	// at once, unless the record was written since (by a handler, or by
	// another replica that took the pod up).
	failedAt, failedBefore := s.failedRepairs.Load(r.UID)
	failedBefore = failedBefore && !r.UpdatedAt.After(failedAt.(time.Time))
	stuck := failedBefore || s.now().Sub(r.UpdatedAt) > max(s.cfg.ResyncInterval, time.Second)
	switch {
	case !r.DeletionRequestedAt.IsZero() && stuck,
		(r.Phase == events.PodPhaseProvisioning || r.Phase == events.PodPhaseScheduled) && ready(r) && stuck:
		return nil, func(ctx context.Context, report RepairReport) error {
			return s.repairUnderLock(ctx, r, report, RepairStuck, func(fresh *events.PodRecord) (bool, error) {
				if fresh.ResourceVersion != r.ResourceVersion {
					return false, nil // someone moved it on meanwhile
				}
				err := s.reconcile(ctx, fresh, false)
				switch {
				case errors.Is(err, errAwaitingStop):
					// Not stalled: the wait is bounded, and the guest's report
					// or the next pass finishes the delete.
					return false, nil
				case err != nil && !fresh.DeletionRequestedAt.IsZero():
					return false, s.deleteStalled(ctx, fresh, err)
				}
				return err == nil, err
			})
		}
	case r.Phase == events.PodPhaseScheduled && r.DeletionRequestedAt.IsZero() && !ready(r) && stuck:
		return nil, func(ctx context.Context, report RepairReport) error {
			return s.repairUnderLock(ctx, r, report, RepairAwaitingFacts, func(fresh *events.PodRecord) (bool, error) {
				if fresh.ResourceVersion != r.ResourceVersion {
					return false, nil // a fact came meanwhile, or another replica asked
				}
				return s.askForFacts(ctx, fresh)
			})
		}
	case r.Phase == events.PodPhaseFailed && hasVM && r.VMRef == "":
		// fail() removes the VM; this catches a removal that vCenter
		// refused at the time. (A Failed pod that still names its VM
		// failed in its containers: the VM stays, with their logs, until
		// the pod is deleted.)
		return nil, func(ctx context.Context, report RepairReport) error {
			return s.repairUnderLock(ctx, r, report, RepairOrphanVM, func(fresh *events.PodRecord) (bool, error) {
				if fresh.Phase != events.PodPhaseFailed || fresh.VMRef != "" {
					return false, nil
				}
				// The VMs were listed before the records were read: fail()
				// may have removed this one since.
				if cur, err := s.getVM(ctx, vm.Ref); err != nil || cur == nil {
					return false, err
				}
				if err := s.stepCtx(ctx, func(ctx context.Context) error { return s.vms.Destroy(ctx, vm.Ref) }); err != nil {
					return false, fmt.Errorf("remove VM %s of failed pod: %w", vm.Ref.Value, err)
				}
				return true, nil
			})
		}
	case !vmOn(r):
		return nil, nil
	case hasVM && vm.PowerState != types.VirtualMachinePowerStatePoweredOn:
		return nil, func(ctx context.Context, report RepairReport) error {
			return s.repairUnderLock(ctx, r, report, RepairPowerState, func(fresh *events.PodRecord) (bool, error) {
				if !vmOn(fresh) || fresh.VMRef != vm.Ref.Value {
					return false, nil
				}
				// The listing is older than the record: a VM listed while
				// it was being made may be on by now.
				if cur, err := s.getVM(ctx, vm.Ref); err != nil || cur == nil || cur.PowerState == types.VirtualMachinePowerStatePoweredOn {
					return false, err
				}
				if err := s.powerOn(ctx, fresh, vm.Ref); err != nil {
					return false, fmt.Errorf("power on %s of %s: %w", vm.Ref.Value, r.Key(), err)
				}
				return true, nil
			})
		}
	case !hasVM:
		// The fix goes on from the state the mark left, not from its
		// revision: a stale VM's removal, or a late report of the lost
		// VM's guest, may write the record in between without carrying
		// the pod on. Another create started since (CreateAttempts moved)
		// is someone else's to finish.
		attempts := -1 // CreateAttempts once marked; -1: not marked
		mark = func(ctx context.Context, report RepairReport) error {
			return s.repairUnderLock(ctx, r, report, RepairMissingVM, func(fresh *events.PodRecord) (bool, error) {
				if !vmOn(fresh) {
					return false, nil
				}
				// The listing covers the podvisor folders only: make sure the
				// VM is not simply somewhere else before re-creating it.
				if fresh.VMRef != "" {
					if vm, err := s.recordedVM(ctx, fresh); err != nil || vm != nil {
						return false, err
					}
				}
				now := s.now().UTC()
				fresh.VMRef, fresh.CreateTask = "", ""
				fresh.Phase, fresh.Reason, fresh.Message = events.PodPhaseProvisioning, ReasonVMMissing, "pod VM "+fresh.VMName+" disappeared; creating it again"
				fresh.SetCondition(events.PodConditionVMCreated, events.ConditionFalse, ReasonVMMissing, "pod VM not found in vCenter", now)
				fresh.SetCondition(events.PodConditionVMReady, events.ConditionFalse, ReasonVMMissing, "pod VM not found in vCenter", now)
				loseGuest(fresh, now)
				switch err := s.save(ctx, fresh); {
				case errors.Is(err, errConflict):
					return false, nil // moved on meanwhile (another replica marked it): the next pass looks again
				case err != nil:
					return false, err
				}
				attempts = fresh.CreateAttempts
				s.log.Warn("drift repair: pod VM missing; the pod says so until it is made again", "key", fresh.Key(), "uid", fresh.UID, "vm", fresh.VMName)
				return false, nil // counted once the VM is made
			})
		}
		fix = func(ctx context.Context, report RepairReport) error {
			if attempts < 0 {
				return nil
			}
			return s.repairUnderLock(ctx, r, report, RepairMissingVM, func(fresh *events.PodRecord) (bool, error) {
				if !fresh.DeletionRequestedAt.IsZero() || fresh.Phase != events.PodPhaseProvisioning || fresh.VMRef != "" ||
					fresh.CreateTask != "" || fresh.CreateAttempts != attempts {
					return false, nil // deleted, failed, or carried on by someone else since the mark
				}
				if err := s.provision(ctx, fresh, false); err != nil {
					return false, err
				}
				return true, nil
			})
		}
		return mark, fix
	case s.guestSilent(r):
		return nil, func(ctx context.Context, report RepairReport) error {
			return s.repairSilentGuest(ctx, r, vm, report)
		}
	}
	return nil, nil
}

// askForFacts asks the owners of the facts a Scheduled pod still lacks
// for them again, as the flow asked them first: pod.accepted announced
// again. The scheduler answers a pod it holds with the host it is bound to
// (pod.scheduled), on which network-config attaches the pod's networks
// (returning the addresses it holds already), and the image cache
// prepares the pod's images again (pod.images.ready). Each is idempotent,
// so a fact that did come changes nothing.
//
// The announcement's id is fixed by the record's revision, and the record
// is then written (its message, and UpdatedAt, which bounds the next ask)
// by compare-and-set at that revision: replicas that ask at once publish
// one event, which JetStream stores once, and one of them writes.
func (s *Service) askForFacts(ctx context.Context, r *events.PodRecord) (bool, error) {
	missing := missingFacts(r)
	if err := s.announceAccepted(ctx, *recordCause(r), r, bus.Distinct(fmt.Sprintf("ask-again/%d", r.ResourceVersion))); err != nil {
		return false, fmt.Errorf("ask again for %s: %w", strings.Join(missing, ", "), err)
	}
	since := r.UpdatedAt
	r.Message = fmt.Sprintf("waiting for %s; asked their owners again (pod.accepted announced again)", strings.Join(missing, ", "))
	err := s.save(ctx, r)
	if errors.Is(err, errConflict) {
		return false, nil // a fact came, or another replica asked
	}
	if err != nil {
		return false, err
	}
	s.log.Info("asked again for the facts a pod lacks", "key", r.Key(), "uid", r.UID, "missing", strings.Join(missing, ","),
		"host", r.Host, "waiting_since", since, "revision", r.ResourceVersion)
	return true, nil
}

// vmOn says whether the record's phase promises a powered-on VM that drift
// repair keeps so (Migrating is left to the migration).
func vmOn(r *events.PodRecord) bool {
	return events.PodHasVM(r.Phase) && r.Phase != events.PodPhaseMigrating
}

// guestSilent says whether the pod's VM has been on for longer than
// GuestTimeout (since power-on or the last power cycle) without its guest
// ever reporting.
func (s *Service) guestSilent(r *events.PodRecord) bool {
	if s.cfg.GuestTimeout <= 0 || r.Phase != events.PodPhaseStarting || r.Guest != nil || !r.DeletionRequestedAt.IsZero() {
		return false
	}
	c, ok := r.Condition(events.PodConditionVMReady)
	return ok && s.now().Sub(c.Time) > s.cfg.GuestTimeout
}

// repairSilentGuest is one step of the repair of a guest that never
// reported, each step decided by the record alone so that a repeated or
// concurrent pass does the same: first the silence is reported on the pod
// (VMReady False, reason GuestSilent); on a later pass the VM is
// power-cycled (VMReady True again, its clock restarted), up to
// GuestRepairs times; then the VM is destroyed and created again.
func (s *Service) repairSilentGuest(ctx context.Context, r *events.PodRecord, vm podvm.VM, report RepairReport) error {
	c, _ := r.Condition(events.PodConditionVMReady)
	switch {
	case c.Status == events.ConditionTrue:
		return s.repairUnderLock(ctx, r, report, RepairGuestSilent, func(fresh *events.PodRecord) (bool, error) {
			if fresh.ResourceVersion != r.ResourceVersion {
				return false, nil
			}
			msg := fmt.Sprintf("the guest of pod VM %s has not reported within %s of power-on", fresh.VMName, s.cfg.GuestTimeout)
			fresh.Reason, fresh.Message = ReasonGuestSilent, msg
			fresh.SetCondition(events.PodConditionVMReady, events.ConditionFalse, ReasonGuestSilent, msg, s.now().UTC())
			return false, s.save(ctx, fresh) // reported; the repair is the next step
		})
	case r.GuestRepairs < s.cfg.GuestRepairs:
		return s.repairUnderLock(ctx, r, report, RepairGuestSilent, func(fresh *events.PodRecord) (bool, error) {
			if fresh.ResourceVersion != r.ResourceVersion || fresh.VMRef != vm.Ref.Value {
				return false, nil
			}
			// Count the cycle before making it: a crash in between costs
			// one cycle of the budget, never an endless loop.
			fresh.GuestRepairs++
			n := fresh.GuestRepairs
			if err := s.save(ctx, fresh); err != nil {
				return false, err
			}
			err := s.stepCtx(ctx, func(ctx context.Context) error { return s.vms.PowerOff(ctx, vm.Ref) })
			if err == nil {
				err = s.powerOn(ctx, fresh, vm.Ref)
			}
			if err != nil {
				return false, fmt.Errorf("power-cycle %s: %w", vm.Ref.Value, err)
			}
			msg := fmt.Sprintf("the guest of pod VM %s never reported; power-cycled (%d of %d)", fresh.VMName, n, s.cfg.GuestRepairs)
			fresh.Reason, fresh.Message = ReasonGuestSilent, msg
			fresh.SetCondition(events.PodConditionVMReady, events.ConditionTrue, "PowerCycled", msg, s.now().UTC())
			return true, s.save(ctx, fresh)
		})
	default:
		return s.repairUnderLock(ctx, r, report, RepairGuestRecreate, func(fresh *events.PodRecord) (bool, error) {
			if fresh.ResourceVersion != r.ResourceVersion || fresh.VMRef != vm.Ref.Value {
				return false, nil
			}
			if err := s.removeVMs(ctx, fresh); err != nil {
				return false, err
			}
			fresh.Phase = events.PodPhaseProvisioning
			fresh.Reason = ReasonGuestSilent
			fresh.Message = fmt.Sprintf("the guest of pod VM %s stayed silent through %d power cycles; creating the VM again", fresh.VMName, s.cfg.GuestRepairs)
			if err := s.save(ctx, fresh); err != nil {
				return true, err
			}
			return true, s.provision(ctx, fresh, false)
		})
	}
}

// repairUnderLock re-reads the record under the pod's lock and runs fix on
// it; fix reports whether it repaired something.
func (s *Service) repairUnderLock(ctx context.Context, r *events.PodRecord, report RepairReport, kind string, fix func(*events.PodRecord) (bool, error)) error {
	unlock := s.locks.Lock(r.Key())
	defer unlock()
	fresh, err := s.recs.get(ctx, events.PodRecordKey(r.Namespace, r.Name))
	if err != nil || fresh == nil || fresh.UID != r.UID {
		return err
	}
	ctx, span := s.span(ctx, "provisioner.repair", fresh, attribute.String("repair.kind", kind))
	defer span.End()
	repaired, err := fix(fresh)
	if repaired {
		s.log.Warn("drift repair", "kind", kind, "key", fresh.Key(), "uid", fresh.UID, "vm", fresh.VMName, "err", err)
		s.count(ctx, report, kind)
	}
	if err != nil {
		return fmt.Errorf("repair %s of %s: %w", kind, fresh.Key(), err)
	}
	return nil
}
