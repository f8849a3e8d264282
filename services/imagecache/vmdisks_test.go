package imagecache

import (
	"slices"
	"testing"

	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/vsphere"
)

// TestPodUID: a pod VM's pod is the one its guestinfo names; without
// guestinfo, the uid in its name, without the -<n> a pod VM made again
// after an eviction carries (before, the rebuild took "<uid>-<n>" for the
// uid, a reference no pod.deleted ever dropped).
func TestPodUID(t *testing.T) {
	const uid = "0b5c1f0e-6d1a-5e2b-9c3d-4f5a6b7c8d9e"
	withUID := func(u string) *types.VirtualMachineConfigInfo {
		return &types.VirtualMachineConfigInfo{ExtraConfig: []types.BaseOptionValue{
			&types.OptionValue{Key: vsphere.GuestinfoUID, Value: u}}}
	}
	for _, c := range []struct {
		name   string
		vmName string
		config *types.VirtualMachineConfigInfo
		want   string
	}{
		{name: "first VM", vmName: "pv-" + uid, want: uid},
		{name: "VM made again after an eviction", vmName: "pv-" + uid + "-1", want: uid},
		{name: "tenth VM of the pod", vmName: "pv-" + uid + "-10", want: uid},
		{name: "guestinfo names the pod", vmName: "pv-uid-web-2", config: withUID("uid-web"), want: "uid-web"},
		{name: "guestinfo wins over the name", vmName: "pv-" + uid + "-1", config: withUID("other"), want: "other"},
		{name: "empty guestinfo uid: the name", vmName: "pv-" + uid + "-3", config: withUID(""), want: uid},
		{name: "uid not of the provisioner's form: the name whole", vmName: "pv-uid-web", want: "uid-web"},
		{name: "upper-case hex is no provisioner uid", vmName: "pv-0B5C1F0E-6D1A-5E2B-9C3D-4F5A6B7C8D9E-1", want: "0B5C1F0E-6D1A-5E2B-9C3D-4F5A6B7C8D9E-1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := podUID(mo.VirtualMachine{ManagedEntity: mo.ManagedEntity{Name: c.vmName}, Config: c.config}); got != c.want {
				t.Errorf("podUID(%s) = %q, want %q", c.vmName, got, c.want)
			}
		})
	}
}

// TestDiskFiles: a disk's own file, then its parents' through every delta
// backing vSphere uses; a disk without a file backing has none.
func TestDiskFiles(t *testing.T) {
	file := func(n string) types.VirtualDeviceFileBackingInfo {
		return types.VirtualDeviceFileBackingInfo{FileName: n}
	}
	for _, c := range []struct {
		name    string
		backing types.BaseVirtualDeviceBackingInfo
		want    []string
	}{
		{name: "flat", backing: &types.VirtualDiskFlatVer2BackingInfo{VirtualDeviceFileBackingInfo: file("a")}, want: []string{"a"}},
		{name: "flat child of flat", backing: &types.VirtualDiskFlatVer2BackingInfo{VirtualDeviceFileBackingInfo: file("c"),
			Parent: &types.VirtualDiskFlatVer2BackingInfo{VirtualDeviceFileBackingInfo: file("b"),
				Parent: &types.VirtualDiskFlatVer2BackingInfo{VirtualDeviceFileBackingInfo: file("a")}}}, want: []string{"c", "b", "a"}},
		{name: "seSparse child", backing: &types.VirtualDiskSeSparseBackingInfo{VirtualDeviceFileBackingInfo: file("c"),
			Parent: &types.VirtualDiskSeSparseBackingInfo{VirtualDeviceFileBackingInfo: file("a")}}, want: []string{"c", "a"}},
		{name: "sparse child", backing: &types.VirtualDiskSparseVer2BackingInfo{VirtualDeviceFileBackingInfo: file("c"),
			Parent: &types.VirtualDiskSparseVer2BackingInfo{VirtualDeviceFileBackingInfo: file("a")}}, want: []string{"c", "a"}},
		{name: "raw disk mapping", backing: &types.VirtualDiskRawDiskMappingVer1BackingInfo{VirtualDeviceFileBackingInfo: file("r")}, want: []string{"r"}},
		{name: "no backing", backing: nil, want: nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := diskFiles(&types.VirtualDisk{VirtualDevice: types.VirtualDevice{Backing: c.backing}}); !slices.Equal(got, c.want) {
				t.Errorf("diskFiles = %q, want %q", got, c.want)
			}
		})
	}
}
