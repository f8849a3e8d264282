package provisioner

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/simtest"
)

// guestSpecOf reads the guest spec in pod VM ref's guestinfo.
func (e *env) guestSpecOf(ref string) *guestchannel.PodSpec {
	e.T.Helper()
	var vm mo.VirtualMachine
	if err := e.vc.RetrieveOne(context.Background(), vmRef(ref), []string{"config.extraConfig"}, &vm); err != nil {
		e.T.Fatal(err)
	}
	for _, o := range vm.Config.ExtraConfig {
		if v := o.GetOptionValue(); v.Key == guestchannel.GuestinfoSpec {
			spec, err := guestchannel.UnmarshalSpec([]byte(v.Value.(string)))
			if err != nil {
				e.T.Fatalf("guest spec of %s: %v", ref, err)
			}
			return spec
		}
	}
	e.T.Fatalf("pod VM %s has no guest spec", ref)
	return nil
}

// A container that terminated for good is not run again when its pod is
// placed anew (its host lost): the new pod VM's spec marks it completed
// with its terminated state, and the new guest's report of it (that very
// state, no restart of its own) folds to the status it had, no restart
// counted and its last state kept, while a container that ran counts the
// new boot's start as a restart, as before. Twice: a second move marks
// it again and changes nothing of it either. Init containers are not
// marked (they run again in a new pod VM).
func TestACompletedContainerIsNotRunAgainWhenThePodMoves(t *testing.T) {
	e := newEnv(t)
	simtest.CreateDisks(t, e.vc, e.dco, "[shared-ds] podvisor-images", imageDisk("setup"))
	svc, _ := e.start(testConfig())
	hosts := e.DC.Hosts()
	pod := testPod("steps")
	pod.Spec.RestartPolicy = corev1.RestartPolicyNever
	pod.Spec.InitContainers = []corev1.Container{{Name: "setup", Image: "registry.local/setup:1.0"}}
	acc, r := e.startPod(svc, pod)

	begun := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	sidecar := exited("sidecar", 3)
	sidecar.State.Terminated.Message = "step failed"
	sidecar.State.Terminated.StartedAt, sidecar.State.Terminated.FinishedAt = metav1.NewTime(begun), metav1.NewTime(begun.Add(3*time.Second))
	want := *sidecar.State.Terminated
	p := report(acc, r.VMName, "b1", 1, running("app"), sidecar, running("logger"))
	p.InitContainerStatuses = []corev1.ContainerStatus{exited("setup", 0)}
	r = e.fold(svc, p)
	if r.Phase != events.PodPhaseRunning {
		t.Fatalf("phase %s, want Running", r.Phase)
	}

	for move, host := range []string{hosts[1].Name, hosts[0].Name} {
		gen := move + 1
		e.Send("podvisor/migration", events.TypePodEvicted, &events.PodEvicted{PodRef: acc.PodRef, Host: r.Host, Reason: "HostLost"})
		e.waitRecord(svc, "default", "steps", func(r *events.PodRecord) bool {
			return r.Phase == events.PodPhasePending && r.Generation == gen
		})
		e.facts(acc, host)
		r = e.waitRecord(svc, "default", "steps", func(r *events.PodRecord) bool {
			return r.Phase == events.PodPhaseStarting && r.Generation == gen && r.VMRef != ""
		})
		spec := e.guestSpecOf(r.VMRef)
		for _, c := range spec.Containers {
			switch got := c.Completed; {
			case c.Name != "sidecar" && got != nil:
				t.Errorf("move %d: %s marked completed (%+v), want it run", gen, c.Name, *got)
			case c.Name == "sidecar" && (got == nil || got.Kind != guestchannel.StateTerminated || got.ExitCode != 3 ||
				got.Reason != "Error" || got.Message != "step failed" || got.StartedAt == nil || !got.StartedAt.Equal(begun) ||
				got.FinishedAt == nil || !got.FinishedAt.Equal(begun.Add(3*time.Second))):
				t.Errorf("move %d: sidecar completed = %+v, want its terminated state %+v", gen, got, want)
			}
		}
		if spec.InitContainers[0].Completed != nil {
			t.Errorf("move %d: init container marked completed: it runs again in a new pod VM", gen)
		}

		// The new guest: app and logger run again, sidecar as the spec
		// said (the host agent's conversion of the agent's report).
		again := exited("sidecar", 3)
		again.State.Terminated = &want
		p := report(acc, r.VMName, fmt.Sprintf("b%d", gen+1), 1, running("app"), again, running("logger"))
		p.InitContainerStatuses = []corev1.ContainerStatus{exited("setup", 0)}
		r = e.fold(svc, p)
		by := statusesByName(r.ContainerStatuses)
		if s := by["sidecar"]; s.RestartCount != 0 || s.LastTerminationState != (corev1.ContainerState{}) ||
			!equality.Semantic.DeepEqual(s.State.Terminated, &want) {
			t.Errorf("move %d: sidecar = restartCount %d, state %+v, last state %+v; want no restart, the same state and no last state",
				gen, s.RestartCount, s.State, s.LastTerminationState)
		}
		if a := by["app"]; a.RestartCount != int32(gen) || a.LastTerminationState.Terminated == nil ||
			a.LastTerminationState.Terminated.Reason != reasonGuestRestarted {
			t.Errorf("move %d: app = restartCount %d, last state %+v; want %d and the guest's stop", gen, a.RestartCount, a.LastTerminationState, gen)
		}
		if c, _ := r.Condition(events.PodConditionReady); r.Phase != events.PodPhaseRunning || c.Status != events.ConditionFalse ||
			c.Message != "containers with unready status: [sidecar]" {
			t.Errorf("move %d: phase %s, Ready %+v; want Running, not ready naming sidecar", gen, r.Phase, c)
		}
	}
}

