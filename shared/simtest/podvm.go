package simtest

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/shared/sim"
)

// PodVMDisk is a disk of a PodVM, created with the VM on the shared
// datastore as <vm name>/<File>, on SCSI controller 0 at the disk's index.
type PodVMDisk struct {
	File          string
	CapacityBytes int64
	// ReadOnly attaches it independent-nonpersistent, as image disks are.
	ReadOnly bool
	// Shared, a datastore path ("[ds] dir/disk.vmdk"), attaches that
	// existing disk instead of creating File in the VM's directory, as an
	// image disk or the boot disk is attached to many VMs.
	Shared string
}

// PodVM describes a VM shaped like a pod VM: disks and the pod spec in
// guestinfo.podvisor.spec.
type PodVM struct {
	Name     string
	Host     sim.HostSpec
	NumCPUs  int32
	MemoryMB int64
	Spec     *guestchannel.PodSpec
	Disks    []PodVMDisk
	// NICs are the VM's network cards, in order.
	NICs []PodVMNIC
	// ExtraConfig adds guestinfo.* (or other) values; with Spec nil the
	// VM is not a pod VM (a native VM boots its first disk).
	ExtraConfig map[string]string
	// PowerOn powers the VM on once it is created.
	PowerOn bool
	// Devices are added after the disks and cards (serial ports, say); their
	// keys must be negative and not in -300..-100.
	Devices []types.BaseVirtualDeviceConfigSpec
}

// BusyboxSpec is the spec of a pod VM in namespace default whose
// containers (each given by its name and command) all run busybox, an
// image of the one layer chain: hostname name, restart policy Never, the
// ephemeral disk at scsi0:0 and the image disk at scsi0:1 (CreatePodVM's
// first two disks).
func BusyboxSpec(uid, name, chain string, grace int64, containers ...guestchannel.Container) *guestchannel.PodSpec {
	cs := make([]guestchannel.Container, len(containers))
	for i, c := range containers {
		c.Image, c.Chain = "busybox", []string{chain}
		cs[i] = c
	}
	return &guestchannel.PodSpec{
		Version: guestchannel.SpecVersion, UID: uid, Namespace: "default", Name: name, Hostname: name,
		RestartPolicy: "Never", TerminationGracePeriodSeconds: grace,
		Disks: []guestchannel.Disk{
			{Role: guestchannel.DiskEphemeral, Unit: "scsi0:0", FS: "ext4"},
			{Role: guestchannel.DiskImage, Unit: "scsi0:1", FS: "erofs", ChainID: chain},
		},
		Containers: cs,
	}
}

// PodVMNIC is a network card of a PodVM on a distributed port group, with a
// manual MAC (as the provisioner gives the one IPAM allocated).
type PodVMNIC struct {
	PortGroup string
	MAC       string
}

// CreatePodVM creates the VM and returns it with the local paths of the
// flat extents of the disks it created, in order (where a test writes an
// image disk's filesystem); Shared disks are not among them.
func CreatePodVM(t testing.TB, c *govmomi.Client, d *sim.Datacenter, p PodVM) (*object.VirtualMachine, []string) {
	t.Helper()
	vm, extents, err := NewPodVM(context.Background(), c, d, p)
	if err != nil {
		t.Fatalf("simtest: %v", err)
	}
	return vm, extents
}

