package provisioner

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// TestImagesRetryingShowsImagePullBackOff: while the image cache tries a
// pod's images again (pod.images.retrying), the pod's reason and message,
// and so its containers' waiting state, say ImagePullBackOff with the
// error, the try and when the next one is due; the phase does not move.
// pod.images.ready replaces it, and so does pod.images.failed. A late one
// (the pod's images are ready) changes nothing, nor does one about a pod
// without a record, which is acknowledged at once. Before, the pod showed
// Scheduled without a word while its registry refused connections.
func TestImagesRetryingShowsImagePullBackOff(t *testing.T) {
	e := newEnv(t)
	svc, _ := e.start(testConfig())
	refused := "dial tcp 10.0.0.7:5000: connect: connection refused"
	retrying := func(acc *events.PodAccepted, attempt int) *events.PodImagesRetrying {
		c := acc.Pod.Spec.Containers[0]
		return &events.PodImagesRetrying{PodRef: acc.PodRef, Container: c.Name, Image: c.Image, Reason: "RegistryUnavailable",
			Message: refused, Attempt: attempt, NextAttemptAt: time.Date(2026, 3, 2, 10, 15, attempt, 0, time.UTC)}
	}
	backingOff := func(r *events.PodRecord, attempt string) bool {
		return r.Reason == events.ReasonImagePullBackOff && strings.Contains(r.Message, refused) &&
			strings.Contains(r.Message, "RegistryUnavailable") && strings.Contains(r.Message, "registry.local/app:1.0") &&
			strings.Contains(r.Message, "try "+attempt+", next at 2026-03-02T10:15:0"+attempt+"Z")
	}
	waiting := func(r *events.PodRecord) []*corev1.ContainerStateWaiting {
		var out []*corev1.ContainerStateWaiting
		for _, cs := range r.KubernetesPod().Status.ContainerStatuses {
			out = append(out, cs.State.Waiting)
		}
		return out
	}
	handled := func(seq uint64) { e.WaitHandled(events.StreamPods, Name+"-"+events.StreamPods, seq) }

	acc := e.request(testPod("pull"))
	e.Publish(retrying(acc, 1))
	r := e.waitRecord(svc, acc.Namespace, acc.Name, func(r *events.PodRecord) bool { return backingOff(r, "1") })
	if r.Phase != events.PodPhasePending {
		t.Fatalf("phase %s after pod.images.retrying, want Pending (it moves no phase)", r.Phase)
	}
	for i, w := range waiting(r) {
		if w == nil || w.Reason != events.ReasonImagePullBackOff || w.Message != r.Message {
			t.Fatalf("container %d waiting %+v, want ImagePullBackOff with the pod's message %q", i, w, r.Message)
		}
	}

	// Bound to a host, the pod still waits for its images: the next try's
	// news replaces the first's.
	host := e.DC.Hosts()[0].Name
	e.Send("podvisor/scheduler", events.TypePodScheduled, &events.PodScheduled{
		PodRef: acc.PodRef, Host: host, Cluster: simtest.ClusterOf(t, e.DC, host), Datastores: []string{sim.SharedDatastore},
	})
	e.waitRecord(svc, acc.Namespace, acc.Name, func(r *events.PodRecord) bool { return r.Phase == events.PodPhaseScheduled })
	e.Publish(retrying(acc, 2))
	r = e.waitRecord(svc, acc.Namespace, acc.Name, func(r *events.PodRecord) bool { return backingOff(r, "2") })
	if r.Phase != events.PodPhaseScheduled {
		t.Fatalf("phase %s after pod.images.retrying, want Scheduled", r.Phase)
	}

	// The images are ready: the back-off is over.
	handled(e.Publish(imagesReady(acc)))
	r = e.record(svc, acc.Namespace, acc.Name)
	if r.Reason != "" || r.Message != "" || len(r.Images) != len(acc.Pod.Spec.Containers) {
		t.Fatalf("after pod.images.ready: reason %q message %q, %d images; want no reason, no message, one image per container", r.Reason, r.Message, len(r.Images))
	}
	for i, w := range waiting(r) {
		if w == nil || w.Reason != events.PodPhaseScheduled {
			t.Fatalf("container %d waiting %+v, want the phase Scheduled", i, w)
		}
	}

	// A late one: its images are ready, nothing changes.
	handled(e.Publish(retrying(acc, 3)))
	if late := e.record(svc, acc.Namespace, acc.Name); late.ResourceVersion != r.ResourceVersion || late.Reason != "" {
		t.Fatalf("a late pod.images.retrying changed the record: revision %d → %d, reason %q", r.ResourceVersion, late.ResourceVersion, late.Reason)
	}

	// A pod without a record: acknowledged at its first delivery, no
	// record made.
	ghost := testenv.Accepted(testPod("ghost"))
	ghost.Namespace = events.DefaultNamespace
	handled(e.Publish(retrying(ghost, 1)))
	if got := e.record(svc, ghost.Namespace, ghost.Name); got != nil {
		t.Fatalf("pod.images.retrying about a pod without a record made one: %+v", got)
	}

	// pod.images.failed replaces it too.
	failing := e.request(testPod("failing"))
	e.Publish(retrying(failing, 1))
	e.waitRecord(svc, failing.Namespace, failing.Name, func(r *events.PodRecord) bool { return backingOff(r, "1") })
	c := failing.Pod.Spec.Containers[0]
	e.Publish(&events.PodImagesFailed{PodRef: failing.PodRef, Container: c.Name, Image: c.Image, Reason: "RegistryUnavailable",
		Message: "gave up after 8 attempts: " + refused})
	r = e.waitRecord(svc, failing.Namespace, failing.Name, func(r *events.PodRecord) bool { return r.Phase == events.PodPhaseFailed })
	if r.Reason != ReasonImagesFailed || !strings.Contains(r.Message, "gave up after 8 attempts") {
		t.Fatalf("failed pod: reason %q message %q, want %s with the failure", r.Reason, r.Message, ReasonImagesFailed)
	}
}
