package provisioner

import (
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/testenv"
	"github.com/vmware/govmomi/vim25/types"
	corev1 "k8s.io/api/core/v1"
)

// poweredOn says whether the pod's VM exists and is on.
func (e *env) poweredOn(name string) bool {
	e.T.Helper()
	vms := e.vmsNamed(name)
	return len(vms) == 1 && vms[0].PowerState == types.VirtualMachinePowerStatePoweredOn
}

func TestDeleteWaitsForTheContainersToStop(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig()
	cfg.AwaitGuestStop = true
	cfg.GuestStopSlack = 300 * time.Millisecond
	svc, _ := e.start(cfg)

	t.Run("guest reports them stopped", func(t *testing.T) {
		pod := testPod("graceful")
		grace := int64(3600) // the bound is never reached here
		pod.Spec.TerminationGracePeriodSeconds = &grace
		acc, r := e.startPod(svc, pod)
		vm := r.VMName
		e.fold(svc, report(acc, vm, "b", 1, running("app"), running("sidecar"), running("logger")))

		e.Send("test/client", events.TypePodDeleteRequested, &events.PodDeleteRequested{Name: "graceful"})
		e.waitRecord(svc, "default", "graceful", func(r *events.PodRecord) bool { return r.Phase == events.PodPhaseTerminating })
		if !e.poweredOn(vm) {
			t.Fatalf("VM %s powered off before its containers stopped", vm)
		}
		// Stopping, not all stopped yet: still on.
		e.fold(svc, report(acc, vm, "b", 2, exited("app", 0), running("sidecar"), running("logger")))
		if !e.poweredOn(vm) || e.record(svc, "default", "graceful") == nil {
			t.Fatalf("VM %s powered off while containers still run", vm)
		}
		// Every container terminated: off and gone right after the report.
		e.Send("podvisor/hostagent", events.TypePodContainersReported,
			report(acc, vm, "b", 3, exited("app", 0), exited("sidecar", 137), exited("logger", 0)))
		testenv.Wait(e.Env, func(p *events.PodDeleted) bool { return p.UID == acc.UID })
		if n := len(e.vmsNamed(vm)); n != 0 {
			t.Errorf("%d VMs named %s after the delete, want 0", n, vm)
		}
		e.waitRecord(svc, "default", "graceful", func(r *events.PodRecord) bool { return r == nil })
		if n := len(testenv.All[events.PodRejected](e.Env, nil)); n != 0 {
			t.Errorf("%d pod.rejected after a delete that succeeded", n)
		}
	})

	t.Run("guest-less VM waits out the bound", func(t *testing.T) {
		pod := testPod("mute")
		grace := int64(1)
		pod.Spec.TerminationGracePeriodSeconds = &grace
		acc, r := e.startPod(svc, pod)
		vm := r.VMName

		e.Send("test/client", events.TypePodDeleteRequested, &events.PodDeleteRequested{Name: "mute"})
		r = e.waitRecord(svc, "default", "mute", func(r *events.PodRecord) bool { return r.Phase == events.PodPhaseTerminating })
		if !e.poweredOn(vm) {
			t.Fatalf("VM %s of a guest-less pod powered off at once", vm)
		}
		bound := r.DeletionRequestedAt.Add(time.Second + cfg.GuestStopSlack)
		testenv.Wait(e.Env, func(p *events.PodDeleted) bool { return p.UID == acc.UID })
		if now := time.Now(); now.Before(bound) {
			t.Errorf("deleted %s before the bound %s", now.Format(time.StampMilli), bound.Format(time.StampMilli))
		}
		if n := len(e.vmsNamed(vm)); n != 0 {
			t.Errorf("%d VMs named %s after the delete, want 0", n, vm)
		}
	})

	t.Run("finished pod is powered off at once", func(t *testing.T) {
		pod := testPod("done")
		pod.Spec.RestartPolicy = corev1.RestartPolicyNever
		grace := int64(3600)
		pod.Spec.TerminationGracePeriodSeconds = &grace
		acc, r := e.startPod(svc, pod)
		r = e.fold(svc, &events.PodContainersReported{PodRef: acc.PodRef, Host: "esx-1-01",
			VM: r.VMName, BootID: "b", Seq: 1, Phase: events.GuestPhaseSucceeded,
			ContainerStatuses: []corev1.ContainerStatus{exited("app", 0), exited("sidecar", 0), exited("logger", 0)}})
		if r.Phase != events.PodPhaseSucceeded {
			t.Fatalf("phase %s, want Succeeded", r.Phase)
		}
		e.Send("test/client", events.TypePodDeleteRequested, &events.PodDeleteRequested{Name: "done"})
		testenv.Wait(e.Env, func(p *events.PodDeleted) bool { return p.UID == acc.UID })
	})
}