// NewPodVM is CreatePodVM returning its error, for goroutines other than
// the test's (a stand-in service that places VMs).
func NewPodVM(ctx context.Context, c *govmomi.Client, d *sim.Datacenter, p PodVM) (*object.VirtualMachine, []string, error) {
	var extra []types.BaseOptionValue
	if p.Spec != nil {
		spec, err := guestchannel.MarshalSpec(p.Spec)
		if err != nil {
			return nil, nil, err
		}
		extra = append(extra, &types.OptionValue{Key: guestchannel.GuestinfoSpec, Value: spec})
	}
	for _, k := range slices.Sorted(maps.Keys(p.ExtraConfig)) {
		extra = append(extra, &types.OptionValue{Key: k, Value: p.ExtraConfig[k]})
	}
	dc, err := find.NewFinder(c.Client, true).Datacenter(ctx, sim.DatacenterName)
	if err != nil {
		return nil, nil, err
	}
	folders, err := dc.Folders(ctx)
	if err != nil {
		return nil, nil, err
	}
	var pool types.ManagedObjectReference
	for _, cl := range d.Clusters() {
		if cl.Name == p.Host.Cluster {
			pool = cl.ResourcePool
		}
	}
	ds, err := d.Datastore(sim.SharedDatastore)
	if err != nil {
		return nil, nil, err
	}
	changes := []types.BaseVirtualDeviceConfigSpec{&types.VirtualDeviceConfigSpec{
		Operation: types.VirtualDeviceConfigSpecOperationAdd,
		Device: &types.ParaVirtualSCSIController{VirtualSCSIController: types.VirtualSCSIController{
			VirtualController: types.VirtualController{VirtualDevice: types.VirtualDevice{Key: -100}},
			SharedBus:         types.VirtualSCSISharingNoSharing,
		}},
	}}
	var extents []string
	for i, disk := range p.Disks {
		unit := int32(i)
		if unit >= 7 {
			unit++ // unit 7 is the controller's own
		}
		mode := types.VirtualDiskModePersistent
		if disk.ReadOnly {
			mode = types.VirtualDiskModeIndependent_nonpersistent
		}
		file, op := "["+sim.SharedDatastore+"] "+p.Name+"/"+disk.File, types.VirtualDeviceConfigSpecFileOperationCreate
		if disk.Shared != "" {
			file, op = disk.Shared, ""
		}
		changes = append(changes, &types.VirtualDeviceConfigSpec{
			Operation:     types.VirtualDeviceConfigSpecOperationAdd,
			FileOperation: op,
			Device: &types.VirtualDisk{
				VirtualDevice: types.VirtualDevice{
					Key: -200 - unit, ControllerKey: -100, UnitNumber: &unit,
					Backing: &types.VirtualDiskFlatVer2BackingInfo{
						VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: file},
						DiskMode:                     string(mode), ThinProvisioned: types.NewBool(true),
					},
				},
				CapacityInKB: disk.CapacityBytes >> 10,
			},
		})
		if disk.Shared != "" {
			continue // not this VM's extent
		}
		flat := disk.File[:len(disk.File)-len(filepath.Ext(disk.File))] + "-flat" + filepath.Ext(disk.File)
		extents = append(extents, filepath.Join(ds.Dir, p.Name, flat))
	}
	for i, n := range p.NICs {
		pg, err := find.NewFinder(c.Client, true).SetDatacenter(dc).Network(ctx, n.PortGroup)
		if err != nil {
			return nil, nil, fmt.Errorf("port group %s: %w", n.PortGroup, err)
		}
		backing, err := pg.EthernetCardBackingInfo(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("port group %s: %w", n.PortGroup, err)
		}
		changes = append(changes, &types.VirtualDeviceConfigSpec{
			Operation: types.VirtualDeviceConfigSpecOperationAdd,
			Device: &types.VirtualVmxnet3{VirtualVmxnet: types.VirtualVmxnet{VirtualEthernetCard: types.VirtualEthernetCard{
				VirtualDevice: types.VirtualDevice{Key: int32(-300 - i), Backing: backing,
					Connectable: &types.VirtualDeviceConnectInfo{StartConnected: true, Connected: true}},
				AddressType: string(types.VirtualEthernetCardMacTypeManual),
				MacAddress:  n.MAC,
			}}},
		})
	}
	changes = append(changes, p.Devices...)
	cfg := types.VirtualMachineConfigSpec{
		Name:         p.Name,
		GuestId:      string(types.VirtualMachineGuestOsIdentifierOtherLinux64Guest),
		NumCPUs:      p.NumCPUs,
		MemoryMB:     p.MemoryMB,
		Files:        &types.VirtualMachineFileInfo{VmPathName: "[" + sim.SharedDatastore + "] " + p.Name},
		DeviceChange: changes,
		ExtraConfig:  extra,
	}
	task, err := folders.VmFolder.CreateVM(ctx, cfg, object.NewResourcePool(c.Client, pool), object.NewHostSystem(c.Client, p.Host.Ref))
	if err != nil {
		return nil, nil, fmt.Errorf("create VM %s: %w", p.Name, err)
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("create VM %s: %w", p.Name, err)
	}
	vm := object.NewVirtualMachine(c.Client, info.Result.(types.ManagedObjectReference))
	if p.PowerOn {
		task, err := vm.PowerOn(ctx)
		if err == nil {
			err = task.Wait(ctx)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("power on %s: %w", p.Name, err)
		}
	}
	return vm, extents, nil
}

// AddPortGroup adds a port group to a distributed switch, as network-config
// does, and returns its key (what a card's backing names).
func AddPortGroup(t testing.TB, c *govmomi.Client, sw types.ManagedObjectReference, name string) string {
	t.Helper()
	ctx := context.Background()
	task, err := object.NewDistributedVirtualSwitch(c.Client, sw).AddPortgroup(ctx, []types.DVPortgroupConfigSpec{{Name: name, NumPorts: 8,
		Type: string(types.DistributedVirtualPortgroupPortgroupTypeEarlyBinding)}})
	if err != nil || task.Wait(ctx) != nil {
		t.Fatalf("simtest: add port group %s: %v", name, err)
	}
	pg, err := Finder(t, c).Network(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	b, err := pg.EthernetCardBackingInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return b.(*types.VirtualEthernetCardDistributedVirtualPortBackingInfo).Port.PortgroupKey
}

// Finder looks things up in the simulated datacenter.
func Finder(t testing.TB, c *govmomi.Client) *find.Finder {
	t.Helper()
	f := find.NewFinder(c.Client, true)
	dc, err := f.Datacenter(context.Background(), sim.DatacenterName)
	if err != nil {
		t.Fatal(err)
	}
	return f.SetDatacenter(dc)
}
