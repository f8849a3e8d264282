package provisioner

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/events"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// TestProvisionFullFlow drives one pod from request to running VM and
// checks the VM as any vSphere client would see it.
func TestProvisionFullFlow(t *testing.T) {
	e := newEnv(t)
	svc, _ := e.start(testConfig())
	host := e.dc.Hosts()[1].Name

	acc := e.request(testPod("web"))
	// requests 500m+1000m(limit)+100m(default) + 250m overhead; memory
	// 256Mi+512Mi+128Mi + 128Mi overhead.
	if acc.Size.CPUMilli != 1850 || acc.Size.VCPUs != 2 || acc.Size.MemoryMiB != 1024 {
		t.Fatalf("accepted size = %+v, want 1850m / 2 vCPU / 1024 MiB", acc.Size)
	}
	if r := e.record(svc, "default", "web"); r.Phase != events.PodPhasePending || !r.IsTrue(events.PodConditionAccepted) {
		t.Fatalf("record after admission: phase %s, conditions %+v", r.Phase, r.Conditions)
	}

	e.facts(acc, host)
	run := waitFor[*events.PodRunning](e, events.TypePodRunning, func(p *events.PodRunning) bool { return p.UID == acc.UID })
	if run.Host != host || run.IP == "" || run.VM == "" {
		t.Fatalf("pod.running = %+v, want host %s and an IP", run, host)
	}

	r := e.waitRecord(svc, "default", "web", func(r *events.PodRecord) bool { return r.Phase == events.PodPhaseRunning })
	for _, c := range []string{events.PodConditionAccepted, events.PodConditionScheduled, events.PodConditionImagesReady,
		events.PodConditionNetworkAttached, events.PodConditionVMCreated, events.PodConditionRunning} {
		if !r.IsTrue(c) {
			t.Errorf("condition %s not True in %+v", c, r.Conditions)
		}
	}
	if r.VMRef != run.VM || r.Host != host || r.IP != run.IP || r.CreateTask != "" {
		t.Errorf("record = vm %s host %s ip %s task %q; want %s %s %s and no task", r.VMRef, r.Host, r.IP, r.CreateTask, run.VM, host, run.IP)
	}
	kp := r.KubernetesPod()
	if kp.Spec.NodeName != host || kp.Status.Phase != "Running" || string(kp.UID) != acc.UID || kp.Status.PodIP != run.IP {
		t.Errorf("KubernetesPod: nodeName %q phase %q uid %q ip %q", kp.Spec.NodeName, kp.Status.Phase, kp.UID, kp.Status.PodIP)
	}

	// Exactly one VM of that name, in the namespace folder, on the host.
	vms := e.vmsNamed("pv-" + acc.UID)
	if len(vms) != 1 {
		t.Fatalf("%d VMs named pv-%s, want 1", len(vms), acc.UID)
	}
	if vms[0].Host != host || vms[0].PowerState != types.VirtualMachinePowerStatePoweredOn {
		t.Errorf("VM on %s, %s; want on %s, poweredOn", vms[0].Host, vms[0].PowerState, host)
	}
	ctx := context.Background()
	var vm mo.VirtualMachine
	if err := object.NewVirtualMachine(e.vc.Client, vms[0].Ref).Properties(ctx, vms[0].Ref, []string{"config", "parent"}, &vm); err != nil {
		t.Fatal(err)
	}
	if vm.Config.Hardware.NumCPU != 2 || vm.Config.Hardware.MemoryMB != 1024 {
		t.Errorf("hardware %d vCPU %d MiB, want 2 / 1024", vm.Config.Hardware.NumCPU, vm.Config.Hardware.MemoryMB)
	}
	folderPath, err := inventoryPath(ctx, e, *vm.Parent)
	if err != nil || !strings.HasSuffix(folderPath, "/vm/podvisor/default") {
		t.Errorf("VM folder %q (%v), want …/vm/podvisor/default", folderPath, err)
	}

	// One NIC on pv-default with the MAC network-config chose; one child
	// disk per container whose parent is that container's image disk.
	var nics, disks int
	for _, d := range vm.Config.Hardware.Device {
		switch dev := d.(type) {
		case types.BaseVirtualEthernetCard:
			nics++
			card := dev.GetVirtualEthernetCard()
			if card.MacAddress != networkAttached(acc, host).Attachments[0].MAC {
				t.Errorf("NIC MAC %s, want the attached one", card.MacAddress)
			}
			if _, ok := card.Backing.(*types.VirtualEthernetCardDistributedVirtualPortBackingInfo); !ok {
				t.Errorf("NIC backing %T, want a distributed port group", card.Backing)
			}
		case *types.VirtualDisk:
			disks++
			b := dev.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
			if b.Parent == nil || !strings.HasPrefix(b.Parent.FileName, "[shared-ds] images/") {
				t.Errorf("disk %s has parent %+v, want an image disk", b.FileName, b.Parent)
			}
			if !strings.Contains(b.FileName, "/rw-") {
				t.Errorf("disk %s: want the container's rw- child disk", b.FileName)
			}
		}
	}
	if nics != 1 || disks != 3 {
		t.Errorf("%d NICs and %d disks, want 1 and 3", nics, disks)
	}

	extra := map[string]string{}
	for _, o := range vm.Config.ExtraConfig {
		ov := o.GetOptionValue()
		extra[ov.Key], _ = ov.Value.(string)
	}
	if extra["guestinfo.podvisor.uid"] != acc.UID || extra["guestinfo.podvisor.containers"] != "app,sidecar,logger" {
		t.Errorf("guestinfo uid %q containers %q", extra["guestinfo.podvisor.uid"], extra["guestinfo.podvisor.containers"])
	}
	for i, c := range []string{"app", "sidecar", "logger"} {
		p := "guestinfo.podvisor.container." + string(rune('0'+i)) + "."
		if extra[p+"name"] != c || !strings.HasPrefix(extra[p+"digest"], "sha256:") || extra[p+"image"] == "" {
			t.Errorf("guestinfo of container %d: name %q image %q digest %q", i, extra[p+"name"], extra[p+"image"], extra[p+"digest"])
		}
		var rootfs RootFS
		if err := json.Unmarshal([]byte(extra[p+"rootfs"]), &rootfs); err != nil || len(rootfs.Image) != 2 || rootfs.Mount != "overlay" {
			t.Errorf("rootfs of %s = %q (%v)", c, extra[p+"rootfs"], err)
		}
	}
	if extra["guestinfo.podvisor.container.0.command"] != `["/bin/app"]` || !strings.Contains(extra["guestinfo.podvisor.container.0.ports"], "8080") {
		t.Errorf("container 0 command %q ports %q", extra["guestinfo.podvisor.container.0.command"], extra["guestinfo.podvisor.container.0.ports"])
	}

	// A duplicate of any fact changes nothing and creates no second VM.
	e.facts(acc, host)
	e.request(testPod("web")) // the same manifest again: no-op (the first accepted satisfies the wait)
	if n := len(e.vmsNamed("pv-" + acc.UID)); n != 1 {
		t.Errorf("after repeated facts: %d VMs, want 1", n)
	}
}

func inventoryPath(ctx context.Context, e *env, ref types.ManagedObjectReference) (string, error) {
	return find.InventoryPath(ctx, e.vc.Client, ref)
}
