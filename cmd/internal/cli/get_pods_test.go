package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	corev1 "k8s.io/api/core/v1"
)

// The table shows what the guest reported: ready containers of all, and
// their restarts; a pod whose VM is on but whose guest said nothing is 0/N.
func TestPodRowReadyAndRestarts(t *testing.T) {
	now := time.Now()
	r := events.PodRecord{Name: "web", Phase: events.PodPhaseRunning, Host: "esx-1-01", IP: "10.0.0.5", CreatedAt: now,
		Pod:               corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a"}, {Name: "b"}}}},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "a", Ready: true, RestartCount: 1}, {Name: "b", RestartCount: 3}}}
	if got := strings.Join((&podRow{r}).Row(now), " "); !strings.HasPrefix(got, "web 1/2 Running 4 esx-1-01 10.0.0.5") {
		t.Errorf("row = %q", got)
	}
	// Init containers' restarts count too, as kubectl counts them; they
	// are not in READY.
	r.Pod.Spec.InitContainers = []corev1.Container{{Name: "init"}}
	r.InitContainerStatuses = []corev1.ContainerStatus{{Name: "init", Ready: true, RestartCount: 2,
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: "Completed"}}}}
	if got := strings.Join((&podRow{r}).Row(now), " "); !strings.HasPrefix(got, "web 1/2 Running 6 esx-1-01 10.0.0.5") {
		t.Errorf("row of a pod whose init container restarted = %q", got)
	}
	// A container in back-off while the pod runs: its reason shows, as
	// kubectl's STATUS column shows it.
	r.ContainerStatuses[1].State.Waiting = &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}
	if got := strings.Join((&podRow{r}).Row(now), " "); !strings.HasSuffix(got, " CrashLoopBackOff") {
		t.Errorf("row of a pod with a container in back-off = %q", got)
	}
	r.ContainerStatuses[1].State.Waiting = nil
	r.Phase, r.Reason, r.ContainerStatuses, r.InitContainerStatuses = events.PodPhaseStarting, events.ReasonContainerCreating, nil, nil
	if got := strings.Join((&podRow{r}).Row(now), " "); !strings.HasPrefix(got, "web 0/2 Starting 0 ") || !strings.HasSuffix(got, "ContainerCreating") {
		t.Errorf("row of a starting pod = %q", got)
	}
}

// While init containers have not all completed, REASON says where they
// stand as kubectl's STATUS does: how many completed, or why the first one
// that has not is stuck; the pod's own reason (PodInitializing) says less.
func TestPodRowInitContainers(t *testing.T) {
	now := time.Now()
	done := corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: "Completed"}}
	running := corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}
	waiting := func(reason string) corev1.ContainerState {
		return corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason}}
	}
	for _, tc := range []struct {
		init []corev1.ContainerState
		want string
	}{
		{[]corev1.ContainerState{running, waiting("PodInitializing")}, "Init:0/2"},
		{[]corev1.ContainerState{done, running}, "Init:1/2"},
		{[]corev1.ContainerState{done, waiting(events.ReasonContainerCreating)}, "Init:1/2"},
		{[]corev1.ContainerState{done, waiting("CrashLoopBackOff")}, "Init:CrashLoopBackOff"},
		{[]corev1.ContainerState{{Terminated: &corev1.ContainerStateTerminated{ExitCode: 5, Reason: "Error"}}, waiting("PodInitializing")}, "Init:Error"},
		{[]corev1.ContainerState{{Terminated: &corev1.ContainerStateTerminated{ExitCode: 5}}, waiting("PodInitializing")}, "Init:ExitCode:5"},
		{[]corev1.ContainerState{{Terminated: &corev1.ContainerStateTerminated{ExitCode: 137, Signal: 9}}, waiting("PodInitializing")}, "Init:Signal:9"},
		{[]corev1.ContainerState{done, done}, "PodInitializing"}, // all completed: the pod's own reason again
	} {
		r := events.PodRecord{Name: "web", Phase: events.PodPhasePending, Reason: "PodInitializing", CreatedAt: now,
			Pod: corev1.Pod{Spec: corev1.PodSpec{InitContainers: []corev1.Container{{Name: "i0"}, {Name: "i1"}}, Containers: []corev1.Container{{Name: "a"}}}}}
		for i, st := range tc.init {
			r.InitContainerStatuses = append(r.InitContainerStatuses, corev1.ContainerStatus{Name: r.Pod.Spec.InitContainers[i].Name, State: st})
		}
		if got := (&podRow{r}).Row(now); got[len(got)-1] != tc.want {
			t.Errorf("init states %v: REASON %q, want %q", tc.init, got[len(got)-1], tc.want)
		}
	}
}
