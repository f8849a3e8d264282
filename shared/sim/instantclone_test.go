package sim_test

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/sim/guest"
	"github.com/podvisor/podvisor/shared/simtest"
)

// forkSpec is a pod spec whose one container echoes who it is and stays.
func forkSpec(uid, name, chain string) *guestchannel.PodSpec {
	return simtest.BusyboxSpec(uid, name, chain, 1,
		guestchannel.Container{Name: "app", Command: []string{"sh", "-c", "echo " + name + " > /who; sleep 3600"}})
}

// running waits on a guest's channel until its container runs.
func running(t testing.TB, h hello, what string) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	got := make(chan bool, 1)
	go func() { got <- containerRunning(h.conn) }()
	select {
	case ok := <-got:
		if !ok {
			t.Fatalf("%s: channel closed before the container ran", what)
		}
	case <-deadline:
		t.Fatalf("%s: container not running within 30s", what)
	}
}

// containerRunning reads a guest's channel until a container runs (true)
// or the channel ends (false).
func containerRunning(conn *guestchannel.Conn) bool {
	for {
		env, err := conn.Receive()
		if err != nil {
			return false
		}
		var st guestchannel.Status
		if env.Type == guestchannel.TypeStatus && env.Decode(&st) == nil {
			for _, c := range st.Containers {
				if c.State.Kind == guestchannel.StateRunning {
					return true
				}
			}
		}
	}
}

// ext4UUID reads the filesystem uuid of an ext4 image (superblock at 1024,
// uuid at +104).
func ext4UUID(t testing.TB, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 16)
	if _, err := f.ReadAt(b, 1024+104); err != nil {
		t.Fatal(err)
	}
	return b
}

