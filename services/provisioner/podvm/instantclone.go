package podvm

import (
	"context"
	"fmt"
	"reflect"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/vsphere"
)

// Template is what an instant clone needs to know of its source VM beyond
// its reference: its network cards, in order. It is read once per template
// (ReadTemplate) and reused by every fork of it; the caller reads it again
// when the template changes (a new template VM) or a fork of it failed.
type Template struct {
	Ref   types.ManagedObjectReference
	cards []types.BaseVirtualDevice
}

// ReadTemplate reads the template VM's network cards.
func (c *Client) ReadTemplate(ctx context.Context, ref types.ManagedObjectReference) (*Template, error) {
	devices, err := object.NewVirtualMachine(c.vc, ref).Device(ctx)
	if err != nil {
		return nil, fmt.Errorf("devices of template %s: %w", ref.Value, err)
	}
	return &Template{Ref: ref, cards: devices.SelectByType((*types.VirtualEthernetCard)(nil))}, nil
}

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
func (c *Client) StartInstantClone(ctx context.Context, t *Template, s Spec, p Placement) (types.ManagedObjectReference, error) {
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
	if len(t.cards) != len(s.NICs) {
		return none, fmt.Errorf("template %s has %d network cards, the pod needs %d", t.Ref.Value, len(t.cards), len(s.NICs))
	}
	var change []types.BaseVirtualDeviceConfigSpec
	for i, n := range s.NICs {
		// A copy: the template's cards are shared by its concurrent forks.
		dev := copyDevice(t.cards[i])
		card := dev.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
		if n.PortGroup == "" {
			// No network yet (a fork made before the pod's network is
			// attached): the card keeps the template's backing with its
			// cable out, a generated MAC, until AttachNetwork.
			card.Connectable = &types.VirtualDeviceConnectInfo{StartConnected: false, Connected: false, AllowGuestControl: true}
			card.MacAddress, card.AddressType = "", string(types.VirtualEthernetCardMacTypeGenerated)
			change = append(change, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationEdit, Device: dev})
			continue
		}
		if err := c.plugCard(ctx, card, n); err != nil {
			return none, err
		}
		change = append(change, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationEdit, Device: dev})
	}
	folderRef, poolRef, hostRef := folder.Reference(), pool.Reference(), h.host.Reference()
	task, err := object.NewVirtualMachine(c.vc, t.Ref).InstantClone(ctx, types.VirtualMachineInstantCloneSpec{
		Name:     s.Name,
		Location: types.VirtualMachineRelocateSpec{Folder: &folderRef, Pool: &poolRef, Host: &hostRef, DeviceChange: change},
		Config:   extraConfig(s.ExtraConfig),
	})
	if err != nil {
		return none, fmt.Errorf("instant clone %s from %s: %w", s.Name, t.Ref.Value, err)
	}
	return task.Reference(), nil
}

// copyDevice is a shallow copy of a device (*types.VirtualVmxnet3 and the
// like): its own top-level fields, the rest shared.
func copyDevice(d types.BaseVirtualDevice) types.BaseVirtualDevice {
	v := reflect.ValueOf(d).Elem()
	cp := reflect.New(v.Type())
	cp.Elem().Set(v)
	return cp.Interface().(types.BaseVirtualDevice)
}

// plugCard puts a card on n's port group with n's MAC (generated when n
// has none), connected.
func (c *Client) plugCard(ctx context.Context, card *types.VirtualEthernetCard, n NIC) error {
	backing, _, err := c.portGroupBacking(ctx, n.PortGroup, false)
	if err != nil {
		return err
	}
	card.Backing = backing
	card.MacAddress, card.AddressType = n.MAC, string(types.VirtualEthernetCardMacTypeManual)
	if n.MAC == "" {
		card.AddressType = string(types.VirtualEthernetCardMacTypeGenerated)
	}
	card.Connectable = &types.VirtualDeviceConnectInfo{StartConnected: true, Connected: true, AllowGuestControl: true}
	return nil
}

// AttachNetwork gives a running pod VM forked before its network was
// attached (StartInstantClone with NICs without a port group) its
// network, in one ReconfigVM_Task: each card, in order, moved to s.NICs'
// port group with its MAC and connected, and s.ExtraConfig (the guest
// spec that has the network) set; the guest hears of the spec and
// configures the cards. It returns once the task ended.
func (c *Client) AttachNetwork(ctx context.Context, ref types.ManagedObjectReference, s Spec) error {
	vm := object.NewVirtualMachine(c.vc, ref)
	devices, err := vm.Device(ctx)
	if err != nil {
		return fmt.Errorf("devices of %s: %w", ref.Value, err)
	}
	cards := devices.SelectByType((*types.VirtualEthernetCard)(nil))
	if len(cards) != len(s.NICs) {
		return fmt.Errorf("pod VM %s has %d network cards, the pod needs %d", ref.Value, len(cards), len(s.NICs))
	}
	var change []types.BaseVirtualDeviceConfigSpec
	for i, n := range s.NICs {
		dev := copyDevice(cards[i])
		if err := c.plugCard(ctx, dev.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard(), n); err != nil {
			return err
		}
		change = append(change, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationEdit, Device: dev})
	}
	task, err := vm.Reconfigure(ctx, types.VirtualMachineConfigSpec{DeviceChange: change, ExtraConfig: extraConfig(s.ExtraConfig)})
	if err == nil {
		_, err = vsphere.WaitTask(ctx, c.vc, task.Reference())
	}
	if err != nil {
		return fmt.Errorf("attach the network of %s: %w", ref.Value, err)
	}
	return nil
}
