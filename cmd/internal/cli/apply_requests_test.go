package cli

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvisor/podvisor/events"
)

// Each kind apply takes becomes one event on the object's key, and apply
// names the object kind/key (a migration by its ID: its key is its pod's).
func TestRequestsForNamesEachObject(t *testing.T) {
	nodes := events.GuestClusterNodes{Replicas: 1, ClassName: "small"}
	objs := []events.Object{
		{Kind: "Pod", Pod: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a", Image: "nginx"}}}}},
		{Kind: "Network", Network: &events.Network{Metadata: events.Meta{Name: "other"},
			Spec: events.NetworkSpec{CIDR: "10.77.0.0/24", Gateway: "10.77.0.1"}}},
		{Kind: "NetworkService", NetworkService: &events.NetworkService{Metadata: events.Meta{Name: "pod-dns"},
			Spec: events.NetworkServiceSpec{Type: "dns", Networks: []string{"default", "other"}}}},
		{Kind: "Migration", Migration: &events.Migration{Metadata: events.Meta{Name: "move-web"},
			Spec: events.MigrationSpec{Pod: "web", Namespace: "shop"}}},
		{Kind: "GuestCluster", GuestCluster: &events.GuestCluster{Metadata: events.NamespacedMeta{Name: "gc1", Namespace: "team-a"},
			Spec: events.GuestClusterSpec{Version: "v1.37.2", ControlPlane: nodes, Workers: nodes}}},
		{Kind: "VirtualMachine", VM: &events.VirtualMachine{Metadata: events.NamespacedMeta{Name: "vm1"},
			Spec: events.VirtualMachineSpec{ClassName: "small", ImageName: "vmos"}}},
		{Kind: "VirtualMachineClass", VMClass: &events.VirtualMachineClass{Metadata: events.Meta{Name: "small"},
			Spec: events.VirtualMachineClassSpec{CPUs: 2, Memory: "4Gi"}}},
		{Kind: "VirtualMachineImage", VMImage: &events.VirtualMachineImage{Metadata: events.Meta{Name: "vmos"},
			Spec: events.VirtualMachineImageSpec{OCI: "registry.example/podvisor/vmos:1.0"}}},
	}
	for i := range objs {
		objs[i].Document = i + 1
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

// Every bad object is named by its document, not only the first, and the
// good ones still make their requests (apply then publishes none of them).
func TestRequestsForNamesEveryBadDocument(t *testing.T) {
	objs := []events.Object{
		{Document: 1, Kind: "Pod", Pod: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "empty"}}},
		{Document: 2, Kind: "Pod", Pod: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a", Image: "nginx"}}}}},
		{Document: 3, Kind: "Gizmo"},
	}
	reqs, err := requestsFor(objs)
	if len(reqs) != 1 || reqs[0].what != "pod/default/web" {
		t.Errorf("requests %+v, want only pod/default/web's", reqs)
	}
	many, ok := err.(interface{ Unwrap() []error })
	if !ok || len(many.Unwrap()) != 2 {
		t.Fatalf("error %v, want one per bad document", err)
	}
	for i, want := range []string{"document 1 (pod/default/empty): pod.spec.containers", `document 3: kind "Gizmo" is not supported`} {
		if got := many.Unwrap()[i].Error(); !strings.HasPrefix(got, want) {
			t.Errorf("error %d = %q, want it to start with %q", i, got, want)
		}
	}
}
