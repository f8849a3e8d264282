package events

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Guest-reported pod phases (PodContainersReported.Phase): the pod VM agent's
// own view of its pod, which the provisioner folds into the record's phase.
const (
	GuestPhasePending   = "Pending"
	GuestPhaseRunning   = "Running"
	GuestPhaseSucceeded = "Succeeded"
	GuestPhaseFailed    = "Failed"
	GuestPhaseStopping  = "Stopping"
)

// TemplateNamespace is the namespace the guests of pod VM templates (the
// running VMs the provisioner forks pod VMs from) give in their hello: no
// pod record has it. A host agent accepts such a guest on its host and
// reports it like a pod's, with the containers the guest names; the
// provisioner learns from that report that the template is prepared.
const TemplateNamespace = "podvisor-templates"

// PodContainersReported is the host agent's report of what really runs in a
// pod VM: the state of every container as the pod VM agent sees it. The host
// agent publishes one whenever the agent reports a change (and a full report
// each time the agent connects); the provisioner folds it into the pod
// record's status.containerStatuses, conditions and phase.
type PodContainersReported struct {
	PodRef
	// Host is the host whose agent holds the channel; VM the pod VM's name.
	Host string `json:"host"`
	VM   string `json:"vm"`
	// BootID changes with every boot of the guest; Seq counts the agent's
	// reports since that boot. Within one BootID a report with a lower Seq
	// than one already folded is stale (redelivered or reordered) and is
	// ignored.
	BootID string `json:"bootID"`
	Seq    uint64 `json:"seq"`
	// Phase is the agent's view: Pending, Running, Succeeded, Failed or
	// Stopping; Reason and Message explain a Pending the agent cannot leave.
	Phase   string `json:"phase"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	// InitContainerStatuses and ContainerStatuses are complete (every
	// container of the pod, in spec order), in Kubernetes' shape; ImageID is
	// the image's manifest digest.
	InitContainerStatuses []corev1.ContainerStatus `json:"initContainerStatuses,omitempty"`
	ContainerStatuses     []corev1.ContainerStatus `json:"containerStatuses"`
}

// Validate checks identity, provenance and that every status names a
// container once.
func (e *PodContainersReported) Validate() error {
	errs := e.PodRef.validate()
	errs = append(errs, validateHostName(field.NewPath("host"), e.Host)...)
	errs = append(errs, required(field.NewPath("vm"), e.VM)...)
	errs = append(errs, required(field.NewPath("bootID"), e.BootID)...)
	switch e.Phase {
	case GuestPhasePending, GuestPhaseRunning, GuestPhaseSucceeded, GuestPhaseFailed, GuestPhaseStopping:
	default:
		errs = append(errs, field.NotSupported(field.NewPath("phase"), e.Phase,
			[]string{GuestPhasePending, GuestPhaseRunning, GuestPhaseSucceeded, GuestPhaseFailed, GuestPhaseStopping}))
	}
	if len(e.ContainerStatuses) == 0 {
		errs = append(errs, field.Required(field.NewPath("containerStatuses"), "a pod has at least one container"))
	}
	seen := map[string]bool{}
	check := func(p *field.Path, list []corev1.ContainerStatus) {
		for i, s := range list {
			sp := p.Index(i)
			if s.Name == "" {
				errs = append(errs, field.Required(sp.Child("name"), ""))
			} else if seen[s.Name] {
				errs = append(errs, field.Duplicate(sp.Child("name"), s.Name))
			}
			seen[s.Name] = true
			n := 0
			for _, set := range []bool{s.State.Waiting != nil, s.State.Running != nil, s.State.Terminated != nil} {
				if set {
					n++
				}
			}
			if n != 1 {
				errs = append(errs, field.Invalid(sp.Child("state"), fmt.Sprintf("%d states set", n), "exactly one of waiting, running, terminated"))
			}
			if s.RestartCount < 0 {
				errs = append(errs, field.Invalid(sp.Child("restartCount"), s.RestartCount, "must not be negative"))
			}
		}
	}
	check(field.NewPath("initContainerStatuses"), e.InitContainerStatuses)
	check(field.NewPath("containerStatuses"), e.ContainerStatuses)
	return asError(errs)
}
