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
		if !ready(r) || r.Status.VM == "" || r.StaleVM != "" {
			return nil // a handler's to converge
		}
		switch power, ok := powers[events.NativeVMName(r.UID)]; {
		case !ok:
			todo = append(todo, repair{key, rev, RepairMissing})
		case power != r.Spec.PowerState && r.Status.Phase == events.VMPhaseReady:
			todo = append(todo, repair{key, rev, RepairPower})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("native VMs: %w", err)
	}
	done := map[string]int{}
	var errs []error
	for _, rp := range todo {
		ok, err := c.repair(ctx, rp.key, rp.rev, rp.kind)
		if err != nil {
			errs = append(errs, fmt.Errorf("native VM %s: %w", rp.key, err))
		}
		if ok {
			done[rp.kind]++
		}
	}
	return done, errors.Join(errs...)
}

// repair claims the record at rev and converges it.
func (c *Controller) repair(ctx context.Context, key string, rev uint64, kind string) (bool, error) {
	rec, cur, err := c.vms.Get(ctx, key)
	if err != nil || rec == nil || cur != rev {
		return false, err // gone, or moved on since the scan
	}
	unlock := c.locks.Lock(events.PodKey(rec.Namespace, rec.Name))
	defer unlock()
	now := c.now().UTC()
	if kind == RepairMissing {
		rec.Status.Phase = events.VMPhaseCreating
		rec.SetCondition(events.VMConditionCreated, events.ConditionFalse, reasonVMMissing,
			"VM "+events.NativeVMName(rec.UID)+" not found in vCenter; creating it again", now)
	} else {
		rec.Status.Phase = events.VMPhaseUpdating
	}
	rec.UpdatedAt = now
	if _, err := c.vms.Put(ctx, key, rec, rev); errors.Is(err, record.ErrConflict) {
		return false, nil // another replica, or a handler, took it
	} else if err != nil {
		return false, err
	}
	c.log.Warn("drift repair", "kind", kind, "vm", rec.Key(), "uid", rec.UID)
	return true, c.converge(ctx, nil, rec)
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
