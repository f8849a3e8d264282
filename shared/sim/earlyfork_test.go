package sim_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/shared/simtest"
)

// A pod VM forked before its network is attached: the instant clone's
// card has its cable out (on no segment) and its spec waits for the
// network, so the child's agent creates the container and does not start
// it. A reconfigure of the running child then moves the card to the pod's
// port group with the pod's MAC, connects it and gives the guest the spec
// with the network: the guest's card is replaced by one with that MAC,
// plugged into the port group's segment, the agent configures it and the
// container starts.
func TestReconfigureGivesAnEarlyForkItsNetwork(t *testing.T) {
	tv := newTemplateVM(t, "e", "pv-early-t", "00:50:56:aa:bb:21")
	d, agents, c, parent, chain := tv.d, tv.agents, tv.c, tv.parent, tv.chain
	ctx := context.Background()
	podPG := "pv-early-pod"
	podKey := simtest.AddPortGroup(t, c, d.DVS(), podPG)
	powerOn(t, parent)
	running(t, agents.next(t, "template"), "template")
	pkey := parent.Reference().Value

	devices, err := parent.Device(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tcard := *devices.SelectByType((*types.VirtualEthernetCard)(nil))[0].(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
	fork := func(name string, spec *guestchannel.PodSpec, change []types.BaseVirtualDeviceConfigSpec) types.ManagedObjectReference {
		t.Helper()
		return instantClone(t, parent, name, spec, change)
	}
	// A first fork boots its child; the template's standby boots after it.
	fork("first", forkSpec("uid-first", "first", chain), nil)
	running(t, agents.next(t, "first"), "first")
	deadline := time.Now().Add(30 * time.Second)
	for _, ok := d.Guests().Standby(pkey); !ok; _, ok = d.Guests().Standby(pkey) {
		if time.Now().After(deadline) {
			t.Fatal("no standby of the template within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}

	unplugged := tcard
	unplugged.Connectable = &types.VirtualDeviceConnectInfo{StartConnected: false, Connected: false}
	early := forkSpec("uid-early", "early", chain)
	early.NetworkPending = true
	ref := fork("early", early, []types.BaseVirtualDeviceConfigSpec{&types.VirtualDeviceConfigSpec{
		Operation: types.VirtualDeviceConfigSpecOperationEdit,
		Device:    &types.VirtualVmxnet3{VirtualVmxnet: types.VirtualVmxnet{VirtualEthernetCard: unplugged}}}})
	h := agents.next(t, "early")
	g, ok := d.Guests().Guest(ref.Value)
	if !ok || !g.Resumed {
		t.Fatalf("the early fork's guest: running %v, resumed %v; want the template's standby taken over", ok, g.Resumed)
	}
	waitConsole(t, g.Dir, `msg="waiting for the pod's network"`)
	if ports := d.Guests().Ports(ref.Value); len(ports) != 1 || master(t, ports[0].Name) != 0 {
		t.Fatalf("the early fork's card is plugged before its network: %v", ports)
	}

	// The network attached: the card moves, the spec follows.
	const podMAC = "00:50:56:bb:00:22"
	vm := object.NewVirtualMachine(c.Client, ref)
	cdevices, err := vm.Device(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ccard := *cdevices.SelectByType((*types.VirtualEthernetCard)(nil))[0].(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
	var sw mo.DistributedVirtualSwitch
	if err := object.NewCommon(c.Client, d.DVS()).Properties(ctx, d.DVS(), []string{"uuid"}, &sw); err != nil {
		t.Fatal(err)
	}
	ccard.Backing = &types.VirtualEthernetCardDistributedVirtualPortBackingInfo{Port: types.DistributedVirtualSwitchPortConnection{
		PortgroupKey: podKey, SwitchUuid: sw.Uuid}}
	ccard.MacAddress, ccard.AddressType = podMAC, string(types.VirtualEthernetCardMacTypeManual)
	ccard.Connectable = &types.VirtualDeviceConnectInfo{StartConnected: true, Connected: true, AllowGuestControl: true}
	attached := forkSpec("uid-early", "early", chain)
	attached.NICs = []guestchannel.NIC{{Network: "pod", MAC: podMAC, IP: "10.77.0.5", Prefix: 24}}
	raw, err := guestchannel.MarshalSpec(attached)
	if err != nil {
		t.Fatal(err)
	}
	task, err := vm.Reconfigure(ctx, types.VirtualMachineConfigSpec{
		ExtraConfig: []types.BaseOptionValue{&types.OptionValue{Key: guestchannel.GuestinfoSpec, Value: raw}},
		DeviceChange: []types.BaseVirtualDeviceConfigSpec{&types.VirtualDeviceConfigSpec{
			Operation: types.VirtualDeviceConfigSpecOperationEdit,
			Device:    &types.VirtualVmxnet3{VirtualVmxnet: types.VirtualVmxnet{VirtualEthernetCard: ccard}}}},
	})
	if err != nil || task.Wait(ctx) != nil {
		t.Fatalf("reconfigure the early fork: %v", err)
	}
	running(t, h, "early")
	ports := d.Guests().Ports(ref.Value)
	bridge, _ := d.Segment(podKey)
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		t.Fatalf("the pod's segment %s: %v", bridge, err)
	}
	if len(ports) != 1 || !strings.EqualFold(ports[0].MAC.String(), podMAC) || master(t, ports[0].Name) != br.Attrs().Index {
		t.Fatalf("the early fork's card after the reconfigure: %v, want one with MAC %s plugged into %s", ports, podMAC, bridge)
	}
	log := waitConsole(t, g.Dir, `msg="boot phase" phase=network`)
	if !strings.Contains(log, "nics=1") {
		t.Errorf("the agent configured no card; console:\n%s", log)
	}
}

// master is the index of the bridge a host interface is plugged into, 0
// for none.
func master(t *testing.T, name string) int {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatalf("port %s: %v", name, err)
	}
	return l.Attrs().MasterIndex
}

// waitConsole waits until a guest's console log holds want and returns it.
func waitConsole(t *testing.T, dir, want string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join(dir, "console.log"))
		if strings.Contains(string(b), want) {
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("console of %s has no %q within 30s:\n%s", dir, want, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// instantClone forks parent into pv-<name> running spec, its cards edited
// by change, and waits for the clone.
func instantClone(t *testing.T, parent *object.VirtualMachine, name string, spec *guestchannel.PodSpec, change []types.BaseVirtualDeviceConfigSpec) types.ManagedObjectReference {
	t.Helper()
	ctx := context.Background()
	raw, err := guestchannel.MarshalSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	task, err := parent.InstantClone(ctx, types.VirtualMachineInstantCloneSpec{
		Name: "pv-" + name, Config: []types.BaseOptionValue{&types.OptionValue{Key: guestchannel.GuestinfoSpec, Value: raw}},
		Location: types.VirtualMachineRelocateSpec{DeviceChange: change},
	})
	if err != nil {
		t.Fatal(err)
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		t.Fatalf("instant clone %s: %v", name, err)
	}
	return info.Result.(types.ManagedObjectReference)
}