// onlyNIC returns a clone's NIC, failing the test unless it has exactly
// one, and the distributed port group its backing names ("" for any other
// backing).
func onlyNIC(t *testing.T, ctx context.Context, vm *object.VirtualMachine) (card *types.VirtualEthernetCard, portGroup string) {
	t.Helper()
	devices, err := vm.Device(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nics := devices.SelectByType((*types.VirtualEthernetCard)(nil))
	if len(nics) != 1 {
		t.Fatalf("clone %s has %d NICs, want 1", vm.Reference().Value, len(nics))
	}
	card = nics[0].(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
	if port, ok := card.Backing.(*types.VirtualEthernetCardDistributedVirtualPortBackingInfo); ok {
		portGroup = port.Port.PortgroupKey
	}
	return card, portGroup
}

// InstantClone_Task forks a running pod VM: the child gets the parent's
// hardware and its own guestinfo, its ephemeral disk is a copy-on-write
// clone of the parent's (the same filesystem, never formatted again), its
// image disk is the parent's very file, and its guest runs the child's
// spec on them without disturbing the parent. A powered-off VM cannot be
// forked.
func TestInstantCloneForksARunningPodVM(t *testing.T) {
	const parentMAC = "00:50:56:aa:bb:01"
	tv := newTemplateVM(t, "f", "pv-fork", parentMAC)
	d, agents, c, parent, pgKey := tv.d, tv.agents, tv.c, tv.parent, tv.pgKey
	ctx, chain := context.Background(), tv.chain
	if _, err := parent.InstantClone(ctx, types.VirtualMachineInstantCloneSpec{Name: "pv-too-early"}); err == nil ||
		!strings.Contains(err.Error(), "powered on") {
		t.Fatalf("instant clone of a powered-off VM: %v, want refused", err)
	}
	task, err := parent.PowerOn(ctx)
	if err != nil || task.Wait(ctx) != nil {
		t.Fatalf("power on: %v", err)
	}
	running(t, agents.next(t, "template"), "template")

	childSpec, err := guestchannel.MarshalSpec(forkSpec("uid-child", "child", chain))
	if err != nil {
		t.Fatal(err)
	}
	forked := time.Now()
	task, err = parent.InstantClone(ctx, types.VirtualMachineInstantCloneSpec{
		Name:   "pv-child",
		Config: []types.BaseOptionValue{&types.OptionValue{Key: guestchannel.GuestinfoSpec, Value: childSpec}},
	})
	if err != nil {
		t.Fatal(err)
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		t.Fatalf("instant clone: %v", err)
	}
	ref := info.Result.(types.ManagedObjectReference)
	h := agents.next(t, "child")
	if h.msg.PodUID != "uid-child" {
		t.Fatalf("the child's guest runs pod %q, want uid-child (the clone's own guestinfo)", h.msg.PodUID)
	}
	running(t, h, "child")
	t.Logf("instant clone to the child's container running: %s", time.Since(forked).Round(time.Millisecond))

	child := object.NewVirtualMachine(c.Client, ref)
	var m mo.VirtualMachine
	if err := child.Properties(ctx, ref, []string{"name", "runtime.powerState", "config.hardware"}, &m); err != nil {
		t.Fatal(err)
	}
	if m.Name != "pv-child" || m.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn || m.Config.Hardware.MemoryMB != 256 {
		t.Fatalf("child: name %s, power %s, memory %d MiB; want pv-child, poweredOn, the parent's 256", m.Name, m.Runtime.PowerState, m.Config.Hardware.MemoryMB)
	}
	card, portGroup := onlyNIC(t, ctx, child) // the parent's one
	if portGroup != pgKey || card.MacAddress == "" || card.MacAddress == parentMAC {
		t.Fatalf("child NIC: backing %#v, MAC %q; want port group %s and a new MAC", card.Backing, card.MacAddress, pgKey)
	}
	if got := d.ForkedFrom(ref.Value); got != parent.Reference().Value {
		t.Fatalf("ForkedFrom(child) = %q, want %s", got, parent.Reference().Value)
	}
	pg, ok := d.Guests().Guest(parent.Reference().Value)
	cg, ok2 := d.Guests().Guest(ref.Value)
	if !ok || !ok2 {
		t.Fatal("parent and child must both run a guest")
	}
	path := func(g []guest.Disk, unit string) string {
		for _, dk := range g {
			if dk.Unit == unit {
				return dk.Path
			}
		}
		return ""
	}
	pEph, cEph := path(pg.VM.Disks, "scsi0:0"), path(cg.VM.Disks, "scsi0:0")
	if pEph == "" || cEph == "" || pEph == cEph {
		t.Fatalf("ephemeral disks: parent %q, child %q; want two files", pEph, cEph)
	}
	if !bytes.Equal(ext4UUID(t, pEph), ext4UUID(t, cEph)) {
		t.Fatal("the child's ephemeral disk holds another filesystem: it was formatted, not cloned")
	}
	if p, c := path(pg.VM.Disks, "scsi0:1"), path(cg.VM.Disks, "scsi0:1"); p == "" || p != c {
		t.Fatalf("image disks: parent %q, child %q; want the one shared file", p, c)
	}
	// The parent runs on, unaffected.
	if _, ok := d.Guests().Guest(parent.Reference().Value); !ok {
		t.Fatal("the parent's guest stopped")
	}
}

// TestInstantCloneMovesNICs: a card edited in InstantCloneSpec.Location
// goes to the named port group with the given MAC (what a pod forked from
// a template needs: its own network attachment); other edits are refused.
func TestInstantCloneMovesNICs(t *testing.T) {
	ctx := context.Background()
	d := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 1, Seed: 1})
	c := simtest.Client(t, d)
	simtest.AddPortGroup(t, c, d.DVS(), "pv-a")
	pgB := simtest.AddPortGroup(t, c, d.DVS(), "pv-b")
	parent, _ := simtest.CreatePodVM(t, c, d, simtest.PodVM{
		Name: "pv-template", Host: d.Hosts()[0], NumCPUs: 1, MemoryMB: 128, Spec: forkSpec("uid-t", "t", "sha256:"+strings.Repeat("a", 64)),
		Disks: []simtest.PodVMDisk{{File: "ephemeral.vmdk", CapacityBytes: 1 << 20}},
		NICs:  []simtest.PodVMNIC{{PortGroup: "pv-a", MAC: "00:50:56:aa:00:01"}},
	})
	powerOn(t, parent)
	devices, err := parent.Device(ctx)
	if err != nil {
		t.Fatal(err)
	}
	card := *devices.SelectByType((*types.VirtualEthernetCard)(nil))[0].(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
	var pg mo.DistributedVirtualPortgroup
	if err := object.NewCommon(c.Client, types.ManagedObjectReference{Type: "DistributedVirtualPortgroup", Value: pgB}).Properties(ctx,
		types.ManagedObjectReference{Type: "DistributedVirtualPortgroup", Value: pgB}, []string{"config"}, &pg); err != nil {
		t.Fatal(err)
	}
	var sw mo.DistributedVirtualSwitch
	if err := object.NewCommon(c.Client, *pg.Config.DistributedVirtualSwitch).Properties(ctx, *pg.Config.DistributedVirtualSwitch, []string{"uuid"}, &sw); err != nil {
		t.Fatal(err)
	}
	card.Backing = &types.VirtualEthernetCardDistributedVirtualPortBackingInfo{Port: types.DistributedVirtualSwitchPortConnection{
		PortgroupKey: pgB, SwitchUuid: sw.Uuid}}
	card.MacAddress = "00:50:56:bb:00:02"
	edit := &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationEdit, Device: &types.VirtualVmxnet3{
		VirtualVmxnet: types.VirtualVmxnet{VirtualEthernetCard: card}}}

	bad := *edit
	bad.Operation = types.VirtualDeviceConfigSpecOperationAdd
	if _, err := parent.InstantClone(ctx, types.VirtualMachineInstantCloneSpec{Name: "pv-bad",
		Location: types.VirtualMachineRelocateSpec{DeviceChange: []types.BaseVirtualDeviceConfigSpec{&bad}}}); err == nil ||
		!strings.Contains(err.Error(), "deviceChange[0]") {
		t.Fatalf("an added device: %v, want refused naming deviceChange[0]", err)
	}
	task, err := parent.InstantClone(ctx, types.VirtualMachineInstantCloneSpec{Name: "pv-moved",
		Location: types.VirtualMachineRelocateSpec{DeviceChange: []types.BaseVirtualDeviceConfigSpec{edit}}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		t.Fatalf("instant clone: %v", err)
	}
	cc, portGroup := onlyNIC(t, ctx, object.NewVirtualMachine(c.Client, info.Result.(types.ManagedObjectReference)))
	if portGroup != pgB || cc.MacAddress != "00:50:56:bb:00:02" {
		t.Fatalf("child NIC: backing %#v, MAC %q; want port group %s and 00:50:56:bb:00:02", cc.Backing, cc.MacAddress, pgB)
	}
}

// templateVM is a datacenter with guests, a host agent listening on its
// one host, and the pod VM pv-template (powered off) running
// forkSpec("uid-template", "template", chain) on an ephemeral disk and a
// busybox image disk, its card on a port group of its own, and devices
// (serial ports, say) added after them.
type templateVM struct {
	d      *sim.Datacenter
	agents *hostAgents
	c      *govmomi.Client
	parent *object.VirtualMachine
	chain  string
	pgKey  string
}

// agentGuests starts a datacenter of hosts whose guests run the pod VM
// agent, and gives the erofs image (busybox's sh, echo and sleep) a pod
// VM's image disk holds.
func agentGuests(t *testing.T, hosts int) (d *sim.Datacenter, channels string, image []byte) {
	t.Helper()
	agent := simtest.GuestAgent(t, "simulated guests run in namespaces and cgroups")
	image, err := os.ReadFile(simtest.BusyboxImage(t, []string{"sh", "echo", "sleep"}, nil))
	if err != nil {
		t.Fatal(err)
	}
	d, channels = simtest.StartWithGuests(t, hosts, agent)
	return d, channels, image
}

func newTemplateVM(t *testing.T, chainByte, portGroup, mac string, devices ...types.BaseVirtualDeviceConfigSpec) templateVM {
	t.Helper()
	d, channels, image := agentGuests(t, 1)
	host := d.Hosts()[0]
	tv := templateVM{d: d, agents: listenHostAgents(t, channels, host.Name), c: simtest.Client(t, d),
		chain: "sha256:" + strings.Repeat(chainByte, 64)}
	tv.pgKey = simtest.AddPortGroup(t, tv.c, d.DVS(), portGroup)
	var extents []string
	tv.parent, extents = simtest.CreatePodVM(t, tv.c, d, simtest.PodVM{
		Name: "pv-template", Host: host, NumCPUs: 1, MemoryMB: 256, Spec: forkSpec("uid-template", "template", tv.chain),
		Disks:   []simtest.PodVMDisk{{File: "ephemeral.vmdk", CapacityBytes: 64 << 20}, {File: "image.vmdk", CapacityBytes: 16 << 20, ReadOnly: true}},
		NICs:    []simtest.PodVMNIC{{PortGroup: portGroup, MAC: mac}},
		Devices: devices,
	})
	if err := os.WriteFile(extents[1], image, 0o600); err != nil {
		t.Fatal(err)
	}
	return tv
}

// The simulated instant clone is done within InstantClone_Task: the task
// the call returns has ended, so a client's first read of it through a
// property collector has the result. (vcsim's collector reports a change
// of a running task on a 20 ms tick: a fork whose task ended after the
// client's wait began cost that tick, measured as most of a fork.) The
// child's create is slowed here so that a task still running could not be
// missed.
func TestInstantCloneTaskHasEndedWhenTheCallReturns(t *testing.T) {
	ctx := context.Background()
	d := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 1, Seed: 1})
	c := simtest.Client(t, d)
	simtest.AddPortGroup(t, c, d.DVS(), "pv-a")
	parent, _ := simtest.CreatePodVM(t, c, d, simtest.PodVM{
		Name: "pv-template", Host: d.Hosts()[0], NumCPUs: 1, MemoryMB: 128, Spec: forkSpec("uid-t", "t", "sha256:"+strings.Repeat("a", 64)),
		Disks: []simtest.PodVMDisk{{File: "ephemeral.vmdk", CapacityBytes: 1 << 20}},
		NICs:  []simtest.PodVMNIC{{PortGroup: "pv-a", MAC: "00:50:56:aa:00:01"}},
	})
	powerOn(t, parent)
	if err := d.SetTaskDelay("CreateVm", 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	task, err := parent.InstantClone(ctx, types.VirtualMachineInstantCloneSpec{Name: "pv-child"})
	if err != nil {
		t.Fatal(err)
	}
	var tk mo.Task
	if err := property.DefaultCollector(c.Client).RetrieveOne(ctx, task.Reference(), []string{"info"}, &tk); err != nil {
		t.Fatal(err)
	}
	if tk.Info.State != types.TaskInfoStateSuccess {
		t.Fatalf("task %s is %s when InstantClone_Task returns, want success", task.Reference().Value, tk.Info.State)
	}
	ref, ok := tk.Info.Result.(types.ManagedObjectReference)
	if !ok || ref.Type != "VirtualMachine" {
		t.Fatalf("task result %#v, want the child VM", tk.Info.Result)
	}
	var vm mo.VirtualMachine
	if err := property.DefaultCollector(c.Client).RetrieveOne(ctx, ref, []string{"name", "runtime.powerState"}, &vm); err != nil {
		t.Fatal(err)
	}
	if vm.Name != "pv-child" || vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
		t.Errorf("child %q is %s, want pv-child powered on", vm.Name, vm.Runtime.PowerState)
	}
}
