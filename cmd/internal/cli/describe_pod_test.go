package cli

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"

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
