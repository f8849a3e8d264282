package sim_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/sim"
)

// connectionStates reads every host's connection state through the API, as
// vCenter's clients see it.
func connectionStates(t *testing.T, c *govmomi.Client, d *sim.Datacenter) map[string]types.HostSystemConnectionState {
	t.Helper()
	out := map[string]types.HostSystemConnectionState{}
	for _, h := range d.Hosts() {
		var hs mo.HostSystem
		if err := c.RetrieveOne(context.Background(), h.Ref, []string{"runtime.connectionState"}, &hs); err != nil {
			t.Fatal(err)
		}
		out[h.Name] = hs.Runtime.ConnectionState
	}
	return out
}

func waitStates(t *testing.T, c *govmomi.Client, d *sim.Datacenter, want types.HostSystemConnectionState, hosts ...string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		got := connectionStates(t, c, d)
		ok := true
		for _, h := range hosts {
			ok = ok && got[h] == want
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("hosts %v: want %s, have %v", hosts, want, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestManagementVLANCutsMemberHostsOffAndBack(t *testing.T) {
	ctx := context.Background()
	d := start(t, sim.Config{Clusters: 2, HostsPerCluster: 2})
	c := client(t, d)
	if err := d.SetManagementVLAN(4000); err != nil {
		t.Fatal(err)
	}
	if d.ManagementVLAN() != 4000 {
		t.Fatalf("ManagementVLAN = %d", d.ManagementVLAN())
	}
	if err := d.SetManagementVLAN(5000); err == nil {
		t.Fatal("SetManagementVLAN(5000) accepted a VLAN out of range")
	}
	var all []string
	for _, h := range d.Hosts() {
		all = append(all, h.Name)
	}

	// A port group on another VLAN changes nothing.
	dvs := object.NewDistributedVirtualSwitch(c.Client, d.DVS())
	addPG := func(name string, vlan int32) {
		task, err := dvs.AddPortgroup(ctx, []types.DVPortgroupConfigSpec{{
			Name: name, Type: "earlyBinding", NumPorts: 8,
			DefaultPortConfig: &types.VMwareDVSPortSetting{Vlan: &types.VmwareDistributedVirtualSwitchVlanIdSpec{VlanId: vlan}},
		}})
		if err == nil {
			err = task.Wait(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	addPG("pv-ok", 100)
	// The rule runs after each port group task on its own goroutine;
	// setting the same VLAN again evaluates it now, over the same port
	// groups, so what is read next is what the rule decided.
	evaluate := func() {
		t.Helper()
		if err := d.SetManagementVLAN(4000); err != nil {
			t.Fatal(err)
		}
	}
	evaluate()
	for h, s := range connectionStates(t, c, d) {
		if s != types.HostSystemConnectionStateConnected {
			t.Fatalf("host %s is %s after a harmless port group", h, s)
		}
	}

	// A host already failed for another reason is not the rule's to restore.
	if err := d.FailHost(ctx, all[0]); err != nil {
		t.Fatal(err)
	}

	// One on the management VLAN cuts off every member host of the switch.
	addPG("pv-bad", 4000)
	waitStates(t, c, d, types.HostSystemConnectionStateNotResponding, all...)

	// Moving the port group off the VLAN (a rollback) brings them back.
	pg, err := findPortGroup(ctx, c, "pv-bad")
	if err != nil {
		t.Fatal(err)
	}
	task, err := pg.Reconfigure(ctx, types.DVPortgroupConfigSpec{
		Name: "pv-bad", Type: "earlyBinding", NumPorts: 8,
		DefaultPortConfig: &types.VMwareDVSPortSetting{Vlan: &types.VmwareDistributedVirtualSwitchVlanIdSpec{VlanId: 101}},
	})
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	waitStates(t, c, d, types.HostSystemConnectionStateConnected, all[1:]...)
	evaluate()
	if s := connectionStates(t, c, d)[all[0]]; s != types.HostSystemConnectionStateNotResponding {
		t.Fatalf("failed host %s is %s after the rule let go; want it still notResponding", all[0], s)
	}
}

func findPortGroup(ctx context.Context, c *govmomi.Client, name string) (*object.DistributedVirtualPortgroup, error) {
	v, err := view.NewManager(c.Client).CreateContainerView(ctx, c.ServiceContent.RootFolder, []string{"DistributedVirtualPortgroup"}, true)
	if err != nil {
		return nil, err
	}
	defer v.Destroy(ctx)
	var pgs []mo.DistributedVirtualPortgroup
	if err := v.Retrieve(ctx, []string{"DistributedVirtualPortgroup"}, []string{"name"}, &pgs); err != nil {
		return nil, err
	}
	for _, p := range pgs {
		if p.Name == name {
			return object.NewDistributedVirtualPortgroup(c.Client, p.Self), nil
		}
	}
	return nil, fmt.Errorf("port group %s not found", name)
}
