package cli

import (
	"strings"
	"testing"

	"github.com/podvisor/podvisor/events"
)

// Each kind apply takes becomes one event on the object's key, and apply
// names the object kind/key (a migration by its ID: its key is its pod's).
func TestRequestsForNamesEachObject(t *testing.T) {
	const manifest = `apiVersion: v1
kind: Pod
metadata: {name: web}
spec: {containers: [{name: a, image: nginx}]}
---
apiVersion: podvisor.io/v1alpha1
kind: Network
metadata: {name: other}
spec: {vlan: 0, cidr: 10.77.0.0/24, gateway: 10.77.0.1}
---
apiVersion: podvisor.io/v1alpha1
kind: NetworkService
metadata: {name: pod-dns}
spec: {type: dns, networks: [default, other]}
---
apiVersion: podvisor.io/v1alpha1
kind: Migration
metadata: {name: move-web}
spec: {pod: web, namespace: shop}
---
apiVersion: podvisor.io/v1alpha1
kind: GuestCluster
metadata: {name: gc1, namespace: team-a}
spec: {version: v1.37.2, controlPlane: {replicas: 1, className: small}, workers: {replicas: 1, className: small}}
---
apiVersion: podvisor.io/v1alpha1
kind: VirtualMachine
metadata: {name: vm1}
spec: {className: small, imageName: vmos, powerState: PoweredOn}
---
apiVersion: podvisor.io/v1alpha1
kind: VirtualMachineClass
metadata: {name: small}
spec: {cpus: 2, memory: 4Gi}
---
apiVersion: podvisor.io/v1alpha1
kind: VirtualMachineImage
metadata: {name: vmos}
spec: {oci: registry.example/podvisor/vmos:1.0}
`
	objs, err := events.DecodeObjects(strings.NewReader(manifest))
	if err != nil {
		t.Fatal(err)
	}
	reqs, err := requestsFor(objs)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct{ what, ceType, subject string }{
		{"pod/default/web", events.TypePodRequested, "default/web"},
		{"network/other", events.TypeNetworkDeclared, "other"},
		{"networkservice/pod-dns", events.TypeNetworkServiceDeclared, "pod-dns"},
		{"migration/move-web", events.TypeMigrationRequested, "shop/web"},
		{"guestcluster/team-a/gc1", events.TypeGuestClusterRequested, "team-a/gc1"},
		{"vm/default/vm1", events.TypeVMDeclared, "default/vm1"},
		{"vmclass/small", events.TypeVMClassDeclared, "small"},
		{"vmimage/vmos", events.TypeVMImageDeclared, "vmos"},
	}
	if len(reqs) != len(want) {
		t.Fatalf("%d requests, want %d", len(reqs), len(want))
	}
	for i, w := range want {
		r := reqs[i]
		if r.what != w.what || r.event.Type() != w.ceType || r.event.Subject() != w.subject {
			t.Errorf("request %d: %s %s on %s, want %s %s on %s", i, r.what, r.event.Type(), r.event.Subject(), w.what, w.ceType, w.subject)
		}
		if isPod := w.ceType == events.TypePodRequested; r.isPod != isPod || (r.pod != nil) != isPod {
			t.Errorf("request %d (%s): isPod %v, pod %v", i, r.what, r.isPod, r.pod != nil)
		}
	}
	if reqs[5].vm == nil || reqs[5].vm.Metadata.Namespace != events.DefaultNamespace {
		t.Errorf("the VM's request: vm %+v, want it declared with the default namespace", reqs[5].vm)
	}
	if reqs[4].gc == nil || reqs[4].gc.Metadata.Name != "gc1" {
		t.Errorf("the guest cluster's request: gc %+v", reqs[4].gc)
	}
}
