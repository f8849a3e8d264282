package podvm

import (
	"errors"
	"strings"
	"testing"

	"github.com/vmware/govmomi/vim25/types"
)

func validSpec(disks int) Spec {
	s := Spec{Name: "pv-abc", VCPUs: 2, MemoryMiB: 1024, ExtraConfig: map[string]string{"guestinfo.podvisor.uid": "abc", "a": "1"}}
	for i := range disks {
		s.Disks = append(s.Disks, Disk{Container: "c" + string(rune('a'+i)), Parent: "[ds] images/top.vmdk"})
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
		{"no disks", func(s *Spec) { s.Disks = nil }, "at least one container disk"},
		{"duplicate container", func(s *Spec) { s.Disks[1].Container = s.Disks[0].Container }, "disks[1].container \"ca\": duplicate"},
		{"bad container name", func(s *Spec) { s.Disks[0].Container = "Web_1" }, "disks[0].container"},
		{"parent not a datastore path", func(s *Spec) { s.Disks[0].Parent = "/images/top.vmdk" }, "disks[0].parent"},
		{"nic without port group", func(s *Spec) { s.NICs[1].PortGroup = "" }, "nics[1].portGroup: required"},
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
	s := validSpec(16) // needs a second controller
	backings := []types.BaseVirtualDeviceBackingInfo{&types.VirtualEthernetCardNetworkBackingInfo{}, &types.VirtualEthernetCardNetworkBackingInfo{}}
	cs, err := BuildConfigSpec(s, "ds", backings)
	if err != nil {
		t.Fatal(err)
	}
	if cs.NumCPUs != 2 || cs.MemoryMB != 1024 || cs.GuestId != DefaultGuestID || cs.Files.VmPathName != "[ds]" {
		t.Errorf("config = cpus %d mem %d guest %s files %s", cs.NumCPUs, cs.MemoryMB, cs.GuestId, cs.Files.VmPathName)
	}
	var ctrls, disks int
	units := map[int32]map[int32]bool{}
	ctrlKeys := map[int32]bool{}
	for _, dc := range cs.DeviceChange {
		spec := dc.GetVirtualDeviceConfigSpec()
		switch d := spec.Device.(type) {
		case *types.ParaVirtualSCSIController:
			ctrls++
			ctrlKeys[d.Key] = true
		case *types.VirtualDisk:
			disks++
			if spec.FileOperation != types.VirtualDeviceConfigSpecFileOperationCreate {
				t.Errorf("disk without file create")
			}
			if *d.UnitNumber == 7 {
				t.Errorf("disk on unit 7, the controller's own")
			}
			if units[d.ControllerKey] == nil {
				units[d.ControllerKey] = map[int32]bool{}
			}
			if units[d.ControllerKey][*d.UnitNumber] {
				t.Errorf("two disks on controller %d unit %d", d.ControllerKey, *d.UnitNumber)
			}
			units[d.ControllerKey][*d.UnitNumber] = true
			b := d.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
			if b.Parent == nil || b.Parent.FileName != "[ds] images/top.vmdk" || !strings.HasPrefix(b.FileName, "[ds] pv-abc/rw-") {
				t.Errorf("disk backing %s parent %+v", b.FileName, b.Parent)
			}
		case *types.VirtualVmxnet3:
			if d.MacAddress == "00:50:56:00:00:01" && d.AddressType != string(types.VirtualEthernetCardMacTypeManual) {
				t.Errorf("fixed MAC not manual")
			}
			if d.MacAddress == "" && d.AddressType != string(types.VirtualEthernetCardMacTypeGenerated) {
				t.Errorf("NIC without MAC not generated")
			}
		}
	}
	if ctrls != 2 || disks != 16 {
		t.Errorf("%d controllers, %d disks; want 2 and 16", ctrls, disks)
	}
	for k := range units {
		if !ctrlKeys[k] {
			t.Errorf("disk on unknown controller key %d", k)
		}
	}
	if got := DiskDevice(15); got != "scsi1:0" {
		t.Errorf("DiskDevice(15) = %s, want scsi1:0", got)
	}
	if got := DiskDevice(7); got != "scsi0:8" {
		t.Errorf("DiskDevice(7) = %s, want scsi0:8", got)
	}
	// ExtraConfig is sorted, so equal specs build equal configs.
	if k := cs.ExtraConfig[0].GetOptionValue().Key; k != "a" {
		t.Errorf("first ExtraConfig key %s, want a", k)
	}
	if _, err := BuildConfigSpec(s, "ds", backings[:1]); err == nil {
		t.Error("mismatched NIC backings accepted")
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
		{"marked permanent", Permanent(errors.New("port group missing")), false},
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
