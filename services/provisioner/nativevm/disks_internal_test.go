package nativevm

import (
	"strings"
	"testing"

	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
)

func diskAt(file string, unit int32, capacity int64) *types.VirtualDisk {
	return diskChange(file, capacity, 1000, unit, "").Device.(*types.VirtualDisk)
}

// A disk named as an extra disk is a file <name>.vmdk in the VM's own
// directory, other than the boot disk.
func TestExtraDiskNames(t *testing.T) {
	const vm = "nv-0a1b"
	tests := []struct {
		name, file, want string
	}{
		{name: "extra disk", file: "[ds1] nv-0a1b/data.vmdk", want: "data"},
		{name: "boot disk", file: "[ds1] nv-0a1b/root.vmdk"},
		{name: "template's second disk as vCenter names it", file: "[ds1] nv-0a1b/nv-0a1b_1.vmdk"},
		{name: "another VM's disk", file: "[ds1] nv-ffff/data.vmdk"},
		{name: "an image disk", file: "[ds1] podvisor-vmimages/0123/build-4567/root.vmdk"},
		{name: "not a disk descriptor", file: "[ds1] nv-0a1b/data-flat.img"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := extraDisk(diskAt(tt.file, 1, 1<<20), vm)
			if got != tt.want || ok != (tt.want != "") {
				t.Errorf("extraDisk(%s) = %q, %v; want %q", tt.file, got, ok, tt.want)
			}
		})
	}
}

// Which extra disks are podvisor's to detach: those the VM's disksKey
// lists; on a VM made before it listed them, every one of a VM podvisor
// created and none of one deployed from a content library (its template's
// disks are in the same directory).
func TestManagedDisks(t *testing.T) {
	listed := []types.BaseOptionValue{&types.OptionValue{Key: disksKey, Value: disksValue([]events.VMDisk{{Name: "data"}, {Name: "logs"}})}}
	library := events.VirtualMachineImageSpec{ContentLibrary: &events.ContentLibraryItem{Library: "l", Item: "i"}}
	tests := []struct {
		name      string
		image     events.VirtualMachineImageSpec
		extra     []types.BaseOptionValue
		wantNames []string
		wantAll   bool
	}{
		{name: "listed", extra: listed, wantNames: []string{"data", "logs"}},
		{name: "listed none", image: library, extra: []types.BaseOptionValue{&types.OptionValue{Key: disksKey, Value: disksValue(nil)}}},
		{name: "created before the list", wantAll: true},
		{name: "deployed before the list", image: library},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			names, all := managedDisks(&events.VMRecord{Image: tt.image}, &types.VirtualMachineConfigInfo{ExtraConfig: tt.extra})
			if all != tt.wantAll || len(names) != len(tt.wantNames) {
				t.Fatalf("managedDisks = %v, %v; want %v, %v", names, all, tt.wantNames, tt.wantAll)
			}
			for _, n := range tt.wantNames {
				if !names[n] {
					t.Errorf("managedDisks = %v: %s missing", names, n)
				}
			}
		})
	}
}

// hardwareDiffers reads what vCenter reports against the declaration.
func TestHardwareDiffers(t *testing.T) {
	rec := &events.VMRecord{UID: "0a1b", Size: events.VMSize{CPUs: 2, MemoryMiB: 1024},
		Spec:   events.VirtualMachineSpec{Disks: []events.VMDisk{{Name: "data", Size: "128Mi"}, {Name: "logs", Size: "32Mi"}}},
		Status: events.VirtualMachineStatus{NICs: []events.NetworkAttachment{{Network: "default", MAC: "00:50:56:3f:00:07"}}}}
	nic := &types.VirtualVmxnet3{VirtualVmxnet: types.VirtualVmxnet{VirtualEthernetCard: types.VirtualEthernetCard{MacAddress: "00:50:56:3F:00:07"}}}
	cfg := func(cpus int32, devices ...types.BaseVirtualDevice) *types.VirtualMachineConfigInfo {
		return &types.VirtualMachineConfigInfo{Hardware: types.VirtualHardware{NumCPU: cpus, MemoryMB: 1024, Device: devices},
			ExtraConfig: []types.BaseOptionValue{&types.OptionValue{Key: disksKey, Value: `["data","logs","old"]`}}}
	}
	root := diskAt("[ds1] nv-0a1b/root.vmdk", 0, 1<<30)
	data := diskAt("[ds1] nv-0a1b/data.vmdk", 1, 128<<20)
	logs := diskAt("[ds1] nv-0a1b/logs.vmdk", 2, 32<<20)
	tests := []struct {
		name string
		cfg  *types.VirtualMachineConfigInfo
		want []string // none when it matches
	}{
		{name: "as declared", cfg: cfg(2, root, data, logs, nic)},
		{name: "a template's disk beside", cfg: cfg(2, root, data, logs, nic, diskAt("[ds1] nv-0a1b/nv-0a1b.vmdk", 3, 1<<30))},
		{name: "disk not grown", cfg: cfg(2, root, diskAt("[ds1] nv-0a1b/data.vmdk", 1, 64<<20), logs, nic), want: []string{"disk data is 64 MiB, declared 128Mi"}},
		{name: "disk not attached", cfg: cfg(2, root, data, nic), want: []string{"disk logs not attached"}},
		{name: "disk not detached", cfg: cfg(2, root, data, logs, diskAt("[ds1] nv-0a1b/old.vmdk", 3, 1<<20), nic), want: []string{"disk old attached, not declared"}},
		{name: "CPUs and NIC", cfg: cfg(1, root, data, logs), want: []string{"1 vCPU and 1024 MiB, declared 2 and 1024", "no NIC 00:50:56:3f:00:07"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := hardwareDiffers(rec, tt.cfg)
			if (got == "") != (len(tt.want) == 0) {
				t.Fatalf("hardwareDiffers = %q, want %q", got, tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("hardwareDiffers = %q, want it to say %q", got, w)
				}
			}
		})
	}
}
