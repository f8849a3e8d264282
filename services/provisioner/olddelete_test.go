package provisioner

import (
	"strings"
	"testing"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/testenv"
)

// A delete waits for the pod's containers to stop; the guest's report
// finishes it, while the delete request itself comes back only at the
// bound. If the pod was requested anew meanwhile (same name, new uid), that
// redelivery is about the earlier pod: it is acknowledged and leaves the
// new pod, its record and its VM alone, although the delete names no uid
// (as the CLI, the nats CLI and SDKs send it). A first delivery of such a
// delete is answered NotFound, and touches nothing either.
func TestADeleteDeliveredAgainAfterThePodIsMadeAgainLeavesTheNewPod(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig()
	cfg.AwaitGuestStop = true
	svc, _ := e.start(cfg)
	host := e.DC.Hosts()[0].Name
	pod := testPod("rep")
	grace := int64(3600) // the delete's own redelivery, at the bound, never comes here
	pod.Spec.TerminationGracePeriodSeconds = &grace

	first, r := e.startPod(svc, pod)
	e.fold(svc, report(first, r.VMName, "b", 1, running("app"), running("sidecar"), running("logger")))
	del := e.Send("test/client", events.TypePodDeleteRequested, &events.PodDeleteRequested{Name: "rep"})
	e.waitRecord(svc, "default", "rep", func(r *events.PodRecord) bool { return r != nil && r.Phase == events.PodPhaseTerminating })
	e.Send("podvisor/hostagent", events.TypePodContainersReported,
		report(first, r.VMName, "b", 2, exited("app", 0), exited("sidecar", 0), exited("logger", 0)))
	testenv.Wait(e.Env, func(p *events.PodDeleted) bool { return p.UID == first.UID })
	e.waitRecord(svc, "default", "rep", func(r *events.PodRecord) bool { return r == nil })

	e.Send("test/client", events.TypePodRequested, &events.PodRequested{Pod: *pod})
	again := testenv.Wait(e.Env, func(a *events.PodAccepted) bool { return a.Name == "rep" && a.UID != first.UID })
	e.facts(again, host)
	testenv.Wait(e.Env, func(p *events.PodVMReady) bool { return p.UID == again.UID })
	r = e.waitRecord(svc, "default", "rep", func(r *events.PodRecord) bool { return r != nil && r.Phase == events.PodPhaseStarting })
	vm := r.VMName
	if r = e.fold(svc, report(again, vm, "b2", 1, running("app"), running("sidecar"), running("logger"))); r.Phase != events.PodPhaseRunning {
		t.Fatalf("the new pod is %s, want Running", r.Phase)
	}

	for _, delivery := range []uint64{2, 1} {
		if err := e.deliverAgain(svc, del, delivery); err != nil {
			t.Fatalf("delivery %d of the earlier pod's delete: %v; want it acknowledged", delivery, err)
		}
		got := e.record(svc, "default", "rep")
		if got == nil || got.UID != again.UID || !got.DeletionRequestedAt.IsZero() || got.Phase != events.PodPhaseRunning {
			t.Fatalf("after delivery %d of the earlier pod's delete the record is %+v; want the new pod %s Running, not deleting", delivery, got, again.UID)
		}
		if !e.poweredOn(vm) {
			t.Fatalf("after delivery %d of the earlier pod's delete the new pod's VM %s is not on", delivery, vm)
		}
	}
	rj := testenv.Wait(e.Env, func(p *events.PodRejected) bool { return p.Name == "rep" })
	if rj.Reason != events.ReasonNotFound || !strings.Contains(rj.Message, "earlier pod") {
		t.Errorf("first delivery of the earlier pod's delete answered %s %q; want NotFound naming the earlier pod", rj.Reason, rj.Message)
	}
	if n := len(testenv.All(e.Env, func(p *events.PodRejected) bool { return p.Name == "rep" })); n != 1 {
		t.Errorf("%d pod.rejected, want 1 (the redelivery answers nothing)", n)
	}
	if d := testenv.All(e.Env, func(p *events.PodDeleted) bool { return p.UID == again.UID }); len(d) != 0 {
		t.Errorf("the new pod was announced deleted")
	}
}
