package testenv

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvisor/podvisor/events"
)

// Pod is a pod manifest in the default namespace with one container per
// image (c0, c1, …), normalized as the provisioner admits it.
func Pod(name string, images ...string) *corev1.Pod {
	pod := &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: events.KindPod},
		ObjectMeta: metav1.ObjectMeta{Namespace: events.DefaultNamespace, Name: name}}
	for i, img := range images {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: fmt.Sprintf("c%d", i), Image: img})
	}
	events.NormalizePod(pod)
	return pod
}

// UID is the uid tests give pod name: uid-<name>.
func UID(name string) string { return "uid-" + name }

// Accepted is what the provisioner announces for an admitted pod
// (pod.accepted, uid UID(name)): its size, networks and images derived as
// the provisioner derives them.
func Accepted(pod *corev1.Pod) *events.PodAccepted {
	return &events.PodAccepted{PodRef: events.PodRef{Namespace: pod.Namespace, Name: pod.Name, UID: UID(pod.Name)}, Pod: *pod,
		Size: events.SizePodVM(pod), Networks: events.PodNetworks(pod), Images: events.PodImages(pod)}
}

// PendingRecord is the provisioner's record of a pod it accepted and that
// is not placed yet.
func PendingRecord(acc *events.PodAccepted) *events.PodRecord {
	return &events.PodRecord{UID: acc.UID, Namespace: acc.Namespace, Name: acc.Name, Pod: acc.Pod, Size: acc.Size,
		Networks: acc.Networks, Phase: events.PodPhasePending, RequestID: "req-" + acc.Name}
}

// Accept plays the provisioner admitting acc: it writes the pod's record
// (before the announcement, as the provisioner does), then publishes
// pod.accepted, and returns its stream sequence.
func (e *Env) Accept(acc *events.PodAccepted) uint64 {
	e.T.Helper()
	e.PutPodRecord(PendingRecord(acc))
	return e.Publish(acc)
}

// PutPodRecord writes a pod record as the provisioner does.
func (e *Env) PutPodRecord(r *events.PodRecord) {
	e.T.Helper()
	Put(e, events.BucketPods, events.PodRecordKey(r.Namespace, r.Name), r)
}
