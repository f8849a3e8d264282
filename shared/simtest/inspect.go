package simtest

import (
	"context"
	"slices"
	"testing"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/event"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// VMHost is where vCenter says a VM runs, and its resource pool.
func VMHost(t testing.TB, c *govmomi.Client, vm types.ManagedObjectReference) (host string, pool types.ManagedObjectReference) {
	t.Helper()
	var m mo.VirtualMachine
	if err := c.RetrieveOne(context.Background(), vm, []string{"runtime.host", "resourcePool"}, &m); err != nil {
		t.Fatalf("simtest: VM %s: %v", vm.Value, err)
	}
	var h mo.HostSystem
	if err := c.RetrieveOne(context.Background(), *m.Runtime.Host, []string{"name"}, &h); err != nil {
		t.Fatalf("simtest: host of VM %s: %v", vm.Value, err)
	}
	return h.Name, *m.ResourcePool
}

// VMExists says whether vCenter knows the VM.
func VMExists(c *govmomi.Client, vm types.ManagedObjectReference) bool {
	var m mo.VirtualMachine
	return c.RetrieveOne(context.Background(), vm, []string{"name"}, &m) == nil
}

// EventsOn are the events vCenter holds on entity itself, not on its
// children (what `govc events` lists for it).
func EventsOn(t testing.TB, c *govmomi.Client, entity types.ManagedObjectReference) []types.BaseEvent {
	t.Helper()
	evs, err := event.NewManager(c.Client).QueryEvents(context.Background(), types.EventFilterSpec{
		Entity: &types.EventFilterSpecByEntity{Entity: entity, Recursion: types.EventFilterSpecRecursionOptionSelf}})
	if err != nil {
		t.Fatalf("simtest: events on %s: %v", entity.Value, err)
	}
	return evs
}

// PortGroupView is what vCenter says of a distributed port group.
type PortGroupView struct {
	Exists bool
	VLAN   int32
	// Hosts carrying it (sorted): the host lists it among its networks
	// and is a member of the port group's switch.
	Hosts []string
}

// PortGroup reads the distributed port group name and the hosts carrying
// it.
func PortGroup(t testing.TB, c *govmomi.Client, name string) PortGroupView {
	t.Helper()
	ctx := context.Background()
	v, err := view.NewManager(c.Client).CreateContainerView(ctx, c.ServiceContent.RootFolder,
		[]string{"DistributedVirtualPortgroup", "DistributedVirtualSwitch", "HostSystem"}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Destroy(ctx)
	var pgs []mo.DistributedVirtualPortgroup
	if err := v.Retrieve(ctx, []string{"DistributedVirtualPortgroup"}, []string{"name", "config"}, &pgs); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(pgs, func(p mo.DistributedVirtualPortgroup) bool { return p.Name == name })
	if i < 0 {
		return PortGroupView{}
	}
	pg := pgs[i]
	out := PortGroupView{Exists: true}
	if s, ok := pg.Config.DefaultPortConfig.(*types.VMwareDVSPortSetting); ok {
		if vl, ok := s.Vlan.(*types.VmwareDistributedVirtualSwitchVlanIdSpec); ok {
			out.VLAN = vl.VlanId
		}
	}
	var sws []mo.DistributedVirtualSwitch
	if err := v.Retrieve(ctx, []string{"DistributedVirtualSwitch"}, []string{"summary.hostMember"}, &sws); err != nil {
		t.Fatal(err)
	}
	var members []types.ManagedObjectReference
	for _, sw := range sws {
		if sw.Self == *pg.Config.DistributedVirtualSwitch {
			members = sw.Summary.HostMember
		}
	}
	var hosts []mo.HostSystem
	if err := v.Retrieve(ctx, []string{"HostSystem"}, []string{"name", "network"}, &hosts); err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		if slices.Contains(h.Network, pg.Self) && slices.Contains(members, h.Self) {
			out.Hosts = append(out.Hosts, h.Name)
		}
	}
	slices.Sort(out.Hosts)
	return out
}

// CreateDisks makes the datastore directory dir ("[ds] path") and creates
// a thin 1 MiB disk at each datastore path in it.
func CreateDisks(t testing.TB, c *govmomi.Client, dc *object.Datacenter, dir string, paths ...string) {
	t.Helper()
	ctx := context.Background()
	if err := object.NewFileManager(c.Client).MakeDirectory(ctx, dir, dc, true); err != nil {
		t.Fatalf("simtest: mkdir %s: %v", dir, err)
	}
	vdm := object.NewVirtualDiskManager(c.Client)
	for _, p := range paths {
		task, err := vdm.CreateVirtualDisk(ctx, p, dc, &types.FileBackedVirtualDiskSpec{
			VirtualDiskSpec: types.VirtualDiskSpec{DiskType: string(types.VirtualDiskTypeThin), AdapterType: string(types.VirtualDiskAdapterTypeLsiLogic)},
			CapacityKb:      1024,
		})
		if err == nil {
			err = task.Wait(ctx)
		}
		if err != nil {
			t.Fatalf("simtest: create disk %s: %v", p, err)
		}
	}
}

// PortVLAN is the VLAN id a distributed port's own setting carries, -1
// when it carries none (no VMware setting, or a trunk or private VLAN).
func PortVLAN(p types.DistributedVirtualPort) int32 {
	s, ok := p.Config.Setting.(*types.VMwareDVSPortSetting)
	if !ok || s.Vlan == nil {
		return -1
	}
	id, ok := s.Vlan.(*types.VmwareDistributedVirtualSwitchVlanIdSpec)
	if !ok {
		return -1
	}
	return id.VlanId
}
