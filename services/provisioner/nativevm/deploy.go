package nativevm

import (
	"context"
	"fmt"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vapi/vcenter"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// deploy makes the VM from its image's content library item: vCenter
// deploys the OVF template (the library's deploy API) on the VM's host,
// pool, datastore and folder, with the template's disks and hardware; the
// class's size, the cloud-init data, the NICs and the extra disks are
// then set as for any VM (update, addDisks). When the image also names an
// OCI root filesystem, its boot disk replaces the template's first disk,
// so that a simulated guest boots it.
func (c *Controller) deploy(ctx context.Context, rec *events.VMRecord, h *object.HostSystem, pool *object.ResourcePool,
	ds string, folder *object.Folder, name string) (*object.VirtualMachine, error) {
	cl := rec.Image.ContentLibrary
	itemID, err := c.findLibraryItem(ctx, cl.Library, cl.Item)
	if err != nil {
		return nil, bus.Permanent(bus.WithReason("LibraryItemNotFound", err))
	}
	store, err := c.vs.DatastoreByName(ctx, ds)
	if err != nil {
		return nil, err
	}
	rc, err := c.vs.REST(ctx)
	if err != nil {
		return nil, fmt.Errorf("content library: %w", err)
	}
	defer func() { _ = rc.Logout(context.WithoutCancel(ctx)) }()
	ref, err := vcenter.NewManager(rc).DeployLibraryItem(ctx, itemID, vcenter.Deploy{
		DeploymentSpec: vcenter.DeploymentSpec{Name: name, AcceptAllEULA: true, DefaultDatastoreID: store.Reference().Value,
			StorageProvisioning: string(types.OvfCreateImportSpecParamsDiskProvisioningTypeThin),
			Annotation:          fmt.Sprintf("podvisor native VM %s (uid %s) from %s/%s", rec.Key(), rec.UID, cl.Library, cl.Item)},
		Target: vcenter.Target{ResourcePoolID: pool.Reference().Value, HostID: h.Reference().Value, FolderID: folder.Reference().Value},
	})
	if err != nil {
		return nil, fmt.Errorf("deploy %s/%s as %s on %s: %w", cl.Library, cl.Item, name, rec.Status.Host, err)
	}
	vm := object.NewVirtualMachine(c.vc, *ref)
	c.log.Info("native VM deployed from the content library", "vm", rec.Key(), "name", name, "ref", ref.Value, "item", cl.Library+"/"+cl.Item)
	if err := c.fitDeployed(ctx, rec, vm, ds, name); err != nil {
		return nil, err
	}
	return vm, nil
}

// fitDeployed gives a deployed template what the declaration adds: the
// OCI boot disk (if any) in place of the template's first disk, then the
// extra disks, the class's size, cloud-init data and NICs (update).
func (c *Controller) fitDeployed(ctx context.Context, rec *events.VMRecord, vm *object.VirtualMachine, ds, name string) error {
	var m mo.VirtualMachine
	if err := vm.Properties(ctx, vm.Reference(), []string{"config.hardware.device"}, &m); err != nil {
		return fmt.Errorf("read deployed VM %s: %w", name, err)
	}
	devices := object.VirtualDeviceList(m.Config.Hardware.Device)
	var changes []types.BaseVirtualDeviceConfigSpec
	ctrl := int32(0)
	if scsi, err := devices.FindSCSIController(""); err == nil {
		ctrl = scsi.Key
	} else {
		ctrl = scsiKey
		changes = append(changes, scsiControllerAdd())
	}
	if rec.Image.OCI != "" {
		boot, capacity, err := c.bootDisk(ctx, rec, ds, name, false)
		if err != nil {
			return err
		}
		for _, d := range devices.SelectByType((*types.VirtualDisk)(nil)) {
			if d.GetVirtualDevice().ControllerKey == ctrl && d.GetVirtualDevice().UnitNumber != nil && *d.GetVirtualDevice().UnitNumber == 0 {
				changes = append(changes, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationRemove,
					FileOperation: types.VirtualDeviceConfigSpecFileOperationDestroy, Device: d})
			}
		}
		changes = append(changes, diskChange(boot, capacity, ctrl, 0, ""))
	}
	// The VM says it has no extra disks yet (disksKey): the template's
	// disks in its directory are not podvisor's to detach. The extra
	// disks are then added as to any VM that exists (update, disks.go),
	// on the template's SCSI controller after its disks.
	task, err := vm.Reconfigure(ctx, types.VirtualMachineConfigSpec{DeviceChange: changes,
		ExtraConfig: []types.BaseOptionValue{&types.OptionValue{Key: disksKey, Value: disksValue(nil)}}})
	if err == nil {
		_, err = task.WaitForResult(ctx)
	}
	if err != nil {
		return fmt.Errorf("fit the deployed VM %s for %s: %w", name, rec.Key(), err)
	}
	return c.update(ctx, rec, vm)
}
