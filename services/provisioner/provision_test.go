package provisioner

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// TestProvisionFullFlow drives one pod from request to powered-on VM
// (Starting: no guest reports here) and checks the VM as any vSphere client
// would see it.
func TestProvisionFullFlow(t *testing.T) {
	e := newEnv(t)
	svc, _ := e.start(testConfig())
	host := e.DC.Hosts()[1].Name

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
	run := testenv.Wait(e.Env, func(p *events.PodVMReady) bool { return p.UID == acc.UID })
	if run.Host != host || run.IP == "" || run.VM == "" {
		t.Fatalf("pod.vm.ready = %+v, want host %s and an IP", run, host)
	}

	r := e.waitRecord(svc, "default", "web", func(r *events.PodRecord) bool { return r.Phase == events.PodPhaseStarting })
	// Powered on is not running: no guest has said a container started.
	if n := len(testenv.All[events.PodRunning](e.Env, nil)); n != 0 || r.Reason != events.ReasonContainerCreating {
		t.Errorf("%d pod.running at power-on, reason %q; want none and ContainerCreating", n, r.Reason)
	}
	for _, c := range []string{events.PodConditionAccepted, events.PodConditionScheduled, events.PodConditionImagesReady,
		events.PodConditionNetworkAttached, events.PodConditionVMCreated, events.PodConditionVMReady} {
		if !r.IsTrue(c) {
			t.Errorf("condition %s not True in %+v", c, r.Conditions)
		}
	}
	if r.VMRef != run.VM || r.Host != host || r.IP != run.IP || r.CreateTask != "" {
		t.Errorf("record = vm %s host %s ip %s task %q; want %s %s %s and no task", r.VMRef, r.Host, r.IP, r.CreateTask, run.VM, host, run.IP)
	}
	kp := r.KubernetesPod()
	if kp.Spec.NodeName != host || kp.Status.Phase != "Pending" || string(kp.UID) != acc.UID || kp.Status.PodIP != run.IP {
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

	// One NIC on pv-default with the MAC network-config chose; disk 0 the
	// thin ephemeral disk in the VM's directory; every image disk the
	// containers' chains reference once (base is shared by all three),
	// attached read-only, independent-nonpersistent, without a child.
	var nics int
	units := map[string]*types.VirtualDisk{} // "scsi<bus>:<unit>" → disk
	bus := map[int32]int32{}                 // controller key → bus number
	for _, d := range vm.Config.Hardware.Device {
		if c, ok := d.(types.BaseVirtualSCSIController); ok {
			bus[c.GetVirtualSCSIController().Key] = c.GetVirtualSCSIController().BusNumber
		}
	}
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
			units[fmt.Sprintf("scsi%d:%d", bus[dev.ControllerKey], *dev.UnitNumber)] = dev
		}
	}
	if nics != 1 || len(units) != 5 {
		t.Errorf("%d NICs and %d disks, want 1 and 5 (ephemeral + base, app, sidecar, logger)", nics, len(units))
	}
	backing := func(d *types.VirtualDisk) *types.VirtualDiskFlatVer2BackingInfo {
		return d.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	}
	if d := units["scsi0:0"]; d == nil {
		t.Errorf("no disk 0 on scsi0:0")
	} else if b := backing(d); b.FileName != "[shared-ds] pv-"+acc.UID+"/ephemeral.vmdk" || b.Parent != nil ||
		b.DiskMode != string(types.VirtualDiskModePersistent) || b.ThinProvisioned == nil || !*b.ThinProvisioned || d.CapacityInKB != 8<<20 {
		t.Errorf("disk 0 = %s mode %s thin %v parent %v capacity %d KiB; want the thin 8 GiB ephemeral disk in the VM's directory",
			b.FileName, b.DiskMode, b.ThinProvisioned, b.Parent, d.CapacityInKB)
	}
	for unit, d := range units {
		if unit == "scsi0:0" {
			continue
		}
		if b := backing(d); !strings.HasPrefix(b.FileName, "[shared-ds] podvisor-images/") || b.Parent != nil ||
			b.DiskMode != string(types.VirtualDiskModeIndependent_nonpersistent) {
			t.Errorf("disk %s = %s mode %s parent %v; want an image disk, independent-nonpersistent", unit, b.FileName, b.DiskMode, b.Parent)
		}
	}

	// The guest spec in guestinfo names those very devices.
	extra := map[string]string{}
	for _, o := range vm.Config.ExtraConfig {
		ov := o.GetOptionValue()
		extra[ov.Key], _ = ov.Value.(string)
	}
	if extra["guestinfo.podvisor.uid"] != acc.UID || extra["guestinfo.podvisor.name"] != "web" || extra["guestinfo.podvisor.namespace"] != "default" {
		t.Errorf("guestinfo uid %q pod %q/%q", extra["guestinfo.podvisor.uid"], extra["guestinfo.podvisor.namespace"], extra["guestinfo.podvisor.name"])
	}
	spec, err := guestchannel.UnmarshalSpec([]byte(extra[guestchannel.GuestinfoSpec]))
	if err != nil {
		t.Fatalf("guestinfo spec: %v", err)
	}
	chainOf := map[string]string{} // chainID → disk path
	for _, d := range spec.Disks {
		dev := units[d.Unit]
		if dev == nil {
			t.Errorf("spec disk %+v: no device at %s", d, d.Unit)
			continue
		}
		if backing(dev).FileName != d.Path {
			t.Errorf("spec disk at %s is %s, the device there is %s", d.Unit, d.Path, backing(dev).FileName)
		}
		chainOf[d.ChainID] = d.Path
	}
	if len(spec.Disks) != len(units) || len(spec.Containers) != 3 {
		t.Fatalf("spec: %d disks for %d devices, %d containers", len(spec.Disks), len(units), len(spec.Containers))
	}
	app := spec.Containers[0]
	if app.Name != "app" || len(app.Chain) != 2 || chainOf[app.Chain[0]] != imageDisk("app") || chainOf[app.Chain[1]] != imageDisk("base") ||
		app.ImageDigest == "" || strings.Join(app.Command, " ") != "/bin/app" || len(app.Ports) != 1 || app.Ports[0].ContainerPort != 8080 {
		t.Errorf("spec of app = %+v; want its chain top first (app, base), digest, command and port", app)
	}
	if spec.RestartPolicy != "Always" || spec.TerminationGracePeriodSeconds != 30 || len(spec.NICs) != 1 || spec.NICs[0].IP != run.IP {
		t.Errorf("spec policy %s grace %d nics %+v", spec.RestartPolicy, spec.TerminationGracePeriodSeconds, spec.NICs)
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

// Image chains on a datastore the pod's host does not mount (prepared for
// an earlier placement, in another cluster) are not this placement's
// images: the pod waits for the image cache's chains on the new host's
// datastores instead of failing on a create the host cannot do.
func TestImagesOfAnEarlierPlacementAreWaitedOver(t *testing.T) {
	e := newEnv(t)
	svc, _ := e.start(testConfig())
	host := e.DC.Hosts()[0].Name
	acc := e.request(testPod("moved"))

	elsewhere := imagesReady(acc)
	other := sim.ClusterDatastore("cluster-9")
	for i := range elsewhere.Containers {
		c := &elsewhere.Containers[i]
		c.Datastore = other
		c.Disk = strings.Replace(c.Disk, sim.SharedDatastore, other, 1)
		for j := range c.Chain {
			c.Chain[j] = strings.Replace(c.Chain[j], sim.SharedDatastore, other, 1)
		}
	}
	e.Send("podvisor/scheduler", events.TypePodScheduled, &events.PodScheduled{
		PodRef: acc.PodRef, Host: host, Cluster: simtest.ClusterOf(e.T, e.DC, host), Datastores: []string{sim.SharedDatastore},
	})
	e.Send("podvisor/imagecache", events.TypePodImagesReady, elsewhere)
	e.Send("podvisor/netconfig", events.TypePodNetworkAttached, networkAttached(acc, host))
	r := e.waitRecord(svc, "default", "moved", func(r *events.PodRecord) bool { return r.NetworkHost == host })
	if got := missingFacts(r); r.Phase == events.PodPhaseFailed || !slices.Equal(got, []string{factImages}) {
		t.Fatalf("with chains on a datastore %s does not mount: phase %s (%s), missing %v; want waiting for images", host, r.Phase, r.Message, got)
	}

	e.Send("podvisor/imagecache", events.TypePodImagesReady, imagesReady(acc))
	ready := testenv.Wait(e.Env, func(p *events.PodVMReady) bool { return p.UID == acc.UID })
	if ready.Host != host {
		t.Errorf("pod.vm.ready on %s, want %s", ready.Host, host)
	}
	if n := len(testenv.All[events.PodFailed](e.Env, func(p *events.PodFailed) bool { return p.UID == acc.UID })); n != 0 {
		t.Errorf("%d pod.failed for a pod whose images were being prepared again", n)
	}
}
