package events

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// BucketPods holds one PodRecord per pod, keyed by PodRecordKey. Only the
// provisioner writes it, always by compare-and-set on the key's revision
// (Create at admission, Update afterwards); the CLI and the other services
// read it as the pods' read model.
const BucketPods = "pods"

// Pod phases as `podvisor get pods` prints them (PodRecord.Phase).
const (
	// PodPhasePending: admitted, waiting for a host (or back here after an
	// eviction, waiting for a new one).
	PodPhasePending = "Pending"
	// PodPhaseScheduled: bound to a host, waiting for images and networks.
	PodPhaseScheduled = "Scheduled"
	// PodPhaseProvisioning: the pod VM is being created or powered on.
	PodPhaseProvisioning = "Provisioning"
	// PodPhaseStarting: the pod VM exists and is powered on (pod.vm.ready);
	// its guest has not yet reported every container started. Kubernetes
	// sees Pending with reason ContainerCreating.
	PodPhaseStarting = "Starting"
	// PodPhaseRunning: every container has started, as the guest reported
	// (pod.running); a container may have exited or crash-loop since, which
	// ContainersReady tells.
	PodPhaseRunning = "Running"
	// PodPhaseSucceeded: every container terminated for good with exit code
	// 0 (restartPolicy Never or OnFailure). The VM stays until the delete.
	PodPhaseSucceeded = "Succeeded"
	// PodPhaseFailed: the pod cannot run, or its containers terminated for
	// good and one of them failed; Reason and Message say why. The record
	// stays until the pod is deleted.
	PodPhaseFailed = "Failed"
	// PodPhaseTerminating: a delete was requested; the VM is being removed.
	PodPhaseTerminating = "Terminating"
	// PodPhaseMigrating: the pod VM is being moved to another host.
	PodPhaseMigrating = "Migrating"
)

// Pod condition types (PodCondition.Type), in the order a pod gains them.
const (
	PodConditionAccepted        = "Accepted"
	PodConditionScheduled       = "Scheduled"
	PodConditionImagesReady     = "ImagesReady"
	PodConditionNetworkAttached = "NetworkAttached"
	PodConditionVMCreated       = "VMCreated"
	// PodConditionVMForked (only where the provisioner forks pod VMs from
	// templates): True when the pod VM is an instant clone of a template,
	// False with the reason it was created instead (NoTemplate,
	// TemplateBuilding, InstantCloneFailed, EncryptionRequested, …).
	PodConditionVMForked = "VMForked"
	// PodConditionVMReady: the pod VM is powered on (what pod.vm.ready
	// announces); False with reason GuestSilent when its guest never
	// reported.
	PodConditionVMReady = "VMReady"
	// Kubernetes' own, from the guest's reports: every init container
	// completed; every container ready; the pod ready.
	PodConditionInitialized     = "Initialized"
	PodConditionContainersReady = "ContainersReady"
	PodConditionReady           = "Ready"
)

// PodHasVM reports whether a record's phase means the pod has a pod VM
// powered on (or being moved): Starting, Running, Migrating, and pods whose
// containers finished (the VM stays until the delete).
func PodHasVM(phase string) bool {
	switch phase {
	case PodPhaseStarting, PodPhaseRunning, PodPhaseMigrating, PodPhaseSucceeded:
		return true
	}
	return false
}

// IsPodVM reports whether a VM found in vCenter by a stored reference is
// the one of pod uid named name, from the VM's guestinfo uid (vmUID, empty
// when it has none) or, without one, its name (vmName). The reference alone
// does not say: a vCenter rebuilt from nothing (the simulated datacenter of
// a restarted `podvisor up`, a vCenter restored or reinstalled) numbers its
// VMs from the start again, and a VM's old reference may name another
// pod's VM.
func IsPodVM(vmUID, vmName, uid, name string) bool {
	if vmUID != "" {
		return vmUID == uid
	}
	return vmName == name
}

