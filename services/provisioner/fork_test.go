package provisioner

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner/templates"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/telemetry"
	"github.com/podvisor/podvisor/shared/testenv"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
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

// startForking runs a provisioner that keeps one template warm per host
// and forks pod VMs ahead of their network when early (once it is attached
// otherwise); it returns the env, the service and the host the tests place
// their pods on.
func startForking(t *testing.T, early bool) (*env, *Service, string) {
	t.Helper()
	e := newEnv(t)
	cfg := testConfig()
	cfg.TemplatesWarm = 1
	cfg.ForkEarly = early
	svc, _ := e.start(cfg)
	return e, svc, e.DC.Hosts()[0].Name
}

// forked is the VMForked condition of a pod's record: its status, reason
// and message, all "" while the record has none.
func forked(r *events.PodRecord) (status, reason, message string) {
	c, _ := r.Condition(events.PodConditionVMForked)
	return c.Status, c.Reason, c.Message
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

	// Forks once the network is attached (TestPodVMsForkBeforeTheirNetwork
	// has those made before it).
	e, svc, host := startForking(t, false)
	ctx := context.Background()

	deploy := func(pod *corev1.Pod) *events.PodRecord {
		t.Helper()
		acc := e.request(pod)
		e.facts(acc, host)
		return e.waitRecord(svc, "default", pod.Name, func(r *events.PodRecord) bool { return r.Phase == events.PodPhaseStarting })
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
	if e.DC.ForkedFrom(first.VMRef) != "" {
		t.Fatal("the first pod's VM is a clone; it was to be created")
	}

	second := deploy(imagePod("second", "app"))
	if st, reason, msg := forked(second); st != events.ConditionTrue || reason != templates.ReasonForked {
		t.Fatalf("second pod: VMForked %s/%s (%s), want True/InstantClone", st, reason, msg)
	}
	if got := e.DC.ForkedFrom(second.VMRef); got != tmpl.VMRef {
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
	if r := deploy(imagePod("second-b", "app")); e.DC.ForkedFrom(r.VMRef) != tmpl.VMRef {
		t.Fatal("the pod after the second is not forked from the template")
	} else if read("second-b") {
		t.Fatal("the second fork of the template read the template VM again")
	} else if sp := spanOf("second-b", "provisioner.instant_clone"); sp.Attrs["template.record.read"] != "false" {
		t.Fatalf("the second fork of the template read its record from the bucket (template.record.read %q)", sp.Attrs["template.record.read"])
	}

	// A pod that asks not to be forked is created.
	optOut := imagePod("opted-out", "app")
	optOut.Annotations = map[string]string{events.AnnotationInstantClone: "false"}
	if r := deploy(optOut); e.DC.ForkedFrom(r.VMRef) != "" {
		t.Fatal("the pod that opted out runs in a fork")
	} else if st, reason, _ := forked(r); st != events.ConditionFalse || reason != templates.ReasonOptedOut {
		t.Fatalf("opted-out pod: VMForked %s/%s, want False/OptedOut", st, reason)
	}

	// A failing InstantClone: the pod VM is created; the pod says why.
	if err := e.DC.AddFault(simulator.FaultInjectionRule{MethodName: "InstantClone_Task", ObjectType: "VirtualMachine",
		Probability: 1, FaultType: simulator.FaultTypeInsufficientResourcesFault, MaxCount: 1}); err != nil {
		t.Fatal(err)
	}
	third := deploy(imagePod("third", "app"))
	if st, reason, _ := forked(third); st != events.ConditionFalse || reason != templates.ReasonInstantCloneFailed {
		t.Fatalf("third pod with InstantClone failing: VMForked %s/%s, want False/InstantCloneFailed", st, reason)
	}
	if e.DC.ForkedFrom(third.VMRef) != "" || !third.IsTrue(events.PodConditionVMCreated) {
		t.Fatal("the third pod's VM was to be created after the failed fork")
	}
	// After a failed fork the template is read afresh.
	if r := deploy(imagePod("third-b", "app")); e.DC.ForkedFrom(r.VMRef) != tmpl.VMRef {
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
	if got := e.DC.ForkedFrom(fifth.VMRef); got != newer.VMRef {
		t.Fatalf("fifth pod forked from %q, want the new template %s", got, newer.VMRef)
	}
	// Forked pods outlive their template: the second pod's VM still runs.
	if vm, err := e.vms.Get(ctx, vmRef(second.VMRef)); err != nil || vm == nil || vm.PowerState != types.VirtualMachinePowerStatePoweredOn {
		t.Fatalf("the second pod's VM after its template went: %+v, %v", vm, err)
	}
	_ = testenv.Logger
}

// A template record whose VM reference names another pod's VM now (a
// vCenter rebuilt from nothing numbers its VMs again) is never forked: the
// pod is created, and the record goes so that the template is built again.
func TestATemplateReferenceToAnotherVMIsNotForked(t *testing.T) {
	e, svc, host := startForking(t, false)
	deploy := func(name string) *events.PodRecord {
		t.Helper()
		acc := e.request(imagePod(name, "app"))
		e.facts(acc, host)
		return e.waitRecord(svc, "default", name, func(r *events.PodRecord) bool { return r.Phase == events.PodPhaseStarting })
	}
	first := deploy("first")
	tmpl := e.readyTemplate(svc)
	tmpl.VMRef, tmpl.UpdatedAt = first.VMRef, time.Now()
	testenv.Put(e.Env, events.BucketPodTemplates, tmpl.Name, &tmpl)

	second := deploy("second")
	if from := e.DC.ForkedFrom(second.VMRef); from != "" {
		t.Fatalf("the second pod's VM is forked from %s (the first pod's VM is %s)", from, first.VMRef)
	}
	if c, _ := second.Condition(events.PodConditionVMForked); c.Reason != templates.ReasonInstantCloneFailed {
		t.Errorf("VMForked %s/%s (%s), want False/%s", c.Status, c.Reason, c.Message, templates.ReasonInstantCloneFailed)
	}
	e.Eventually("the template record pointing at the first pod's VM gone", func() bool {
		recs, err := svc.templates.List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return !slices.ContainsFunc(recs, func(r templates.Record) bool { return r.VMRef == first.VMRef })
	})
	if vm, err := e.vms.Get(context.Background(), vmRef(first.VMRef)); err != nil || vm == nil || vm.PowerState != types.VirtualMachinePowerStatePoweredOn {
		t.Errorf("the first pod's VM: %+v, %v; want it untouched and on", vm, err)
	}
}

// readyTemplate waits for a Ready template of svc and returns it.
func (e *env) readyTemplate(svc *Service) templates.Record {
	t := e.T
	t.Helper()
	var tmpl templates.Record
	e.Eventually("a ready template", func() bool {
		recs, err := svc.templates.List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if r.State == templates.StateReady {
				tmpl = r
				return true
			}
		}
		return false
	})
	return tmpl
}

// TestPodVMsForkBeforeTheirNetwork: with a template ready, a pod placed
// with its images ready is forked at once, before its network is
// attached: its VM runs, its card has its cable out and no address of the
// pod's, its guest spec waits for the network, and the pod is not said to
// have a VM ready. When the network is attached the card moves onto the
// pod's port group with the pod's MAC, connected, the guest gets the spec
// with the network, and only then is the VM ready. A pod whose network
// fails, or whose host refuses its network, loses its early fork.
func TestPodVMsForkBeforeTheirNetwork(t *testing.T) {
	e, svc, host := startForking(t, true)
	ctx := context.Background()
	// schedule publishes the pod's placement on host and its images, not
	// yet its network: the point where a pod VM may fork early.
	schedule := func(acc *events.PodAccepted) {
		t.Helper()
		e.Send("podvisor/scheduler", events.TypePodScheduled, &events.PodScheduled{
			PodRef: acc.PodRef, Host: host, Cluster: simtest.ClusterOf(t, e.DC, host), Datastores: []string{sim.SharedDatastore}})
		e.Send("podvisor/imagecache", events.TypePodImagesReady, imagesReady(acc))
	}
	placed := func(pod *corev1.Pod) (*events.PodAccepted, *events.PodRecord) {
		t.Helper()
		acc := e.request(pod)
		schedule(acc)
		return acc, e.waitRecord(svc, "default", pod.Name, func(r *events.PodRecord) bool {
			_, reason, _ := forked(r)
			return r.VMRef != "" && reason == templates.ReasonForkedEarly
		})
	}
	// forkFailsAheadOfNetwork places a pod whose fork ahead of its network
	// fails (vCenter faults method once), waits until the pod says so,
	// then attaches the network and returns the record once the pod's VM
	// starts.
	forkFailsAheadOfNetwork := func(method, name string) *events.PodRecord {
		t.Helper()
		if err := e.DC.AddFault(simulator.FaultInjectionRule{MethodName: method, ObjectType: "VirtualMachine",
			Probability: 1, FaultType: simulator.FaultTypeInsufficientResourcesFault, MaxCount: 1}); err != nil {
			t.Fatal(err)
		}
		acc := e.request(imagePod(name, "app"))
		schedule(acc)
		e.waitRecord(svc, "default", name, func(r *events.PodRecord) bool {
			st, reason, _ := forked(r)
			return st == events.ConditionFalse && reason == templates.ReasonInstantCloneFailed
		})
		e.Send("podvisor/netconfig", events.TypePodNetworkAttached, networkAttached(acc, host))
		return e.waitRecord(svc, "default", name, func(r *events.PodRecord) bool { return r.Phase == events.PodPhaseStarting })
	}
	card := func(ref string) *types.VirtualEthernetCard {
		t.Helper()
		devices, err := object.NewVirtualMachine(e.vc.Client, vmRef(ref)).Device(ctx)
		if err != nil {
			t.Fatal(err)
		}
		nics := devices.SelectByType((*types.VirtualEthernetCard)(nil))
		if len(nics) != 1 {
			t.Fatalf("VM %s has %d cards, want 1", ref, len(nics))
		}
		return nics[0].(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
	}
	guestSpec := func(ref string) *guestchannel.PodSpec {
		t.Helper()
		var m mo.VirtualMachine
		if err := object.NewVirtualMachine(e.vc.Client, vmRef(ref)).Properties(ctx, vmRef(ref), []string{"config.extraConfig"}, &m); err != nil {
			t.Fatal(err)
		}
		for _, o := range m.Config.ExtraConfig {
			if v := o.GetOptionValue(); v.Key == guestchannel.GuestinfoSpec {
				spec, err := guestchannel.UnmarshalSpec([]byte(v.Value.(string)))
				if err != nil {
					t.Fatal(err)
				}
				return spec
			}
		}
		t.Fatalf("VM %s has no guest spec", ref)
		return nil
	}

	// The first pod of the image builds the template (nothing to fork).
	acc := e.request(imagePod("first", "app"))
	e.facts(acc, host)
	e.waitRecord(svc, "default", "first", func(r *events.PodRecord) bool { return r.Phase == events.PodPhaseStarting })
	tmpl := e.readyTemplate(svc)

	acc, r := placed(imagePod("early", "app"))
	if e.DC.ForkedFrom(r.VMRef) != tmpl.VMRef {
		t.Fatalf("the early pod's VM %s is not forked from the template %s", r.VMRef, tmpl.VMRef)
	}
	if r.Phase != events.PodPhaseScheduled || r.IsTrue(events.PodConditionVMReady) || !r.IsTrue(events.PodConditionVMCreated) {
		t.Fatalf("early fork before its network: phase %s, VMReady %v, VMCreated %v; want Scheduled, no VM ready, a VM created",
			r.Phase, r.IsTrue(events.PodConditionVMReady), r.IsTrue(events.PodConditionVMCreated))
	}
	if c := card(r.VMRef); c.Connectable == nil || c.Connectable.Connected || c.Connectable.StartConnected {
		t.Fatalf("the early fork's card before the network: %+v, want its cable out", c.Connectable)
	}
	if spec := guestSpec(r.VMRef); !spec.NetworkPending || len(spec.NICs) != 0 || spec.UID != r.UID {
		t.Fatalf("the early fork's guest spec: networkPending %v, %d nics, uid %s; want waiting, none, the pod's", spec.NetworkPending, len(spec.NICs), spec.UID)
	}
	early := r.VMRef
	e.Send("podvisor/netconfig", events.TypePodNetworkAttached, networkAttached(acc, host))
	r = e.waitRecord(svc, "default", "early", func(r *events.PodRecord) bool { return r.Phase == events.PodPhaseStarting })
	if r.VMRef != early {
		t.Fatalf("the pod's VM changed from %s to %s when its network came", early, r.VMRef)
	}
	if st, reason, _ := forked(r); st != events.ConditionTrue || reason != templates.ReasonForked {
		t.Fatalf("VMForked after the network: %s/%s, want True/InstantClone", st, reason)
	}
	c := card(r.VMRef)
	pb, ok := c.Backing.(*types.VirtualEthernetCardDistributedVirtualPortBackingInfo)
	if !ok || c.MacAddress != r.Attachments[0].MAC || c.Connectable == nil || !c.Connectable.Connected || !c.Connectable.StartConnected {
		t.Fatalf("the card after the network: backing %#v, MAC %s, %+v; want the pod's port group and MAC %s, connected", c.Backing, c.MacAddress, c.Connectable, r.Attachments[0].MAC)
	}
	var pg mo.DistributedVirtualPortgroup
	pgRef := types.ManagedObjectReference{Type: "DistributedVirtualPortgroup", Value: pb.Port.PortgroupKey}
	if err := object.NewCommon(e.vc.Client, pgRef).Properties(ctx, pgRef, []string{"name"}, &pg); err != nil || pg.Name != r.Attachments[0].PortGroup {
		t.Fatalf("the card is on port group %s (%q, %v), want %s", pb.Port.PortgroupKey, pg.Name, err, r.Attachments[0].PortGroup)
	}
	if spec := guestSpec(r.VMRef); spec.NetworkPending || len(spec.NICs) != 1 || spec.NICs[0].MAC != r.Attachments[0].MAC || spec.NICs[0].IP != r.Attachments[0].IP {
		t.Fatalf("the guest spec after the network: %+v, want the pod's card and address", spec.NICs)
	}

	// The network fails: the early fork goes with the pod.
	acc, r = placed(imagePod("early-fails", "app"))
	e.Send("podvisor/netconfig", events.TypePodNetworkFailed, &events.PodNetworkFailed{PodRef: acc.PodRef, Network: acc.Networks[0],
		Reason: "PoolExhausted", Message: "no address left"})
	e.waitRecord(svc, "default", "early-fails", func(r *events.PodRecord) bool { return r.Phase == events.PodPhaseFailed })
	if vms := e.vmsNamed(r.VMName); len(vms) != 0 {
		t.Fatalf("the early fork of a pod whose network failed is still there: %+v", vms)
	}

	// The host refuses the network: the early fork is destroyed and the
	// pod placed again.
	acc, r = placed(imagePod("early-refused", "app"))
	e.Send("podvisor/netconfig", events.TypePodNetworkFailed, &events.PodNetworkFailed{PodRef: acc.PodRef, Network: acc.Networks[0],
		Host: host, Reason: events.ReasonNotRealizedOnHost, Message: "not on this host"})
	r = e.waitRecord(svc, "default", "early-refused", func(r *events.PodRecord) bool {
		return r.Phase == events.PodPhasePending && r.Host == ""
	})
	if vms := e.vmsNamed(r.VMName); len(vms) != 0 || r.VMRef != "" {
		t.Fatalf("the early fork on the host that refused the network is still there: %+v (record %q)", vms, r.VMRef)
	}

	// The fork ahead of the network fails: once the network comes the pod
	// VM is created (not forked again), the reason on the pod.
	r = forkFailsAheadOfNetwork("InstantClone_Task", "early-clone-fails")
	if st, reason, _ := forked(r); st != events.ConditionFalse || reason != templates.ReasonInstantCloneFailed || e.DC.ForkedFrom(r.VMRef) != "" {
		t.Fatalf("after a failed fork ahead of the network: VMForked %s/%s, forked from %q; want a created VM, False/InstantCloneFailed", st, reason, e.DC.ForkedFrom(r.VMRef))
	}

	// The fork ahead of the network fails after making its child (the
	// child's power-on fails): that child, its cables out and its guest
	// waiting for a network, must not become the pod's VM once the
	// network comes; the pod's VM is created.
	r = forkFailsAheadOfNetwork("PowerOnVM_Task", "early-child-fails")
	if from := e.DC.ForkedFrom(r.VMRef); from != "" {
		t.Fatalf("after a fork ahead of the network whose child failed to power on, the pod's VM %s is that child (forked from %s), want a created VM", r.VMRef, from)
	}
	if spec := guestSpec(r.VMRef); spec.NetworkPending || len(spec.NICs) != 1 {
		t.Fatalf("the pod's VM after a failed fork: guest spec networkPending %v, %d nics; want the pod's network", spec.NetworkPending, len(spec.NICs))
	}
	if vms := e.vmsNamed(r.VMName); len(vms) != 1 {
		t.Fatalf("VMs named %s: %d, want the pod's one", r.VMName, len(vms))
	}
}
