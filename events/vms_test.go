package events

import (
	"errors"
	"strings"
	"testing"
)

const vmManifest = `apiVersion: podvisor.io/v1alpha1
kind: VirtualMachineClass
metadata: {name: small}
spec: {cpus: 2, memory: 4Gi, reservations: {cpuMHz: 500, memory: 1001Mi}}
---
apiVersion: podvisor.io/v1alpha1
kind: VirtualMachineImage
metadata: {name: vmos}
spec: {oci: "127.0.0.1:5000/podvisor/vmos:1.0"}
---
apiVersion: podvisor.io/v1alpha1
kind: VirtualMachine
metadata: {name: vm1, namespace: team-a}
spec: {className: small, imageName: vmos, userData: "#cloud-config"}
status: {phase: Ready, ips: ["10.0.0.1"]}
`

func TestDecodeVMObjects(t *testing.T) {
	objs, err := DecodeObjects(strings.NewReader(vmManifest))
	if err != nil {
		t.Fatalf("DecodeObjects: %v", err)
	}
	if len(objs) != 3 || objs[0].VMClass == nil || objs[1].VMImage == nil || objs[2].VM == nil {
		t.Fatalf("objects %+v, want a class, an image and a VM", objs)
	}
	size := objs[0].VMClass.Size()
	// 1001Mi rounds up to vSphere's 4 MiB granularity.
	if size != (VMSize{CPUs: 2, MemoryMiB: 4096, CPUReservationMHz: 500, MemoryReservationMiB: 1004}) {
		t.Errorf("size %+v", size)
	}
	if size.CPUMilli() != 2000 || size.MemoryBytes() != 4<<30 {
		t.Errorf("ledger charge %d m / %d B, want 2000 m / 4 GiB", size.CPUMilli(), size.MemoryBytes())
	}
	vm := objs[2].VM
	if vm.Status != nil {
		t.Error("a printed status must not travel in a declaration")
	}
	if vm.Key() != "team-a/vm1" || vm.Spec.EffectivePowerState() != PowerStatePoweredOn ||
		len(vm.Spec.EffectiveNetworks()) != 1 || vm.Spec.EffectiveNetworks()[0] != DefaultNetwork {
		t.Errorf("defaults: key %s power %s networks %v", vm.Key(), vm.Spec.EffectivePowerState(), vm.Spec.EffectiveNetworks())
	}
}

func TestDecodeVMObjectErrorsNameFields(t *testing.T) {
	bad := `apiVersion: podvisor.io/v1alpha1
kind: VirtualMachine
metadata: {name: vm1}
spec: {className: small, imageName: vmos, powerState: Running, networks: [default, default], cpus: 4}
`
	_, err := DecodeObjects(strings.NewReader(bad))
	if err == nil {
		t.Fatal("want an error")
	}
	var de *DocumentError
	if !errors.As(err, &de) || de.Kind != KindVirtualMachine || de.Name != "vm1" {
		t.Fatalf("error %v does not say which document", err)
	}
	for _, want := range []string{"spec.cpus", "spec.powerState", "spec.networks[1]"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

// A VM's disks keep their size or grow: vSphere extends a virtual disk
// but never shrinks one, so a declaration that shrinks a disk is refused
// naming the disk, both sizes and the field.
func TestVMChangeRefusedShrinkingADisk(t *testing.T) {
	prev := VirtualMachineSpec{Disks: []VMDisk{{Name: "data", Size: "128Mi"}, {Name: "logs", Size: "1Gi"}}}
	tests := []struct {
		name      string
		next      []VMDisk
		wantField string // "" when the change is taken
		wantMsg   []string
	}{
		{name: "unchanged", next: prev.Disks},
		{name: "grown", next: []VMDisk{{Name: "data", Size: "256Mi"}, {Name: "logs", Size: "1Gi"}}},
		{name: "same size in other units", next: []VMDisk{{Name: "data", Size: "128Mi"}, {Name: "logs", Size: "1024Mi"}}},
		{name: "removed and added", next: []VMDisk{{Name: "scratch", Size: "1Mi"}}},
		{name: "shrunk", next: []VMDisk{{Name: "logs", Size: "1Gi"}, {Name: "data", Size: "64Mi"}},
			wantField: "spec.disks[1].size", wantMsg: []string{"disk data is 128Mi (128 MiB)", "cannot shrink to 64Mi (64 MiB)", "declare 128Mi or more"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := VirtualMachineSpec{Disks: tt.next}.ChangeRefused(prev)
			if tt.wantField == "" {
				if err != nil {
					t.Fatalf("ChangeRefused = %v, want the change taken", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Field() != tt.wantField {
				t.Fatalf("ChangeRefused = %v, want a refusal of %s", err, tt.wantField)
			}
			for _, w := range tt.wantMsg {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("refusal %q does not say %q", err, w)
				}
			}
		})
	}
}

// The boot disk's name is not an extra disk's: both would be root.vmdk in
// the VM's directory.
func TestVMDiskNamedRootIsRefused(t *testing.T) {
	vm := VirtualMachine{Metadata: NamespacedMeta{Name: "vm1"}, Spec: VirtualMachineSpec{ClassName: "small", ImageName: "vmos",
		Disks: []VMDisk{{Name: "data", Size: "1Gi"}, {Name: VMBootDiskName, Size: "1Gi"}}}}
	var ve *ValidationError
	if err := vm.Validate(); !errors.As(err, &ve) || ve.Field() != "spec.disks[1].name" {
		t.Fatalf("Validate = %v, want spec.disks[1].name refused", err)
	}
}
