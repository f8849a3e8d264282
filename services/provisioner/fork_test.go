package provisioner

import (
	"context"
	"testing"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner/templates"
	"github.com/podvisor/podvisor/shared/telemetry"
	"github.com/podvisor/podvisor/shared/testenv"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// imagePod is a pod of one container whose image is the image disk named
// container (imagesReady derives the chain from the container's name).
func imagePod(name, container string) *corev1.Pod {
	return &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: container, Image: "registry.local/" + container + ":1.0", Command: []string{"/bin/" + container},
			Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceMemory: resource.MustParse("256Mi")}},
		}}},
	}
}

// TestPodVMsForkFromTemplates: with templates on, the first pod of an
// image is created (VMForked False, NoTemplate) and builds its host's
// template; the next pod of the image is an instant clone of it, with its
// own NIC MAC; a failing InstantClone falls back to a create with the
// reason on the pod; a pod of another image gets a template of its own,
// which replaces the first one (one warm template per host). A fork reads
// the template VM once per template, and again after a failed fork; a
// forked VM comes up running and is not powered on again, a created one is
// (the provisioner's spans say so).
func TestPodVMsForkFromTemplates(t *testing.T) {
	prevTP := otel.GetTracerProvider()
	spans := telemetry.NewRecorder(0)
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sdktrace.NewSimpleSpanProcessor(spans)))
	otel.SetTracerProvider(tp)
	t.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		otel.SetTracerProvider(prevTP)
	})
	// spanOf is the provisioner's span of a name for a pod, nil if none.
	spanOf := func(pod, name string) *telemetry.Span {
		found := spans.Find(func(sp telemetry.Span) bool { return sp.Name == name && sp.Attrs["pod"] == "default/"+pod })
		if len(found) == 0 {
			return nil
		}
		return &found[len(found)-1]
	}
	read := func(pod string) bool {
		t.Helper()
		sp := spanOf(pod, "provisioner.instant_clone")
		if sp == nil {
			t.Fatalf("pod %s: no provisioner.instant_clone span", pod)
		}
		return sp.Attrs["template.read"] == "true"
	}
	poweredOn := func(pod string) bool { return spanOf(pod, "provisioner.power_on") != nil }

	e := newEnv(t)
	cfg := testConfig()
	cfg.TemplatesWarm = 1
	svc, _ := e.start(cfg)
	host := e.dc.Hosts()[0].Name
	ctx := context.Background()

	deploy := func(pod *corev1.Pod) *events.PodRecord {
		t.Helper()
		acc := e.request(pod)
		e.facts(acc, host)
		return e.waitRecord(svc, "default", pod.Name, func(r *events.PodRecord) bool { return r.Phase == events.PodPhaseStarting })
	}
	forked := func(r *events.PodRecord) (status, reason, message string) {
		for _, c := range r.Conditions {
			if c.Type == events.PodConditionVMForked {
				return c.Status, c.Reason, c.Message
			}
		}
		return "", "", ""
	}
	readyTemplate := func(chain string) templates.Record {
		t.Helper()
		var got templates.Record
		e.Eventually("a ready template of "+chain, func() bool {
			recs, err := svc.templates.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range recs {
				if r.State == templates.StateReady && len(r.Shape.ImageDisks) > 0 && r.Shape.ImageDisks[len(r.Shape.ImageDisks)-1] == imageDisk(chain) {
					got = r
					return true
				}
			}
			return false
		})
		return got
	}

	first := deploy(imagePod("first", "app"))
	if st, reason, _ := forked(first); st != events.ConditionFalse || reason != templates.ReasonNoTemplate {
		t.Fatalf("first pod of the image: VMForked %s/%s, want False/NoTemplate", st, reason)
	}
	tmpl := readyTemplate("app")
	if e.dc.ForkedFrom(first.VMRef) != "" {
		t.Fatal("the first pod's VM is a clone; it was to be created")
	}

	second := deploy(imagePod("second", "app"))
	if st, reason, msg := forked(second); st != events.ConditionTrue || reason != templates.ReasonForked {
		t.Fatalf("second pod: VMForked %s/%s (%s), want True/InstantClone", st, reason, msg)
	}
	if got := e.dc.ForkedFrom(second.VMRef); got != tmpl.VMRef {
		t.Fatalf("second pod's VM %s is forked from %q, want the template %s", second.VMRef, got, tmpl.VMRef)
	}
	devices, err := object.NewVirtualMachine(e.vc.Client, vmRef(second.VMRef)).Device(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nics := devices.SelectByType((*types.VirtualEthernetCard)(nil))
	if len(nics) != 1 || nics[0].(types.BaseVirtualEthernetCard).GetVirtualEthernetCard().MacAddress != second.Attachments[0].MAC {
		t.Fatalf("forked VM's NICs %d, want one with the pod's MAC %s", len(nics), second.Attachments[0].MAC)
	}
	if !second.IsTrue(events.PodConditionVMCreated) || second.VMRef == "" {
		t.Fatal("the forked VM is not on the pod's record")
	}
	if !read("second") || poweredOn("second") || !poweredOn("first") {
		t.Fatalf("first fork of the template: read it %v (want true), powered on again %v (want false); created pod powered on %v (want true)",
			read("second"), poweredOn("second"), poweredOn("first"))
	}
	// The next fork of the same template reads nothing of it: neither the
	// VM nor its record (the watch of the bucket delivered it).
	if r := deploy(imagePod("second-b", "app")); e.dc.ForkedFrom(r.VMRef) != tmpl.VMRef {
		t.Fatal("the pod after the second is not forked from the template")
	} else if read("second-b") {
		t.Fatal("the second fork of the template read the template VM again")
	} else if sp := spanOf("second-b", "provisioner.instant_clone"); sp.Attrs["template.record.read"] != "false" {
		t.Fatalf("the second fork of the template read its record from the bucket (template.record.read %q)", sp.Attrs["template.record.read"])
	}

	// A pod that asks not to be forked is created.
	optOut := imagePod("opted-out", "app")
	optOut.Annotations = map[string]string{events.AnnotationInstantClone: "false"}
	if r := deploy(optOut); e.dc.ForkedFrom(r.VMRef) != "" {
		t.Fatal("the pod that opted out runs in a fork")
	} else if st, reason, _ := forked(r); st != events.ConditionFalse || reason != templates.ReasonOptedOut {
		t.Fatalf("opted-out pod: VMForked %s/%s, want False/OptedOut", st, reason)
	}

	// A failing InstantClone: the pod VM is created; the pod says why.
	if err := e.dc.AddFault(simulator.FaultInjectionRule{MethodName: "InstantClone_Task", ObjectType: "VirtualMachine",
		Probability: 1, FaultType: simulator.FaultTypeInsufficientResourcesFault, MaxCount: 1}); err != nil {
		t.Fatal(err)
	}
	third := deploy(imagePod("third", "app"))
	if st, reason, _ := forked(third); st != events.ConditionFalse || reason != templates.ReasonInstantCloneFailed {
		t.Fatalf("third pod with InstantClone failing: VMForked %s/%s, want False/InstantCloneFailed", st, reason)
	}
	if e.dc.ForkedFrom(third.VMRef) != "" || !third.IsTrue(events.PodConditionVMCreated) {
		t.Fatal("the third pod's VM was to be created after the failed fork")
	}
	// After a failed fork the template is read afresh.
	if r := deploy(imagePod("third-b", "app")); e.dc.ForkedFrom(r.VMRef) != tmpl.VMRef {
		t.Fatal("the pod after the failed fork is not forked from the template")
	} else if !read("third-b") {
		t.Fatal("the fork after a failed one used what was read before it")
	}

	// Another image: its own template, which replaces the first.
	deploy(imagePod("fourth", "logger"))
	newer := readyTemplate("logger")
	e.Eventually("the first image's template removed", func() bool {
		recs, err := svc.templates.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(recs) == 1 && recs[0].Name == newer.Name && len(e.vmsNamed(tmpl.Name)) == 0
	})
	fifth := deploy(imagePod("fifth", "logger"))
	if got := e.dc.ForkedFrom(fifth.VMRef); got != newer.VMRef {
		t.Fatalf("fifth pod forked from %q, want the new template %s", got, newer.VMRef)
	}
	// Forked pods outlive their template: the second pod's VM still runs.
	if vm, err := e.vms.Get(ctx, vmRef(second.VMRef)); err != nil || vm == nil || vm.PowerState != types.VirtualMachinePowerStatePoweredOn {
		t.Fatalf("the second pod's VM after its template went: %+v, %v", vm, err)
	}
	_ = testenv.Logger
}
