package provisioner

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/vmware/govmomi/vim25/mo"
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