// A pod VM that boots again in place (found powered off, powered on by
// drift repair) keeps the spec it was made with, from before its
// container terminated for good: the spec is rewritten before the
// power-on so that the new boot is told, as a new pod VM is, and the new
// guest's report of it (that very state, no restart of its own) folds to
// the status it had: its restart count and last state kept, while a
// container that ran counts the new boot's start as a restart. A second
// cycle finds the mark there and does not reconfigure the VM again.
func TestACompletedContainerIsNotRunAgainWhenItsVMBootsAgainInPlace(t *testing.T) {
	e := newEnv(t)
	svc, _ := e.start(testConfig())
	ctx := context.Background()
	pod := testPod("batch")
	pod.Spec.RestartPolicy = corev1.RestartPolicyOnFailure
	acc, r := e.startPod(svc, pod)
	ref := vmRef(r.VMRef)

	// sidecar failed once, then exited 0: done for good under OnFailure.
	begun := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	sidecar := exited("sidecar", 0)
	sidecar.State.Terminated.StartedAt, sidecar.State.Terminated.FinishedAt = metav1.NewTime(begun), metav1.NewTime(begun.Add(3*time.Second))
	sidecar.RestartCount = 1
	sidecar.LastTerminationState.Terminated = &corev1.ContainerStateTerminated{ExitCode: 1, Reason: "Error",
		StartedAt: metav1.NewTime(begun.Add(-time.Minute)), FinishedAt: metav1.NewTime(begun.Add(-time.Second))}
	want, wantLast := *sidecar.State.Terminated, sidecar.LastTerminationState
	r = e.fold(svc, report(acc, r.VMName, "b1", 1, running("app"), sidecar, running("logger")))
	if r.Phase != events.PodPhaseRunning {
		t.Fatalf("phase %s, want Running", r.Phase)
	}
	if c := e.guestSpecOf(r.VMRef).Containers[1]; c.Completed != nil {
		t.Fatalf("the spec the VM was made with marks %s completed", c.Name)
	}

	changeVersion := func() string {
		t.Helper()
		var vm mo.VirtualMachine
		if err := e.vc.RetrieveOne(ctx, ref, []string{"config.changeVersion"}, &vm); err != nil {
			t.Fatal(err)
		}
		return vm.Config.ChangeVersion
	}
	var marked string
	for cycle, boot := range []string{"b2", "b3"} {
		if err := e.vms.PowerOff(ctx, ref); err != nil {
			t.Fatal(err)
		}
		if rep, err := svc.Resync(ctx); err != nil || rep[RepairPowerState] != 1 {
			t.Fatalf("cycle %d: Resync = %v, %v; want the VM powered on", cycle+1, rep, err)
		}
		if vm, err := e.vms.Get(ctx, ref); err != nil || vm == nil || vm.PowerState != types.VirtualMachinePowerStatePoweredOn {
			t.Fatalf("cycle %d: VM %+v, %v; want it on", cycle+1, vm, err)
		}
		for _, c := range e.guestSpecOf(r.VMRef).Containers {
			switch got := c.Completed; {
			case c.Name != "sidecar" && got != nil:
				t.Errorf("cycle %d: %s marked completed (%+v), want it run", cycle+1, c.Name, *got)
			case c.Name == "sidecar" && (got == nil || got.Kind != guestchannel.StateTerminated || got.ExitCode != 0 ||
				got.Reason != "Completed" || got.StartedAt == nil || !got.StartedAt.Equal(begun) ||
				got.FinishedAt == nil || !got.FinishedAt.Equal(begun.Add(3*time.Second))):
				t.Errorf("cycle %d: sidecar completed = %+v, want its terminated state %+v", cycle+1, got, want)
			}
		}
		if cycle == 0 {
			marked = changeVersion()
		} else if v := changeVersion(); v != marked {
			t.Errorf("cycle %d: the VM was reconfigured again (changeVersion %s, was %s) with its spec marked already", cycle+1, v, marked)
		}

		// The new boot, as its agent runs the spec: app and logger start
		// again, and sidecar too unless the spec marks it completed, then
		// reported with that state (the host agent's conversion).
		again := running("sidecar")
		if e.guestSpecOf(r.VMRef).Containers[1].Completed != nil {
			again = exited("sidecar", 0)
			again.State.Terminated = &want
		}
		r = e.fold(svc, report(acc, r.VMName, boot, 1, running("app"), again, running("logger")))
		by := statusesByName(r.ContainerStatuses)
		if s := by["sidecar"]; s.RestartCount != 1 || !equality.Semantic.DeepEqual(s.LastTerminationState, wantLast) ||
			!equality.Semantic.DeepEqual(s.State.Terminated, &want) {
			t.Errorf("cycle %d: sidecar = restartCount %d, state %+v, last state %+v; want 1, the same state and last state",
				cycle+1, s.RestartCount, s.State, s.LastTerminationState)
		}
		if a := by["app"]; a.RestartCount != int32(cycle+1) || a.LastTerminationState.Terminated == nil ||
			a.LastTerminationState.Terminated.Reason != reasonGuestRestarted {
			t.Errorf("cycle %d: app = restartCount %d, last state %+v; want %d and the guest's stop", cycle+1, a.RestartCount, a.LastTerminationState, cycle+1)
		} else if last := a.LastTerminationState.Terminated; last.FinishedAt.Before(&last.StartedAt) {
			// sidecar's state, from a boot a day before, is no start of
			// the new boot's.
			t.Errorf("cycle %d: app's last state finished %v, before it started %v", cycle+1, last.FinishedAt, last.StartedAt)
		}
		if r.Phase != events.PodPhaseRunning || r.VMRef != ref.Value {
			t.Errorf("cycle %d: phase %s VM %s; want Running on VM %s", cycle+1, r.Phase, r.VMRef, ref.Value)
		}
	}
}
