package sim_test

import (
	"context"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
)

// A host's own management port, edited off the management VLAN, cuts that
// host alone off; a second port scoped to it on the VLAN (a clone) brings it
// back, and so does repairing the port itself.
func TestManagementPortCutsOneHostAndACloneReachesIt(t *testing.T) {
	ctx := context.Background()
	d := start(t, sim.Config{Clusters: 1, HostsPerCluster: 3})
	c := client(t, d)
	if err := d.SetManagementVLAN(4000); err != nil {
		t.Fatal(err)
	}
	hosts := d.Hosts()
	victim, others := hosts[0], []string{hosts[1].Name, hosts[2].Name}
	dvs := object.NewDistributedVirtualSwitch(c.Client, d.DVS())

	ports, err := dvs.FetchDVPorts(ctx, &types.DistributedVirtualSwitchPortCriteria{PortKey: []string{sim.ManagementPortKey(victim.Name)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(ports) != 1 {
		t.Fatalf("FetchDVPorts(%s) = %d ports, want 1", sim.ManagementPortKey(victim.Name), len(ports))
	}
	p := ports[0]
	if p.Connectee == nil || p.Connectee.NicKey != sim.ManagementNIC || *p.Connectee.ConnectedEntity != victim.Ref || simtest.PortVLAN(p) != 4000 {
		t.Fatalf("management port %+v: want vmk0 of %s on vlan 4000", p, victim.Name)
	}
	reconfigure := func(specs ...types.DVPortConfigSpec) error {
		task, err := dvs.ReconfigureDVPort(ctx, specs)
		if err == nil {
			err = task.Wait(ctx)
		}
		return err
	}
	vlan := func(id int32) *types.VMwareDVSPortSetting {
		return &types.VMwareDVSPortSetting{Vlan: &types.VmwareDistributedVirtualSwitchVlanIdSpec{VlanId: id}}
	}

	// A port group's port has no state of its own here: refused.
	if err := reconfigure(types.DVPortConfigSpec{Operation: "edit", Key: "0", Setting: vlan(7)}); err == nil {
		t.Error("editing a port that is not a standalone port was accepted")
	}

	if err := reconfigure(types.DVPortConfigSpec{Operation: "edit", Key: p.Key, Setting: vlan(99)}); err != nil {
		t.Fatal(err)
	}
	waitStates(t, c, d, types.HostSystemConnectionStateNotResponding, victim.Name)
	waitStates(t, c, d, types.HostSystemConnectionStateConnected, others...)

	// A clone scoped to the host, on the management VLAN.
	if err := reconfigure(types.DVPortConfigSpec{Operation: "add", Key: p.Key + "-clone", Name: "clone",
		Scope: []types.ManagedObjectReference{victim.Ref}, Setting: vlan(4000)}); err != nil {
		t.Fatal(err)
	}
	waitStates(t, c, d, types.HostSystemConnectionStateConnected, victim.Name)

	// Repair the port, remove the clone: still connected.
	if err := reconfigure(types.DVPortConfigSpec{Operation: "edit", Key: p.Key, Setting: vlan(4000)},
		types.DVPortConfigSpec{Operation: "remove", Key: p.Key + "-clone"}); err != nil {
		t.Fatal(err)
	}
	all, err := dvs.FetchDVPorts(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range all {
		if q.Key == p.Key+"-clone" {
			t.Error("the clone is still listed after its removal")
		}
	}
	waitStates(t, c, d, types.HostSystemConnectionStateConnected, victim.Name)

	// Blocking the port cuts the host off too.
	if err := reconfigure(types.DVPortConfigSpec{Operation: "edit", Key: p.Key, Setting: &types.VMwareDVSPortSetting{
		DVPortSetting: types.DVPortSetting{Blocked: &types.BoolPolicy{Value: types.NewBool(true)}}}}); err != nil {
		t.Fatal(err)
	}
	waitStates(t, c, d, types.HostSystemConnectionStateNotResponding, victim.Name)
}
