package vsphere

import (
	"context"
	"fmt"
	"path"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// The guestinfo keys the provisioner writes on every pod VM. They name the
// VM's pod to whoever reads vCenter (drift repair matching a VM to its
// record even if the VM was renamed, migration checking what it moves).
const (
	GuestinfoUID       = "guestinfo.podvisor.uid"
	GuestinfoNamespace = "guestinfo.podvisor.namespace"
	GuestinfoPod       = "guestinfo.podvisor.name"
)

// PodIdentity is the pod a VM belongs to, as its guestinfo says.
type PodIdentity struct {
	UID, Namespace, Pod string
}

// PodOf reads the pod identity from a VM's configuration (empty for a VM
// without one, or that is not a pod VM).
func PodOf(cfg *types.VirtualMachineConfigInfo) PodIdentity {
	var id PodIdentity
	if cfg == nil {
		return id
	}
	for _, o := range cfg.ExtraConfig {
		ov := o.GetOptionValue()
		s, _ := ov.Value.(string)
		switch ov.Key {
		case GuestinfoUID:
			id.UID = s
		case GuestinfoNamespace:
			id.Namespace = s
		case GuestinfoPod:
			id.Pod = s
		}
	}
	return id
}

// DetachSharedDisks removes from a VM, without touching their files, every
// disk that lives outside the VM's own directory: a pod VM's image disks
// and its boot disk, each one file shared by many VMs. Destroying a VM
// deletes the files of every disk still attached to it, so whoever
// destroys a pod VM calls this first. A VM already gone is for the caller
// to judge: the error wraps what vCenter said.
func DetachSharedDisks(ctx context.Context, c *vim25.Client, ref types.ManagedObjectReference) error {
	vm := object.NewVirtualMachine(c, ref)
	var m mo.VirtualMachine
	if err := vm.Properties(ctx, ref, []string{"config.hardware.device", "config.files.vmPathName"}, &m); err != nil {
		return fmt.Errorf("devices of %s: %w", ref.Value, err)
	}
	if m.Config == nil {
		return nil
	}
	var vmx object.DatastorePath
	vmx.FromString(m.Config.Files.VmPathName)
	own := fmt.Sprintf("[%s] %s/", vmx.Datastore, path.Dir(vmx.Path))
	var change []types.BaseVirtualDeviceConfigSpec
	for _, d := range m.Config.Hardware.Device {
		disk, ok := d.(*types.VirtualDisk)
		if !ok {
			continue
		}
		b, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo)
		if !ok || strings.HasPrefix(b.GetVirtualDeviceFileBackingInfo().FileName, own) {
			continue
		}
		// No FileOperation: the device goes, the file stays.
		change = append(change, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationRemove, Device: disk})
	}
	if len(change) == 0 {
		return nil
	}
	task, err := vm.Reconfigure(ctx, types.VirtualMachineConfigSpec{DeviceChange: change})
	if err == nil {
		_, err = WaitTask(ctx, c, task.Reference())
	}
	if err != nil {
		return fmt.Errorf("detach the shared disks of %s: %w", ref.Value, err)
	}
	return nil
}
