package podvm

import (
	"context"
	"fmt"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"
)

// StartInstantClone submits InstantClone_Task (VMFork) of the powered-on
// template for the pod VM s, placed by p: the child takes the template's
// hardware and disks (its read/write disk copy-on-write, its image disks
// shared), s.ExtraConfig overlaid on the template's guestinfo, and each of
// the template's network cards moved, in order, to s.NICs' port group and
// MAC. The child is powered on when the task ends; like StartCreate it
// returns once vCenter accepted the task, its result the VM's reference.
//
// The template must have been made for s (same size, image disks and
// number of cards): the caller keys templates by that shape.
func (c *Client) StartInstantClone(ctx context.Context, template types.ManagedObjectReference, s Spec, p Placement) (types.ManagedObjectReference, error) {
	var none types.ManagedObjectReference
	h, _, err := c.hostInfo(ctx, p.Host, false)
	if err != nil {
		return none, err
	}
	pool, _, err := c.pool(ctx, h, p.Pool, false)
	if err != nil {
		return none, err
	}
	folder, err := c.EnsureFolder(ctx, p.Folder)
	if err != nil {
		return none, err
	}
	vm := object.NewVirtualMachine(c.vc, template)
	devices, err := vm.Device(ctx)
	if err != nil {
		return none, fmt.Errorf("devices of template %s: %w", template.Value, err)
	}
	cards := devices.SelectByType((*types.VirtualEthernetCard)(nil))
	if len(cards) != len(s.NICs) {
		return none, fmt.Errorf("template %s has %d network cards, the pod needs %d", template.Value, len(cards), len(s.NICs))
	}
	var change []types.BaseVirtualDeviceConfigSpec
	for i, n := range s.NICs {
		backing, _, err := c.portGroupBacking(ctx, n.PortGroup, false)
		if err != nil {
			return none, err
		}
		card := cards[i].(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
		card.Backing = backing
		card.MacAddress, card.AddressType = n.MAC, string(types.VirtualEthernetCardMacTypeManual)
		if n.MAC == "" {
			card.AddressType = string(types.VirtualEthernetCardMacTypeGenerated)
		}
		change = append(change, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationEdit, Device: cards[i]})
	}
	folderRef, poolRef, hostRef := folder.Reference(), pool.Reference(), h.host.Reference()
	task, err := vm.InstantClone(ctx, types.VirtualMachineInstantCloneSpec{
		Name:     s.Name,
		Location: types.VirtualMachineRelocateSpec{Folder: &folderRef, Pool: &poolRef, Host: &hostRef, DeviceChange: change},
		Config:   extraConfig(s.ExtraConfig),
	})
	if err != nil {
		return none, fmt.Errorf("instant clone %s from %s: %w", s.Name, template.Value, err)
	}
	return task.Reference(), nil
}
