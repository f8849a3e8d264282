package podvm

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/bus"
)

func validSpec(disks int) Spec {
	s := Spec{Name: "pv-abc", VCPUs: 2, MemoryMiB: 1024, ExtraConfig: map[string]string{"guestinfo.podvisor.uid": "abc", "a": "1"}}
	for i := range disks {
		s.ImageDisks = append(s.ImageDisks, fmt.Sprintf("[ds] images/%d/disk.vmdk", i))
	}
	s.NICs = []NIC{{Network: "default", PortGroup: "pv-default", MAC: "00:50:56:00:00:01"}, {Network: "b", PortGroup: "pv-b"}}
	return s
}

func TestSpecValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Spec)
		wantErr string
	}{
		{"valid", func(*Spec) {}, ""},
		{"name without prefix", func(s *Spec) { s.Name = "web" }, "name \"web\""},
		{"no cpu", func(s *Spec) { s.VCPUs = 0 }, "vcpus 0"},
		{"no memory", func(s *Spec) { s.MemoryMiB = 0 }, "memoryMiB 0"},
		{"no image disks", func(s *Spec) { s.ImageDisks = nil }, "at least one image disk"},
		{"image disk twice", func(s *Spec) { s.ImageDisks[1] = s.ImageDisks[0] }, "imageDisks[1] \"[ds] images/0/disk.vmdk\": attached twice"},
		{"image disk not a datastore path", func(s *Spec) { s.ImageDisks[0] = "/images/top.vmdk" }, "imageDisks[0]"},
		{"too many disks", func(s *Spec) { *s = validSpec(60) }, "at most 60"},
		{"negative ephemeral", func(s *Spec) { s.EphemeralDiskMiB = -1 }, "ephemeralDiskMiB -1"},
		{"nic without port group", func(s *Spec) { s.NICs[1].PortGroup = "" }, "nics[1].portGroup: required"},
		{"boot disk", func(s *Spec) { s.BootDisk = "[ds] podvisor/boot-0123456789ab/podvm.vmdk" }, ""},
		{"boot disk not a datastore path", func(s *Spec) { s.BootDisk = "podvm.vmdk" }, "bootDisk: \"podvm.vmdk\" is not a datastore path"},
		{"boot disk not a descriptor", func(s *Spec) { s.BootDisk = "[ds] podvisor/boot-0123456789ab/podvm-flat.img" }, "bootDisk: \"[ds] podvisor/boot-0123456789ab/podvm-flat.img\" does not name a disk descriptor"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validSpec(2)
			tt.mutate(&s)
			err := s.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestBuildConfigSpecLayout(t *testing.T) {
	s := validSpec(15) // with disk 0, needs a second controller
	backings := []types.BaseVirtualDeviceBackingInfo{&types.VirtualEthernetCardNetworkBackingInfo{}, &types.VirtualEthernetCardNetworkBackingInfo{}}
	cs, err := BuildConfigSpec(s, "ds", backings)
	if err != nil {
		t.Fatal(err)
	}
	if cs.NumCPUs != 2 || cs.MemoryMB != 1024 || cs.GuestId != DefaultGuestID || cs.Files.VmPathName != "[ds]" {
		t.Errorf("config = cpus %d mem %d guest %s files %s", cs.NumCPUs, cs.MemoryMB, cs.GuestId, cs.Files.VmPathName)
	}
	var ctrls int
	ctrlBus := map[int32]int32{}
	var disks []*types.VirtualDisk
	var ops []types.VirtualDeviceConfigSpecFileOperation
	for _, dc := range cs.DeviceChange {
		spec := dc.GetVirtualDeviceConfigSpec()
		switch d := spec.Device.(type) {
		case *types.ParaVirtualSCSIController:
			ctrls++
			ctrlBus[d.Key] = d.BusNumber
		case *types.VirtualDisk:
			disks = append(disks, d)
			ops = append(ops, spec.FileOperation)
		case *types.VirtualVmxnet3:
			if d.MacAddress == "00:50:56:00:00:01" && d.AddressType != string(types.VirtualEthernetCardMacTypeManual) {
				t.Errorf("fixed MAC not manual")
			}
			if d.MacAddress == "" && d.AddressType != string(types.VirtualEthernetCardMacTypeGenerated) {
				t.Errorf("NIC without MAC not generated")
			}
		}
	}
	if ctrls != 2 || len(disks) != 16 {
		t.Fatalf("%d controllers, %d disks; want 2 and 16", ctrls, len(disks))
	}
	seen := map[string]bool{}
	for i, d := range disks {
		bus, ok := ctrlBus[d.ControllerKey]
		unit := fmt.Sprintf("scsi%d:%d", bus, *d.UnitNumber)
		if !ok || unit != DiskDevice(i) || seen[unit] || *d.UnitNumber == 7 {
			t.Errorf("disk %d at %s (controller known: %v), want %s, once, never unit 7", i, unit, ok, DiskDevice(i))
		}
		seen[unit] = true
		b := d.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if b.Parent != nil {
			t.Errorf("disk %d has a parent: no child disks in a pod VM", i)
		}
		if i == 0 {
			if b.FileName != "[ds] pv-abc/ephemeral.vmdk" || ops[0] != types.VirtualDeviceConfigSpecFileOperationCreate ||
				b.DiskMode != string(types.VirtualDiskModePersistent) || !*b.ThinProvisioned || d.CapacityInKB != DefaultEphemeralDiskMiB*1024 {
				t.Errorf("disk 0 = %s op %q mode %s capacity %d; want the thin ephemeral disk, created", b.FileName, ops[0], b.DiskMode, d.CapacityInKB)
			}
			continue
		}
		if b.FileName != s.ImageDisks[i-1] || ops[i] != "" || b.DiskMode != string(types.VirtualDiskModeIndependent_nonpersistent) {
			t.Errorf("disk %d = %s op %q mode %s; want image disk %s attached independent-nonpersistent, no file operation", i, b.FileName, ops[i], b.DiskMode, s.ImageDisks[i-1])
		}
	}
	if got := DiskDevice(15); got != "scsi1:0" {
		t.Errorf("DiskDevice(15) = %s, want scsi1:0", got)
	}
	if got := DiskDevice(7); got != "scsi0:8" {
		t.Errorf("DiskDevice(7) = %s, want scsi0:8", got)
	}
	for _, o := range cs.ExtraConfig {
		if k := o.GetOptionValue().Key; k == BootOrderKey || k == HDDOrderKey {
			t.Errorf("extra config %s without a boot disk", k)
		}
	}
	// ExtraConfig is sorted, so equal specs build equal configs.
	if k := cs.ExtraConfig[0].GetOptionValue().Key; k != "a" {
		t.Errorf("first ExtraConfig key %s, want a", k)
	}
	if _, err := BuildConfigSpec(s, "ds", backings[:1]); err == nil {
		t.Error("mismatched NIC backings accepted")
	}
	s.EphemeralDiskMiB = 512
	cs, _ = BuildConfigSpec(s, "ds", backings)
	for _, dc := range cs.DeviceChange {
		if d, ok := dc.GetVirtualDeviceConfigSpec().Device.(*types.VirtualDisk); ok {
			if d.CapacityInKB != 512*1024 {
				t.Errorf("configured ephemeral capacity %d KiB, want 512 MiB", d.CapacityInKB)
			}
			break
		}
	}
}

func TestIsTransient(t *testing.T) {
	soapFault := func(f types.BaseMethodFault) error {
		return &taskError{f: f}
	}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"insufficient resources", soapFault(&types.InsufficientResourcesFault{}), true},
		{"system error", soapFault(&types.SystemErrorFault{Reason: "timeout"}), true},
		{"task in progress", soapFault(&types.TaskInProgress{}), true},
		{"invalid argument", soapFault(&types.InvalidArgument{}), false},
		{"no permission", soapFault(&types.NoPermission{}), false},
		{"marked permanent", bus.Permanent(errors.New("port group missing")), false},
		{"marked to retry", bus.RetryAfter(errors.New("stale lookups"), 0), true},
		{"plain error", errors.New("boom"), false},
		{"nil", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IsTransient(tt.err); got != tt.want {
				t.Errorf("IsTransient(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
	if got := Reason(soapFault(&types.InvalidArgument{}), "X"); got != "InvalidArgument" {
		t.Errorf("Reason = %s, want InvalidArgument", got)
	}
	if got := Reason(errors.New("plain"), "Fallback"); got != "Fallback" {
		t.Errorf("Reason of a plain error = %s, want the default", got)
	}
}

// taskError carries a fault the way govmomi's task errors do.
type taskError struct{ f types.BaseMethodFault }

func (e *taskError) Error() string                { return "fault" }
func (e *taskError) Fault() types.BaseMethodFault { return e.f }

// A boot disk goes on a SATA controller of its own, shared read-only, and
// the BIOS boots from it; the pod's disks keep their SCSI units.
func TestBuildConfigSpecBootDisk(t *testing.T) {
	s := validSpec(2)
	s.BootDisk = "[shared] podvisor/boot-0123456789ab/podvm.vmdk"
	backings := []types.BaseVirtualDeviceBackingInfo{&types.VirtualEthernetCardNetworkBackingInfo{}, &types.VirtualEthernetCardNetworkBackingInfo{}}
	cs, err := BuildConfigSpec(s, "ds", backings)
	if err != nil {
		t.Fatal(err)
	}
	var sata []*types.VirtualAHCIController
	var boot, scsiDisks []*types.VirtualDisk
	var bootOp types.VirtualDeviceConfigSpecFileOperation
	scsi := map[int32]bool{}
	for _, dc := range cs.DeviceChange {
		spec := dc.GetVirtualDeviceConfigSpec()
		switch d := spec.Device.(type) {
		case *types.VirtualAHCIController:
			sata = append(sata, d)
		case *types.ParaVirtualSCSIController:
			scsi[d.Key] = true
		}
	}
	for _, dc := range cs.DeviceChange {
		spec := dc.GetVirtualDeviceConfigSpec()
		d, ok := spec.Device.(*types.VirtualDisk)
		switch {
		case !ok:
		case scsi[d.ControllerKey]:
			scsiDisks = append(scsiDisks, d)
		default:
			boot, bootOp = append(boot, d), spec.FileOperation
		}
	}
	if len(sata) != 1 || sata[0].BusNumber != 0 || len(boot) != 1 {
		t.Fatalf("%d SATA controllers, %d disks off the SCSI controllers; want one controller (bus 0) with the boot disk", len(sata), len(boot))
	}
	b := boot[0].Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	if boot[0].ControllerKey != sata[0].Key || *boot[0].UnitNumber != 0 || b.FileName != s.BootDisk ||
		b.DiskMode != string(types.VirtualDiskModeIndependent_nonpersistent) || bootOp != "" {
		t.Errorf("boot disk %s on controller %d unit %d, mode %s, file operation %q; want %s at sata0:0, independent-nonpersistent, the existing file",
			b.FileName, boot[0].ControllerKey, *boot[0].UnitNumber, b.DiskMode, bootOp, s.BootDisk)
	}
	if len(scsiDisks) != 3 {
		t.Errorf("%d disks on the SCSI controllers, want the ephemeral disk and 2 image disks", len(scsiDisks))
	}
	extra := map[string]string{}
	for _, o := range cs.ExtraConfig {
		v := o.GetOptionValue()
		extra[v.Key], _ = v.Value.(string)
	}
	if extra[BootOrderKey] != "hdd" || extra[HDDOrderKey] != "sata0:0" || extra["a"] != "1" {
		t.Errorf("extra config %v, want the BIOS to boot the hard disk sata0:0, and the spec's own keys", extra)
	}
	if len(s.ExtraConfig) != 2 {
		t.Errorf("the spec's extra config changed: %v", s.ExtraConfig)
	}
}
