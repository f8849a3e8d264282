package nativevm

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/record"
)

// What Resync repairs.
const (
	// RepairMissing: vCenter has no VM for a record whose VM was made
	// (deleted by hand, or a vCenter rebuilt from nothing, as the
	// simulated datacenter of a restarted `podvisor up`).
	RepairMissing = "native_vm_missing"
	// RepairPower: the VM is not in its declared power state.
	RepairPower = "native_vm_power"
	// RepairDelete: a VM's delete was left half done (its handler's
	// process died between marking the record Deleting and removing it):
	// it is finished (finishDelete).
	RepairDelete = "native_vm_delete"
	// RepairCreate: a VM never made, whose create failed on every
	// delivery of its handler (ReasonCreateRetriesExhausted), is created:
	// what failed (a registry down or moved, a host refusing) may pass.
	RepairCreate = "native_vm_create"
)

// reasonVMMissing is the Created condition's reason while a lost VM is made
// again.
const reasonVMMissing = "VMMissing"

// Resync compares the records of VMs that were made (their latest
// generation placed, attached and converged once: status.vm set) with
// vCenter's VMs and converges the ones that differ: a VM vCenter does not
// have is made again from its spec on its host, one in another power
// state than declared is set to it. The records say only what was done,
// so without this a record would go on saying Ready for a VM that is gone.
// A record marked Deleting has its delete finished, with the handler's
// own steps (finishDelete), rather than waiting for the delete request's
// redelivery (AckWait), or forever once its deliveries ran out. A VM
// never made whose create its handler gave up on (Failed,
// CreateRetriesExhausted) is created, at every pass until it is made:
// what failed (a registry down or moved) may have passed.
// A repair first moves the record on by compare-and-set at the revision
// read, so of several provisioner replicas passing at once one repairs,
// and a handler that moved the record meanwhile wins. It returns the
// repairs by kind.
func (c *Controller) Resync(ctx context.Context) (map[string]int, error) {
	powers, err := c.powers(ctx)
	if err != nil {
		return nil, fmt.Errorf("native VMs: %w", err)
	}
	type repair struct {
		key  string
		rev  uint64
		kind string
	}
	var todo []repair
	err = c.vms.ScanEach(ctx, func(key string, rev uint64, r *events.VMRecord) error {
		if !r.DeletionRequestedAt.IsZero() {
			todo = append(todo, repair{key, rev, RepairDelete})
			return nil
		}
		if ready(r) && createGivenUp(r) {
			todo = append(todo, repair{key, rev, RepairCreate})
			return nil
		}
		if !ready(r) || r.Status.VM == "" || r.StaleVM != "" || r.Status.Phase == events.VMPhaseFailed {
			return nil // a handler's to converge (a Failed VM's, once it is declared again)
		}
		switch power, ok := powers[events.NativeVMName(r.UID)]; {
		case !ok:
			todo = append(todo, repair{key, rev, RepairMissing})
		case power != r.Spec.PowerState && (r.Status.Phase == events.VMPhaseReady || c.updatingStuck(r)):
			todo = append(todo, repair{key, rev, RepairPower})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("native VMs: %w", err)
	}
	// Every record is claimed (its status saying what is repaired) before
	// any VM is made: after a vCenter lost them all, no record goes on
	// saying Ready while the VMs before it are made again.
	done := map[string]int{}
	var errs []error
	claimed := make([]uint64, len(todo)) // the revision each claim wrote
	for i, rp := range todo {
		rev, err := c.claim(ctx, rp.key, rp.rev, rp.kind)
		if err != nil {
			errs = append(errs, fmt.Errorf("native VM %s: %w", rp.key, err))
		}
		claimed[i] = rev
	}
	for i, rp := range todo {
		if claimed[i] == 0 {
			continue
		}
		switch ok, err := c.repair(ctx, rp.key, claimed[i]); {
		case err != nil:
			errs = append(errs, fmt.Errorf("native VM %s: %w", rp.key, err))
		case ok:
			done[rp.kind]++ // counted once done, not when claimed
		}
	}
	return done, errors.Join(errs...)
}

// createGivenUp says the record's VM was never made and its create failed
// until nothing but the drift repair retries it (giveUpCreate).
func createGivenUp(r *events.VMRecord) bool {
	cond, _ := r.Condition(events.VMConditionCreated)
	return r.Status.Phase == events.VMPhaseFailed && r.Status.VM == "" && cond.Reason == ReasonCreateRetriesExhausted
}

// updatingStuck says a record has said Updating for longer than a
// handler's delivery may take (AckWait): its converge failed (a repair's
// own included) and no delivery is left to take it up, so a pass does.
func (c *Controller) updatingStuck(r *events.VMRecord) bool {
	return r.Status.Phase == events.VMPhaseUpdating && c.now().Sub(r.UpdatedAt) > c.cfg.AckWait
}

// repair converges the record claimed at rev, unless a handler moved it on
// since (then that handler converges it), and says whether it did.
func (c *Controller) repair(ctx context.Context, key string, rev uint64) (bool, error) {
	unlock, rec, err := c.lockAt(ctx, key, rev)
	if err != nil || rec == nil {
		return false, err
	}
	defer unlock()
	if !rec.DeletionRequestedAt.IsZero() {
		return c.finishDelete(ctx, nil, rec)
	}
	if err := c.converge(ctx, nil, rec); err != nil {
		// No delivery retries a create that failed here: the next
		// pass does.
		if _, gerr := c.giveUpCreate(ctx, nil, rec.Namespace, rec.Name, rec.UID, "the drift repair tries again at its next pass"); gerr != nil {
			err = errors.Join(err, gerr)
		}
		return false, err
	}
	// converge records a permanent failure (the VM Failed) and returns nil:
	// only a VM that is Ready now was repaired.
	now, _, err := c.vms.Get(ctx, key)
	return err == nil && now != nil && now.Status.Phase == events.VMPhaseReady, err
}

// lockAt takes the VM's lock and reads its record; a record gone, or at
// another revision than rev, is nil.
func (c *Controller) lockAt(ctx context.Context, key string, rev uint64) (func(), *events.VMRecord, error) {
	rec, cur, err := c.vms.Get(ctx, key)
	if err != nil || rec == nil || cur != rev {
		return nil, nil, err // gone, or moved on since the scan
	}
	unlock := c.locks.Lock(events.PodKey(rec.Namespace, rec.Name))
	// Read again under the lock: a handler may have written meanwhile.
	if rec, cur, err = c.vms.Get(ctx, key); err != nil || rec == nil || cur != rev {
		unlock()
		return nil, nil, err
	}
	return unlock, rec, nil
}

// claim moves the record at rev on by compare-and-set, its status saying
// what is repaired, and returns the revision written (0 when the record
// was gone or had moved on: another replica, or a handler, took it).
func (c *Controller) claim(ctx context.Context, key string, rev uint64, kind string) (uint64, error) {
	unlock, rec, err := c.lockAt(ctx, key, rev)
	if err != nil || rec == nil {
		return 0, err
	}
	defer unlock()
	now := c.now().UTC()
	switch kind {
	case RepairMissing:
		rec.Status.Phase = events.VMPhaseCreating
		rec.SetCondition(events.VMConditionCreated, events.ConditionFalse, reasonVMMissing,
			"VM "+events.NativeVMName(rec.UID)+" not found in vCenter; creating it again", now)
	case RepairPower:
		rec.Status.Phase = events.VMPhaseUpdating
	case RepairCreate:
		rec.Status.Phase = events.VMPhaseCreating // its condition says why, and who retries
	} // a delete's record stays Deleting: the claim only keeps other replicas out
	rec.UpdatedAt = now
	next, err := c.vms.Put(ctx, key, rec, rev)
	if errors.Is(err, record.ErrConflict) {
		return 0, nil // another replica, or a handler, took it
	} else if err != nil {
		return 0, err
	}
	c.log.Warn("drift repair", "kind", kind, "vm", rec.Key(), "uid", rec.UID)
	if kind != RepairDelete {
		c.publishStatus(ctx, nil, rec) // watchers see it Creating or Updating from now
	}
	return next, nil
}

// powers is the power state of every native VM in the datacenter, by name.
func (c *Controller) powers(ctx context.Context) (map[string]string, error) {
	v, err := view.NewManager(c.vc).CreateContainerView(ctx, c.dc.Reference(), []string{"VirtualMachine"}, true)
	if err != nil {
		return nil, err
	}
	defer func() { _ = v.Destroy(context.WithoutCancel(ctx)) }()
	var vms []mo.VirtualMachine
	if err := v.Retrieve(ctx, []string{"VirtualMachine"}, []string{"name", "runtime.powerState"}, &vms); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, vm := range vms {
		if strings.HasPrefix(vm.Name, events.NativeVMName("")) {
			out[vm.Name] = powerStateName(vm.Runtime.PowerState)
		}
	}
	return out, nil
}
