package events

import (
	"encoding/json"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestPodRecordKey(t *testing.T) {
	if got := PodRecordKey("", "web"); got != "default.web" {
		t.Errorf("PodRecordKey(\"\", web) = %s", got)
	}
	if got := PodRecordKey("team-a", "web.v2"); got != "team-a.web.v2" {
		t.Errorf("PodRecordKey = %s", got)
	}
}

func TestPodRecordSetCondition(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var r PodRecord
	if !r.SetCondition(PodConditionScheduled, ConditionFalse, "Unschedulable", "0/2 hosts", t0) {
		t.Fatal("first set reported no change")
	}
	if r.SetCondition(PodConditionScheduled, ConditionFalse, "Unschedulable", "0/2 hosts", t0.Add(time.Minute)) {
		t.Error("identical set reported a change")
	}
	r.SetCondition(PodConditionScheduled, ConditionFalse, "Unschedulable", "0/3 hosts", t0.Add(2*time.Minute))
	if c, _ := r.Condition(PodConditionScheduled); !c.Time.Equal(t0) || c.Message != "0/3 hosts" {
		t.Errorf("message change moved the transition time or lost the message: %+v", c)
	}
	r.SetCondition(PodConditionScheduled, ConditionTrue, "Bound", "on h1", t0.Add(3*time.Minute))
	if c, _ := r.Condition(PodConditionScheduled); !c.Time.Equal(t0.Add(3*time.Minute)) || !r.IsTrue(PodConditionScheduled) {
		t.Errorf("status change kept the old time: %+v", c)
	}
	if len(r.Conditions) != 1 {
		t.Errorf("%d conditions, want 1 per type", len(r.Conditions))
	}
}

func TestPodRecordKubernetesPod(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := PodRecord{
		UID: "u1", Namespace: "default", Name: "web", Phase: PodPhaseRunning, Host: "esx-1-01", IP: "10.0.0.5",
		Pod: corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}}},
		Attachments:     []NetworkAttachment{{Network: "default", IP: "10.0.0.5"}},
		Images:          []ContainerImage{{Container: "app", Digest: "sha256:abc"}},
		CreatedAt:       t0,
		ResourceVersion: 7,
	}
	r.SetCondition(PodConditionAccepted, ConditionTrue, "Admitted", "", t0)
	r.SetCondition(PodConditionVMReady, ConditionTrue, "PoweredOn", "", t0.Add(time.Second))
	r.SetCondition(PodConditionReady, ConditionTrue, "Reported", "", t0.Add(2*time.Second))
	r.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", Ready: true,
		State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(t0.Add(2 * time.Second))}}}}
	p := r.KubernetesPod()
	if p.Kind != "Pod" || p.APIVersion != "v1" || string(p.UID) != "u1" || p.ResourceVersion != "7" {
		t.Errorf("meta = %+v", p.ObjectMeta)
	}
	if p.Spec.NodeName != "esx-1-01" || p.Status.Phase != corev1.PodRunning || p.Status.PodIP != "10.0.0.5" {
		t.Errorf("nodeName %q phase %q ip %q", p.Spec.NodeName, p.Status.Phase, p.Status.PodIP)
	}
	var ready bool
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			ready = true
		}
	}
	if !ready || len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].State.Running == nil ||
		p.Status.ContainerStatuses[0].ImageID != "sha256:abc" || p.Status.ContainerStatuses[0].Image != "app:1" {
		t.Errorf("status = %+v", p.Status)
	}
	// A pod VM that is on, without any report from its guest, claims no
	// container started.
	starting := r
	starting.Phase, starting.ContainerStatuses = PodPhaseStarting, nil
	sp := starting.KubernetesPod()
	if sp.Status.Phase != corev1.PodPending || sp.Status.ContainerStatuses[0].State.Waiting == nil ||
		sp.Status.ContainerStatuses[0].State.Waiting.Reason != ReasonContainerCreating || sp.Status.ContainerStatuses[0].Ready {
		t.Errorf("starting pod status = %+v", sp.Status)
	}
	// What the CLI prints must be a Pod any Kubernetes client decodes.
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var back corev1.Pod
	if err := json.Unmarshal(b, &back); err != nil || back.Spec.NodeName != "esx-1-01" {
		t.Errorf("round trip: %v %q", err, back.Spec.NodeName)
	}

	for phase, want := range map[string]corev1.PodPhase{
		PodPhasePending: corev1.PodPending, PodPhaseProvisioning: corev1.PodPending, PodPhaseFailed: corev1.PodFailed,
		PodPhaseMigrating: corev1.PodRunning, "Bogus": corev1.PodUnknown,
		PodPhaseStarting: corev1.PodPending, PodPhaseSucceeded: corev1.PodSucceeded,
	} {
		r.Phase = phase
		if got := r.KubernetesPod().Status.Phase; got != want {
			t.Errorf("phase %s → %s, want %s", phase, got, want)
		}
	}
}