// GuestReport is what the provisioner folded from the guest's reports
// (pod.containers.reported): which boot and report it was, so that older
// reports are recognized and ignored.
type GuestReport struct {
	// VM is the pod VM the report came from (its name).
	VM string `json:"vm"`
	// BootID and Seq identify the last folded report.
	BootID string `json:"bootID"`
	Seq    uint64 `json:"seq"`
	// Phase is the agent's own view (GuestPhase*), Reason and Message why
	// (an eviction's, a Pending the agent cannot leave).
	Phase   string `json:"phase"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	// At is when the provisioner folded it; Time when the host agent
	// published it (the event's time), which orders reports of different
	// boots: one published before the last folded report of another boot
	// is late.
	At   time.Time `json:"at"`
	Time time.Time `json:"time,omitzero"`
}

// GuestBefore is the last report of a pod's guest whose VM was replaced,
// with its statuses, kept until the next guest reports.
type GuestBefore struct {
	Report GuestReport `json:"report"`
	// Gone says the report's VM is gone (lost, removed, or left on an
	// unreachable host), not merely found under another reference: a late
	// report of its boot says nothing of the pod's next VM.
	Gone                  bool                     `json:"gone,omitempty"`
	InitContainerStatuses []corev1.ContainerStatus `json:"initContainerStatuses,omitempty"`
	ContainerStatuses     []corev1.ContainerStatus `json:"containerStatuses,omitempty"`
}

// CarriedContainer is what a container did before its guest booted again
// (its pod VM powered on again, re-created, or the pod restarted on another
// host): the new guest's agent starts it anew and counts from zero, so the
// record adds the restarts before, and the boot's own start, as Kubernetes
// counts a container restarted by a node's reboot.
type CarriedContainer struct {
	// Restarts are added to the restartCount the guest reports.
	Restarts int32 `json:"restarts"`
	// LastState stands as lastState until the guest reports one of its
	// own: how the instance before the boot ended.
	LastState corev1.ContainerState `json:"lastState"`
}

// Condition statuses, as in Kubernetes.
const (
	ConditionTrue    = "True"
	ConditionFalse   = "False"
	ConditionUnknown = "Unknown"
)

// PodCondition is one aspect of a pod's progress.
type PodCondition struct {
	// Type is one of the PodCondition* constants.
	Type string `json:"type"`
	// Status is True, False or Unknown.
	Status string `json:"status"`
	// Time is when Status last changed (Kubernetes' lastTransitionTime).
	Time time.Time `json:"time"`
	// Reason is a CamelCase word for machines (ImagesFailed, Unschedulable …).
	Reason string `json:"reason,omitempty"`
	// Message explains for a person.
	Message string `json:"message,omitempty"`
}

// StaleVM is a VM of an earlier placement of the pod that could not be
// removed when the pod left its host (the host was unreachable). Drift repair
// removes it once the host answers again.
type StaleVM struct {
	// Ref is the managed object reference (for example "vm-42").
	Ref string `json:"ref"`
	// Name is the VM's name.
	Name string `json:"name"`
	// Host the VM was on.
	Host string `json:"host,omitempty"`
}

// PodRecord is the provisioner's record of one pod (KV `pods`): the admitted
// manifest, everything the other services reported about the pod, and what
// the provisioner did in vCenter. `podvisor get pods` prints it as NAMESPACE
// NAME PHASE HOST IP AGE REASON; `get pod -o json` prints KubernetesPod().
type PodRecord struct {
	// UID is the pod's uid: metadata.uid of the manifest when set, the
	// request's uid, or one derived from the namespace, name and the
	// requesting event's id (so a replayed request yields the same uid).
	UID string `json:"uid"`
	// Namespace and Name identify the pod.
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Pod is the admitted manifest (normalized, status cleared).
	Pod corev1.Pod `json:"pod"`
	// SpecHash fingerprints the admitted manifest (labels, annotations and
	// spec): an identical re-request is a no-op, a different one is refused.
	SpecHash string `json:"specHash"`
	// RequestID identifies the pod.requested that created the record: its
	// CloudEvent id and stream sequence, "<id>#<seq>". A redelivery of that
	// very message re-announces pod.accepted; the same event published again
	// later is a new request.
	RequestID string `json:"requestId"`
	// TraceParent is the W3C traceparent of the request, so that every event
	// the provisioner publishes about this pod joins the pod's one trace.
	TraceParent string `json:"traceparent,omitempty"`

	// Size is SizePodVM(Pod), fixed at admission.
	Size PodVMSize `json:"size"`
	// Networks is PodNetworks(Pod), in NIC order.
	Networks []string `json:"networks"`

	// Phase is one of the PodPhase* constants.
	Phase string `json:"phase"`
	// Reason and Message explain the phase when something is wrong or
	// pending (Unschedulable, ImagesFailed, CreateVMFailed …).
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	// Conditions, one per type at most, in the order they were first set.
	Conditions []PodCondition `json:"conditions,omitempty"`

	// Host, Cluster, ResourcePool and Datastores are the placement the
	// scheduler made (pod.scheduled), updated by migration.completed.
	Host         string   `json:"host,omitempty"`
	Cluster      string   `json:"cluster,omitempty"`
	ResourcePool string   `json:"resourcePool,omitempty"`
	Datastores   []string `json:"datastores,omitempty"`
	// NetworkRefusals are the hosts that refused one of the pod's networks
	// (before binding, or on attach), first first; the scheduler does not
	// place the pod on them again.
	NetworkRefusals []HostRefusal `json:"networkRefusals,omitempty"`

	// Images are the prepared container images (pod.images.ready), in
	// container order.
	Images []ContainerImage `json:"images,omitempty"`

	// NetworkHost is the host the Attachments were prepared on; they count
	// only while it equals Host.
	NetworkHost string `json:"networkHost,omitempty"`
	// Attachments are the pod's NICs (pod.network.attached), in NIC order.
	Attachments []NetworkAttachment `json:"attachments,omitempty"`
	// IP is the address on the first network.
	IP string `json:"ip,omitempty"`

	// VMName is the pod VM's name: pv-<uid>, or pv-<uid>-<n> after an
	// eviction left an unreachable VM of that name behind.
	VMName string `json:"vmName,omitempty"`
	// VMRef is the pod VM's managed object reference once it exists.
	VMRef string `json:"vmRef,omitempty"`
	// CreateTask is the CreateVM task reference while creation is in flight:
	// kept before the provisioner waits on the task, so that a restart waits
	// for that task instead of creating a second VM.
	CreateTask string `json:"createTask,omitempty"`
	// CreateAttempts counts the CreateVM submissions made for this pod,
	// each saved before it is submitted: while it is 0 no VM of the pod can
	// exist, so the first create skips the lookup by name (a datacenter-wide
	// search), and a crash between a submission and saving its task still
	// leaves a count that sends the retry to look first.
	CreateAttempts int `json:"createAttempts,omitempty"`
	// Encryption is set for a pod with an encrypted ephemeral disk
	// (AnnotationEphemeralEncryption).
	Encryption *PodEncryption `json:"encryption,omitempty"`
	// EvictedFrom is the host the pod was last evicted from: a placement
	// held on another host is the pod's new one, whose pod.scheduled may
	// have come before the eviction was folded (and been taken for stale).
	EvictedFrom string `json:"evictedFrom,omitempty"`
	// StaleVMs are VMs of earlier placements still to be removed.
	StaleVMs []StaleVM `json:"staleVMs,omitempty"`
	// Guest is the last report folded from the pod VM's guest; nil until
	// its guest first reports (and again after a new VM replaced it).
	Guest *GuestReport `json:"guest,omitempty"`
	// InitContainerStatuses and ContainerStatuses are the guest's last
	// report, in Kubernetes' shape (imageID = manifest digest).
	InitContainerStatuses []corev1.ContainerStatus `json:"initContainerStatuses,omitempty"`
	ContainerStatuses     []corev1.ContainerStatus `json:"containerStatuses,omitempty"`
	// ContainersBefore is what the containers did under earlier boots of
	// the pod's guests, by container name, added to every report of the
	// current boot.
	ContainersBefore map[string]CarriedContainer `json:"containersBefore,omitempty"`
	// GuestBefore is the last report of the guest of a VM that was
	// replaced (re-created, or found under another reference), until the
	// next report: a report of another boot carries its containers'
	// restarts into ContainersBefore; one of the same boot (the VM was only
	// found again) does not.
	GuestBefore *GuestBefore `json:"guestBefore,omitempty"`
	// GuestRepairs counts the repairs of a silent guest on the current VM
	// (power cycles); past the configured number the VM is re-created.
	GuestRepairs int `json:"guestRepairs,omitempty"`

	// Migration is the migration the pod is Migrating for, and after it
	// ended the last one that did: migration events are facts that may
	// arrive out of order (two provisioner replicas, a redelivery), and a
	// progress of a migration that already ended must not put the pod back
	// in Migrating, nor the end of another migration take it out.
	Migration string `json:"migration,omitempty"`

	// Generation counts the pod's placements: 0 for the first, +1 per
	// eviction. Events the provisioner publishes derive their ids from it,
	// so each placement announces itself once.
	Generation int `json:"generation"`

	// DeletionRequestedAt is set when a delete was requested.
	DeletionRequestedAt time.Time `json:"deletionRequestedAt,omitzero"`
	// CreatedAt is when the pod was admitted; UpdatedAt when the record was
	// last written.
	CreatedAt time.Time `json:"createdAt"`
	UpdatedAt time.Time `json:"updatedAt"`

	// ResourceVersion is the KV revision the record was read at. It is not
	// meaningful inside the stored value; readers set it from the entry.
	ResourceVersion uint64 `json:"resourceVersion,omitempty"`
}

// PodRecordKey is the KV key of a pod's record: <namespace>.<name>, since KV
// keys cannot hold '/'. Namespaces are DNS labels (no dots), so the first
// dot always separates the two.
func PodRecordKey(namespace, name string) string {
	if namespace == "" {
		namespace = DefaultNamespace
	}
	return namespace + "." + name
}

// Key is the pod key <namespace>/<name>.
func (r *PodRecord) Key() string { return PodKey(r.Namespace, r.Name) }

// Condition returns the condition of type t, if set.
func (r *PodRecord) Condition(t string) (PodCondition, bool) {
	for _, c := range r.Conditions {
		if c.Type == t {
			return c, true
		}
	}
	return PodCondition{}, false
}

// IsTrue says whether the condition of type t is set and True.
func (r *PodRecord) IsTrue(t string) bool {
	c, ok := r.Condition(t)
	return ok && c.Status == ConditionTrue
}

// SetCondition sets a condition. Time moves only when the status changes
// (like Kubernetes' lastTransitionTime); reason and message always take the
// new values. It reports whether anything changed.
func (r *PodRecord) SetCondition(t, status, reason, message string, now time.Time) bool {
	return setCondition(&r.Conditions, t, status, reason, message, now)
}

// setCondition is SetCondition on a list of conditions (pods, VMs and
// guest clusters keep the same kind).
func setCondition(conds *[]PodCondition, t, status, reason, message string, now time.Time) bool {
	for i := range *conds {
		c := &(*conds)[i]
		if c.Type != t {
			continue
		}
		if c.Status == status && c.Reason == reason && c.Message == message {
			return false
		}
		if c.Status != status {
			c.Time = now
		}
		c.Status, c.Reason, c.Message = status, reason, message
		return true
	}
	*conds = append(*conds, PodCondition{Type: t, Status: status, Time: now, Reason: reason, Message: message})
	return true
}

// IPs lists the addresses the pod holds, one per attachment.
func (r *PodRecord) IPs() []NetworkIP {
	out := make([]NetworkIP, 0, len(r.Attachments))
	for _, a := range r.Attachments {
		out = append(out, NetworkIP{Network: a.Network, IP: a.IP})
	}
	return out
}

// ImageDigests lists the distinct image digests the pod references.
func (r *PodRecord) ImageDigests() []string {
	var out []string
	seen := map[string]bool{}
	for _, img := range r.Images {
		if img.Digest != "" && !seen[img.Digest] {
			seen[img.Digest] = true
			out = append(out, img.Digest)
		}
	}
	return out
}

// DefaultGracePeriodSeconds is Kubernetes' terminationGracePeriodSeconds
// when a manifest leaves it unset.
const DefaultGracePeriodSeconds = 30

// GracePeriodSeconds is how long the pod's containers have to stop once
// its delete is asked for: terminationGracePeriodSeconds, or Kubernetes'
// default.
func (r *PodRecord) GracePeriodSeconds() int64 {
	if g := r.Pod.Spec.TerminationGracePeriodSeconds; g != nil {
		return *g
	}
	return DefaultGracePeriodSeconds
}

// KubernetesPod renders the record as a Kubernetes v1 Pod, what `podvisor get
// pod -o json` prints: the admitted manifest with uid, creation time and
// resourceVersion filled in, spec.nodeName set to the host, and a status
// whose phase maps podvisor's phases onto Kubernetes' five.
func (r PodRecord) KubernetesPod() corev1.Pod {
	p := *r.Pod.DeepCopy()
	p.APIVersion, p.Kind = "v1", "Pod"
	p.Namespace, p.Name = r.Namespace, r.Name
	p.UID = types.UID(r.UID)
	p.CreationTimestamp = metav1.NewTime(r.CreatedAt)
	if r.ResourceVersion > 0 {
		p.ResourceVersion = strconv.Itoa(int(r.ResourceVersion))
	}
	if !r.DeletionRequestedAt.IsZero() {
		// As the API server sets them on a graceful delete: when the
		// grace period ends (the pod is gone by then at the latest), and
		// that period.
		grace := r.GracePeriodSeconds()
		t := metav1.NewTime(r.DeletionRequestedAt.Add(time.Duration(grace) * time.Second))
		p.DeletionTimestamp, p.DeletionGracePeriodSeconds = &t, &grace
	}
	p.Spec.NodeName = r.Host

	st := corev1.PodStatus{
		Phase:   kubernetesPhase(r.Phase),
		Reason:  r.Reason,
		Message: r.Message,
		PodIP:   r.IP,
	}
	for _, a := range r.Attachments {
		st.PodIPs = append(st.PodIPs, corev1.PodIP{IP: a.IP})
	}
	if c, ok := r.Condition(PodConditionAccepted); ok && c.Status == ConditionTrue {
		t := metav1.NewTime(c.Time)
		st.StartTime = &t
	}
	for _, c := range r.Conditions {
		st.Conditions = append(st.Conditions, corev1.PodCondition{
			Type:               corev1.PodConditionType(kubernetesCondition(c.Type)),
			Status:             corev1.ConditionStatus(c.Status),
			LastTransitionTime: metav1.NewTime(c.Time),
			Reason:             c.Reason,
			Message:            c.Message,
		})
	}
	st.InitContainerStatuses = r.containerStatuses(r.Pod.Spec.InitContainers, r.InitContainerStatuses)
	st.ContainerStatuses = r.containerStatuses(r.Pod.Spec.Containers, r.ContainerStatuses)
	p.Status = st
	return p
}

// containerStatuses renders the statuses of one list of containers: the
// guest's report where there is one, otherwise each container waiting with
// the reason the pod is not running yet (ContainerCreating once the VM is
// on: nothing has claimed the container started). The image digest fills
// imageID where the report lacks it.
func (r *PodRecord) containerStatuses(spec []corev1.Container, reported []corev1.ContainerStatus) []corev1.ContainerStatus {
	if len(spec) == 0 {
		return nil
	}
	byName := make(map[string]corev1.ContainerStatus, len(reported))
	for _, cs := range reported {
		byName[cs.Name] = cs
	}
	out := make([]corev1.ContainerStatus, 0, len(spec))
	for _, c := range spec {
		cs, ok := byName[c.Name]
		if ok {
			cs = *cs.DeepCopy()
		} else {
			cs = corev1.ContainerStatus{Name: c.Name, Image: c.Image}
			w := &corev1.ContainerStateWaiting{Reason: r.Phase, Message: r.Message}
			switch {
			case r.Phase == PodPhaseStarting:
				w.Reason = ReasonContainerCreating
			case r.Reason != "":
				w.Reason = r.Reason
			}
			cs.State.Waiting = w
		}
		if cs.Image == "" {
			cs.Image = c.Image
		}
		if cs.ImageID == "" {
			for _, img := range r.Images {
				if img.Container == c.Name && img.Digest != "" {
					cs.ImageID = img.Digest
				}
			}
		}
		out = append(out, cs)
	}
	return out
}

// ReasonContainerCreating is the waiting reason of a container whose pod VM
// is on but whose guest has not reported it started, as Kubernetes says.
const ReasonContainerCreating = "ContainerCreating"

// kubernetesPhase maps podvisor's phases onto Kubernetes' (Pending, Running,
// Succeeded, Failed, Unknown): everything before every container started is
// Pending (a Starting pod's VM is on, its containers are being created), a
// migrating pod keeps running, a terminating pod is reported by its deletion
// timestamp, as Kubernetes does, and keeps the Running phase.
func kubernetesPhase(p string) corev1.PodPhase {
	switch p {
	case PodPhaseRunning, PodPhaseMigrating, PodPhaseTerminating:
		return corev1.PodRunning
	case PodPhaseSucceeded:
		return corev1.PodSucceeded
	case PodPhaseFailed:
		return corev1.PodFailed
	case PodPhasePending, PodPhaseScheduled, PodPhaseProvisioning, PodPhaseStarting:
		return corev1.PodPending
	default:
		return corev1.PodUnknown
	}
}

// kubernetesCondition maps condition types onto Kubernetes' where one has
// the same meaning (Scheduled → PodScheduled; Initialized, ContainersReady
// and Ready are Kubernetes' names already); podvisor's own conditions keep
// their names.
func kubernetesCondition(t string) string {
	switch t {
	case PodConditionScheduled:
		return string(corev1.PodScheduled)
	default:
		return t
	}
}

// PodSpecHash fingerprints what makes two requests "the same pod": labels,
// annotations and spec of the normalized manifest (NormalizePod first). The
// uid is left out on purpose: re-applying a manifest without a uid must be a
// no-op, not a conflict with the uid derived the first time.
func PodSpecHash(pod *corev1.Pod) (string, error) {
	b, err := json.Marshal(struct {
		Labels      map[string]string `json:"labels,omitempty"`
		Annotations map[string]string `json:"annotations,omitempty"`
		Spec        corev1.PodSpec    `json:"spec"`
	}{pod.Labels, pod.Annotations, pod.Spec})
	if err != nil {
		return "", fmt.Errorf("hash pod spec: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// PodEncryption is what the provisioner keeps to hand a pod VM the key of
// its encrypted ephemeral disk. The key itself is never stored: only
// wrapped by the provisioner's key-encryption key, which comes from a
// Secret file and never enters a record, an event or a log.
type PodEncryption struct {
	// Nonce is set at every create of the pod VM and given to the guest in
	// its spec; the guest returns it with its key request, and the key is
	// released only to a request that names the VM's instance uuid and
	// this nonce.
	Nonce string `json:"nonce"`
	// WrappedKey is the disk key sealed with the key-encryption key
	// (AES-256-GCM, the pod uid as additional data).
	WrappedKey []byte `json:"wrappedKey"`
	// KeyID names the key-encryption key that sealed it (a digest prefix),
	// so a changed key file is reported as such rather than as a corrupt
	// record.
	KeyID string `json:"keyId"`
}

// RequestedAfter reports whether r's pod was requested after the delete
// stored at deleteSeq: pod.requested and pod.delete.requested share stream
// PODS, and RequestID is "<event id>#<stream seq>" (the provisioner's
// admission). Such a delete was about an earlier pod of that name (a
// redelivery that comes after the pod was made again, a replay) and must
// leave this one alone, whatever its client put in it: a delete carries a
// uid only when its client read one. A delete not from the stream
// (deleteSeq 0), or a record whose RequestID says no sequence, cannot
// tell: the delete applies.
func (r *PodRecord) RequestedAfter(deleteSeq uint64) bool {
	i := strings.LastIndexByte(r.RequestID, '#')
	if i < 0 || deleteSeq == 0 {
		return false
	}
	seq, err := strconv.ParseUint(r.RequestID[i+1:], 10, 64)
	return err == nil && seq > deleteSeq
}
