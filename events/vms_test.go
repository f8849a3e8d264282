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