func TestPodRecordReleases(t *testing.T) {
	r := PodRecord{
		Attachments: []NetworkAttachment{{Network: "a", IP: "10.0.0.1"}, {Network: "b", IP: "10.1.0.1"}},
		Images:      []ContainerImage{{Container: "x", Digest: "sha256:1"}, {Container: "y", Digest: "sha256:1"}, {Container: "z", Digest: "sha256:2"}},
	}
	if ips := r.IPs(); len(ips) != 2 || ips[1].Network != "b" {
		t.Errorf("IPs = %+v", ips)
	}
	if d := r.ImageDigests(); len(d) != 2 {
		t.Errorf("ImageDigests = %v, want the 2 distinct digests", d)
	}
}

// TestPodRecordSample decodes the documented sample strictly: what the CLI
// and other readers can rely on is exactly what the provisioner writes.
func TestPodRecordSample(t *testing.T) {
	data, err := os.ReadFile("testdata/records/pod.json")
	if err != nil {
		t.Fatal(err)
	}
	var r PodRecord
	if err := unmarshalStrict(data, &r); err != nil {
		t.Fatalf("testdata/records/pod.json: %v", err)
	}
	if r.Key() != "default/web" || PodRecordKey(r.Namespace, r.Name) != "default.web" || len(r.Conditions) != 9 || len(r.ContainerStatuses) != 2 || r.Phase != PodPhaseRunning {
		t.Errorf("sample = key %s phase %s conditions %d", r.Key(), r.Phase, len(r.Conditions))
	}
	if r.Size != SizePodVM(&r.Pod) {
		t.Errorf("sample size %+v, SizePodVM says %+v", r.Size, SizePodVM(&r.Pod))
	}
	again, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back PodRecord
	if err := unmarshalStrict(again, &back); err != nil || back.VMRef != r.VMRef || back.Attachments[0].IP != r.IP {
		t.Errorf("round trip: %v", err)
	}
}

// A pod being deleted shows when its grace period ends and the period, as
// the API server shows a graceful delete (kubectl get -o yaml).
func TestKubernetesPodOfAPodBeingDeleted(t *testing.T) {
	at := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	five := int64(5)
	for _, c := range []struct {
		grace *int64
		want  int64
	}{{nil, 30}, {&five, 5}} {
		r := PodRecord{Namespace: "default", Name: "web", Phase: PodPhaseTerminating, DeletionRequestedAt: at}
		r.Pod.Spec.TerminationGracePeriodSeconds = c.grace
		p := r.KubernetesPod()
		if p.DeletionTimestamp == nil || !p.DeletionTimestamp.Time.Equal(at.Add(time.Duration(c.want)*time.Second)) {
			t.Errorf("grace %d: deletionTimestamp %v, want %v", c.want, p.DeletionTimestamp, at.Add(time.Duration(c.want)*time.Second))
		}
		if p.DeletionGracePeriodSeconds == nil || *p.DeletionGracePeriodSeconds != c.want {
			t.Errorf("grace %d: deletionGracePeriodSeconds %v", c.want, p.DeletionGracePeriodSeconds)
		}
	}
	if p := (&PodRecord{Phase: PodPhaseRunning}).KubernetesPod(); p.DeletionTimestamp != nil || p.DeletionGracePeriodSeconds != nil {
		t.Errorf("a pod not being deleted shows a deletion: %v %v", p.DeletionTimestamp, p.DeletionGracePeriodSeconds)
	}
}
