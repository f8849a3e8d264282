package nativevm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/task"
	"github.com/vmware/govmomi/vapi/library"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// onAdmitted relocates the VM (vMotion) to the host the scheduler reserved
// once the migration service admits the move under the migration limits
// (vm.migration.admitted), records where it now runs and announces
// vm.migrated; the scheduler then frees the source's room, network-config
// moves the port bindings and the migration service the move's room.
func (c *Controller) onAdmitted(ctx context.Context, m *bus.Message, a *events.VMMigrationAdmitted) error {
	e := &a.VMMigrationTargetReserved
	unlock := c.locks.Lock(e.ObjectKey())
	defer unlock()
	rec, _, err := c.vms.Get(ctx, events.VMRecordKey(e.Namespace, e.Name))
	if err != nil {
		return err
	}
	if rec == nil || rec.UID != e.UID || !rec.DeletionRequestedAt.IsZero() {
		return c.out.Emit(ctx, &m.Event, &events.VMMigrated{ID: e.ID, VMRef: e.VMRef,
			SourceHost: e.SourceHost, Reason: "NotFound", Message: "the VM was deleted"})
	}
	if rec.Status.Host != e.TargetHost {
		vm, err := c.findVM(ctx, events.NativeVMName(rec.UID))
		if err != nil {
			return err
		}
		if vm == nil {
			return bus.Permanent(fmt.Errorf("VM %s has no vCenter VM to move", rec.Key()))
		}
		h, err := c.host(ctx, e.TargetHost)
		if err != nil {
			return err
		}
		pool, err := h.ResourcePool(ctx)
		if err != nil {
			return fmt.Errorf("resource pool of %s: %w", e.TargetHost, err)
		}
		// A vMotion moves the VM and not its disks: a target that does not
		// mount their datastores cannot run it (vCenter refuses; the
		// simulator would let the move happen and fail on the VM later).
		if missing, err := c.unmountedOn(ctx, vm, h); err != nil {
			return err
		} else if len(missing) > 0 {
			return bus.Permanent(bus.WithReason("RelocateFailed", fmt.Errorf("relocate %s to %s: the host does not mount datastore %s, which holds the VM's disks",
				rec.Key(), e.TargetHost, strings.Join(missing, ", "))))
		}
		hr, pr := h.Reference(), pool.Reference()
		task, err := vm.Relocate(ctx, types.VirtualMachineRelocateSpec{Host: &hr, Pool: &pr}, types.VirtualMachineMovePriorityDefaultPriority)
		if err == nil {
			_, err = task.WaitForResult(ctx)
		}
		if err != nil {
			err = bus.WithReason("RelocateFailed", fmt.Errorf("relocate %s to %s: %w", rec.Key(), e.TargetHost, err))
			if refusedByVCenter(err) {
				// vCenter answered and said no: trying the same move
				// again says no again; the VM stays, the target is freed.
				return bus.Permanent(err)
			}
			return err
		}
	}
	out, err := c.mutateVM(ctx, e.Namespace, e.Name, e.UID, func(r *events.VMRecord) error {
		r.Status.Host, r.Cluster, r.Migration = e.TargetHost, e.Cluster, ""
		if e.ResourcePool != "" {
			r.ResourcePool = e.ResourcePool
		}
		if r.Status.Phase == events.VMPhaseMigrating {
			r.Status.Phase = events.VMPhaseReady
		}
		return nil
	})
	if err != nil {
		return err
	}
	if out != nil {
		c.publishStatus(ctx, &m.Event, out)
	}
	c.log.Info("native VM migrated", "vm", e.ObjectKey(), "from", e.SourceHost, "to", e.TargetHost)
	return c.out.Emit(ctx, &m.Event, &events.VMMigrated{ID: e.ID, VMRef: e.VMRef,
		SourceHost: e.SourceHost, TargetHost: e.TargetHost})
}

// migrateFailed tells the scheduler the VM stayed, so it frees the target.
func (c *Controller) migrateFailed(ctx context.Context, m *bus.Message, a *events.VMMigrationAdmitted, err error) error {
	e := &a.VMMigrationTargetReserved
	return c.out.Emit(ctx, &m.Event, &events.VMMigrated{ID: e.ID, VMRef: e.VMRef,
		SourceHost: e.SourceHost, Reason: bus.ReasonOf(err, "MigrationFailed"), Message: err.Error()})
}

// findLibraryItem resolves a content library item by library and item
// name through the vAPI (vCenter's REST endpoint; vcsim serves it).
func (c *Controller) findLibraryItem(ctx context.Context, lib, item string) (string, error) {
	rc, err := c.vs.REST(ctx)
	if err != nil {
		return "", fmt.Errorf("content library: %w", err)
	}
	defer func() { _ = rc.Logout(context.WithoutCancel(ctx)) }()
	m := library.NewManager(rc)
	l, err := m.GetLibraryByName(ctx, lib)
	if err != nil {
		return "", fmt.Errorf("content library %q: %w", lib, err)
	}
	items, err := m.FindLibraryItems(ctx, library.FindItem{LibraryID: l.ID, Name: item})
	if err != nil {
		return "", fmt.Errorf("content library %q item %q: %w", lib, item, err)
	}
	if len(items) == 0 {
		return "", fmt.Errorf("content library %q has no item %q", lib, item)
	}
	return items[0], nil
}

// refusedByVCenter reports whether err is vCenter's answer (a fault of the
// call or of its task), not a failure to reach it.
func refusedByVCenter(err error) bool {
	var te task.Error
	if errors.As(err, &te) {
		return true
	}
	for ; err != nil; err = errors.Unwrap(err) {
		if soap.IsSoapFault(err) || soap.IsVimFault(err) {
			return true
		}
	}
	return false
}

// unmountedOn lists the datastores of vm's files that host h does not mount.
func (c *Controller) unmountedOn(ctx context.Context, vm *object.VirtualMachine, h *object.HostSystem) ([]string, error) {
	var mvm mo.VirtualMachine
	if err := vm.Properties(ctx, vm.Reference(), []string{"datastore"}, &mvm); err != nil {
		return nil, fmt.Errorf("datastores of VM %s: %w", vm.Reference().Value, err)
	}
	var mh mo.HostSystem
	if err := h.Properties(ctx, h.Reference(), []string{"datastore"}, &mh); err != nil {
		return nil, fmt.Errorf("datastores of host %s: %w", h.Reference().Value, err)
	}
	var missing []types.ManagedObjectReference
	for _, ref := range mvm.Datastore {
		if !slices.ContainsFunc(mh.Datastore, func(m types.ManagedObjectReference) bool { return m.Value == ref.Value }) {
			missing = append(missing, ref)
		}
	}
	if len(missing) == 0 {
		return nil, nil
	}
	return c.datastoreNames(ctx, missing)
}
