package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
)

// On podvisor up (management VLAN 4000 on the simulator), an operator puts
// one host's management port on the wrong VLAN through vCenter: the host
// stops responding, network-config repairs the port through a clone, and
// the user sees why in `podvisor events`.
func TestMisconfiguredManagementPortRepairedOnUp(t *testing.T) {
	sys, dir := upForTest(t, "netconfig")
	ctx := context.Background()
	c := simtest.Client(t, sys.Datacenter)
	host := sys.Datacenter.Hosts()[0]
	dvs := object.NewDistributedVirtualSwitch(c.Client, sys.Datacenter.DVS())
	task, err := dvs.ReconfigureDVPort(ctx, []types.DVPortConfigSpec{{Operation: "edit", Key: sim.ManagementPortKey(host.Name),
		Setting: &types.VMwareDVSPortSetting{Vlan: &types.VmwareDistributedVirtualSwitchVlanIdSpec{VlanId: 99}}}})
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	var out string
	eventuallyWithin(t, 30*time.Second, "the repair in podvisor events", func() bool {
		out, _, _ = run(t, dir, "", "events", "--type", "network.management.*")
		return strings.Contains(out, "network.management.repaired")
	})
	for _, want := range []string{"network.management.cloned", host.Name} {
		if !strings.Contains(out, want) {
			t.Fatalf("events:\n%s\nwant %q", out, want)
		}
	}
	var hs mo.HostSystem
	if err := c.RetrieveOne(ctx, host.Ref, []string{"runtime.connectionState"}, &hs); err != nil {
		t.Fatal(err)
	}
	if hs.Runtime.ConnectionState != types.HostSystemConnectionStateConnected {
		t.Errorf("host %s is %s after the repair", host.Name, hs.Runtime.ConnectionState)
	}
	t.Logf("podvisor events --type 'network.management.*':\n%s", out)
}
