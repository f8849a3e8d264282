package cli

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvisor/podvisor/events"
)

// describe pod tells the containers' story as kubectl does: a container in
// back-off shows why, how its last run ended and how often it restarted;
// init containers come first, in order; the annotations show.
func TestPrintPodShowsContainerStates(t *testing.T) {
	start := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	r := events.PodRecord{Name: "web", Namespace: "default", Phase: events.PodPhaseRunning, CreatedAt: start,
		Pod: corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}, Annotations: map[string]string{"team": "blue", "note": "two\nlines"}},
			Spec: corev1.PodSpec{
				InitContainers: []corev1.Container{{Name: "migrate", Image: "registry.local/migrate:1"}, {Name: "seed", Image: "registry.local/seed:1"}},
				Containers:     []corev1.Container{{Name: "app", Image: "registry.local/app:1"}},
			}},
		Images: []events.ContainerImage{{Container: "app", Digest: "sha256:app", Chain: []string{"l1", "l2"}}},
		Conditions: []events.PodCondition{{Type: events.PodConditionContainersReady, Status: events.ConditionFalse, Time: start,
			Reason: "ContainersNotReady"}},
		InitContainerStatuses: []corev1.ContainerStatus{
			{Name: "migrate", Ready: true, State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				Reason: "Completed", StartedAt: metav1.NewTime(start), FinishedAt: metav1.NewTime(start.Add(time.Second))}}},
			{Name: "seed", Ready: true, State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: "Completed"}}},
		},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "app", RestartCount: 6,
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff",
				Message: "back-off 2m40s restarting failed container"}},
			LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: "Error", ExitCode: 3,
				StartedAt: metav1.NewTime(start.Add(time.Minute)), FinishedAt: metav1.NewTime(start.Add(2 * time.Minute))}}}},
	}
	var b bytes.Buffer
	printPod(&b, &r)
	out := b.String()
	space := regexp.MustCompile(` +`)
	flat := space.ReplaceAllString(out, " ")
	for _, want := range []string{
		"Phase: Running (CrashLoopBackOff)",
		"Labels: app=web\n",
		"Annotations: note: two\\nlines\n team: blue\n",
		"Init Containers:\n migrate:\n Image: registry.local/migrate:1\n",
		" State: Terminated\n Reason: Completed\n Exit Code: 0\n Started: 2025-03-01T10:00:00Z\n Finished: 2025-03-01T10:00:01Z\n Ready: True\n Restart Count: 0\n seed:\n",
		"Containers:\n app:\n Image: registry.local/app:1\n Image ID: sha256:app\n Layer Disks: 2\n",
		" State: Waiting\n Reason: CrashLoopBackOff\n Message: back-off 2m40s restarting failed container\n" +
			" Last State: Terminated\n Reason: Error\n Exit Code: 3\n Started: 2025-03-01T10:01:00Z\n Finished: 2025-03-01T10:02:00Z\n" +
			" Ready: False\n Restart Count: 6\nNetworks:\n",
		"Conditions:\n ContainersReady False 10:00:00 ContainersNotReady",
	} {
		if !strings.Contains(flat, want) {
			t.Errorf("describe pod lacks %q:\n%s", want, out)
		}
	}
	// The state's details are indented under it, its value aligned with
	// the container's other fields.
	if !regexp.MustCompile(`\n    State:( +)Waiting\n      Reason:( +)CrashLoopBackOff\n`).MatchString(out) {
		t.Errorf("container state not laid out under the container:\n%s", out)
	}
}

// describe's event lines show an object of the event's data as sorted
// key=value pairs, numbers as written and long text inside it cut; never
// a Go map.
func TestEventSummaryRendersObjects(t *testing.T) {
	for _, tt := range []struct {
		name string
		data any
		want string
	}{
		{"host.updated", &events.HostUpdated{Host: events.HostInfo{Name: "esx-1", Cluster: "c1", CPUCores: 4, MemoryBytes: 64 << 30,
			ConnectionState: "connected", Datastores: []string{"ds1", "ds2"}, Labels: map[string]string{"zone": "a", "rack": "r2"}}},
			"host={cluster=c1 connectionState=connected cpuCores=4 cpuMHz=0 datastores=[ds1 ds2] labels={rack=r2 zone=a} memoryBytes=68719476736 name=esx-1}"},
		{"vm.declared", &events.VMDeclared{VM: events.VirtualMachine{Metadata: events.NamespacedMeta{Name: "vm1", Namespace: "team-a"},
			Spec: events.VirtualMachineSpec{ClassName: "small", ImageName: "vmos", UserData: "#!/bin/sh\n" + strings.Repeat("echo hello; ", 10)}}},
			`vm={metadata={name=vm1 namespace=team-a} spec={className=small imageName=vmos userData=#!/bin/sh\necho hello; echo hello; echo hello; echo hello...}}`},
		{"reason and message", map[string]any{"reason": "InUse", "message": "VirtualMachineClass small is used by [team-a/vm1]", "percent": 40},
			"reason=InUse message=VirtualMachineClass small is used by [team-a/vm1] percent=40"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ev := cloudevents.NewEvent()
			if err := ev.SetData(cloudevents.ApplicationJSON, tt.data); err != nil {
				t.Fatal(err)
			}
			got := eventSummary(ev)
			if got != tt.want {
				t.Errorf("eventSummary =\n%s\nwant\n%s", got, tt.want)
			}
			if strings.Contains(got, "map[") {
				t.Errorf("eventSummary prints a Go map: %s", got)
			}
		})
	}
}
