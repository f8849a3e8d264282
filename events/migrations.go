package events

import (
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Migration phases reported by MigrationProgress, in order.
const (
	// PhaseQueued: waiting for a concurrency slot (QueuePosition says where).
	PhaseQueued = "Queued"
	// PhasePrechecking: re-checking networks and room on both hosts.
	PhasePrechecking = "Prechecking"
	// PhaseRelocating: the vMotion task runs (Percent is its progress); a
	// cancel is no longer possible.
	PhaseRelocating = "Relocating"
	// PhaseFinalizing: the VM is on the target; records are being moved.
	PhaseFinalizing = "Finalizing"
)

// MigrationPhases lists the phases in order.
func MigrationPhases() []string {
	return []string{PhaseQueued, PhasePrechecking, PhaseRelocating, PhaseFinalizing}
}

// Migration is a migration as a user declares it (podvisor apply -f):
//
//	apiVersion: podvisor.io/v1alpha1
//	kind: Migration
//	metadata: {name: move-web}      # optional: becomes the migration ID
//	spec: {namespace: default, pod: web, targetHost: DC0_C0_H3}
type Migration struct {
	// APIVersion must be podvisor.io/v1alpha1 when set.
	APIVersion string `json:"apiVersion,omitempty"`
	// Kind must be Migration when set.
	Kind string `json:"kind,omitempty"`
	// Metadata.Name, when set, is used as the migration ID.
	Metadata Meta `json:"metadata,omitzero"`
	// Spec says which pod goes where.
	Spec MigrationSpec `json:"spec"`
}

// MigrationSpec says which pod to move and, optionally, where.
type MigrationSpec struct {
	// Pod is the pod name.
	Pod string `json:"pod"`
	// Namespace of the pod; empty means "default".
	Namespace string `json:"namespace,omitempty"`
	// TargetHost, when set, is the host to move to; otherwise the scheduler
	// picks one.
	TargetHost string `json:"targetHost,omitempty"`
}

// Validate checks the object; paths start at the object root.
func (m *Migration) Validate() error { return asError(m.validate(nil)) }

func (m *Migration) validate(p *field.Path) field.ErrorList {
	errs := validateTypeMeta(p, m.APIVersion, m.Kind, APIVersion, KindMigration)
	if m.Metadata.Name != "" {
		errs = append(errs, validateToken(p.Child("metadata", "name"), m.Metadata.Name, true)...)
	}
	errs = append(errs, validateLabels(p.Child("metadata", "labels"), m.Metadata.Labels)...)
	errs = append(errs, validateDNSSubdomain(p.Child("spec", "pod"), m.Spec.Pod)...)
	if m.Spec.Namespace != "" {
		errs = append(errs, validateDNSLabel(p.Child("spec", "namespace"), m.Spec.Namespace)...)
	}
	if m.Spec.TargetHost != "" {
		errs = append(errs, validateHostName(p.Child("spec", "targetHost"), m.Spec.TargetHost)...)
	}
	return errs
}

// Request turns the object into the event that starts it; id is used when
// the object has no name.
func (m *Migration) Request(id string) MigrationRequested {
	if m.Metadata.Name != "" {
		id = m.Metadata.Name
	}
	ns := m.Spec.Namespace
	if ns == "" {
		ns = DefaultNamespace
	}
	return MigrationRequested{MigrationRef: MigrationRef{ID: id, Namespace: ns, Pod: m.Spec.Pod}, TargetHost: m.Spec.TargetHost}
}

// validateMigrationRef checks the ID/namespace/pod triple of every migration
// event.
func validateMigrationRef(id, namespace, pod string) field.ErrorList {
	errs := validateToken(field.NewPath("id"), id, true)
	errs = append(errs, validateDNSLabel(field.NewPath("namespace"), namespace)...)
	errs = append(errs, validateDNSSubdomain(field.NewPath("pod"), pod)...)
	return errs
}

// MigrationRequested asks to move a running pod to another host. Any client
// may publish it.
type MigrationRequested struct {
	MigrationRef
	// TargetHost, when set, is where to go; otherwise the scheduler picks.
	TargetHost string `json:"targetHost,omitempty"`
}

// Validate checks the fields.
func (e *MigrationRequested) Validate() error {
	errs := e.MigrationRef.validate()
	if e.TargetHost != "" {
		errs = append(errs, validateHostName(field.NewPath("targetHost"), e.TargetHost)...)
	}
	return asError(errs)
}

// MigrationTargetReserved says the scheduler reserved room for the pod on the
// target host (the source allocation stays until the migration ends).
type MigrationTargetReserved struct {
	MigrationRef
	MigrationMove
}

// Validate checks the fields; the target must differ from the source.
func (e *MigrationTargetReserved) Validate() error {
	errs := e.MigrationRef.validate()
	errs = append(errs, e.MigrationMove.validate(true)...)
	return asError(errs)
}

// MigrationRejected says a migration will not happen; nothing was changed.
type MigrationRejected struct {
	MigrationRef
	// Reason is a CamelCase word: NotFound, NotRunning, NoTarget,
	// TargetUnsuitable, AlreadyMigrating, ...
	Reason string `json:"reason"`
	// Message explains for a person.
	Message string `json:"message"`
}

// Validate checks the fields.
func (e *MigrationRejected) Validate() error {
	errs := e.MigrationRef.validate()
	errs = append(errs, validateFailure(e.Reason, e.Message)...)
	return asError(errs)
}

// MigrationProgress reports where a migration is.
type MigrationProgress struct {
	MigrationRef
	// Phase is one of MigrationPhases().
	Phase string `json:"phase"`
	// Percent done, 0 to 100 (meaningful while Relocating).
	Percent int `json:"percent"`
	// QueuePosition is the number of migrations ahead while Queued (0 = next).
	QueuePosition int `json:"queuePosition,omitempty"`
	// Message explains for a person.
	Message string `json:"message,omitempty"`
}

// Validate checks the fields.
func (e *MigrationProgress) Validate() error {
	errs := e.MigrationRef.validate()
	switch e.Phase {
	case PhaseQueued, PhasePrechecking, PhaseRelocating, PhaseFinalizing:
	default:
		errs = append(errs, field.NotSupported(field.NewPath("phase"), e.Phase, MigrationPhases()))
	}
	if e.Percent < 0 || e.Percent > 100 {
		errs = append(errs, field.Invalid(field.NewPath("percent"), e.Percent, "must be between 0 and 100"))
	}
	errs = append(errs, validateNonNegative(field.NewPath("queuePosition"), int64(e.QueuePosition))...)
	return asError(errs)
}

// MigrationCompleted says the pod VM runs on the target host; the scheduler
// moves the allocation, the provisioner the pod record, network-config the
// port binding.
type MigrationCompleted struct {
	MigrationRef
	MigrationMove
}

// Validate checks the fields.
func (e *MigrationCompleted) Validate() error {
	errs := e.MigrationRef.validate()
	errs = append(errs, e.MigrationMove.validate(false)...)
	return asError(errs)
}

// MigrationFailed says a migration stopped; the pod stays (or is back) on
// SourceHost and the scheduler releases the reservation on TargetHost.
type MigrationFailed struct {
	MigrationRef
	UID string `json:"uid,omitempty"`
	// SourceHost the pod stays on.
	SourceHost string `json:"sourceHost,omitempty"`
	// TargetHost whose reservation is released, if one was made.
	TargetHost string `json:"targetHost,omitempty"`
	// Reason is a CamelCase word: RelocateFailed, NetworkMissingOnTarget,
	// Timeout, ...
	Reason string `json:"reason"`
	// Message explains for a person.
	Message string `json:"message"`
}

// Validate checks the fields.
func (e *MigrationFailed) Validate() error {
	errs := e.MigrationRef.validate()
	errs = append(errs, validateToken(field.NewPath("uid"), e.UID, false)...)
	if e.SourceHost != "" {
		errs = append(errs, validateHostName(field.NewPath("sourceHost"), e.SourceHost)...)
	}
	if e.TargetHost != "" {
		errs = append(errs, validateHostName(field.NewPath("targetHost"), e.TargetHost)...)
	}
	errs = append(errs, validateFailure(e.Reason, e.Message)...)
	return asError(errs)
}

// MigrationCancelRequested asks to cancel a migration that has not begun
// relocating. Any client may publish it.
type MigrationCancelRequested struct {
	MigrationRef
}

// Validate checks the fields.
func (e *MigrationCancelRequested) Validate() error {
	errs := e.MigrationRef.validate()
	return asError(errs)
}

// MigrationCancelled says a migration was cancelled before relocating; the
// scheduler releases the reservation on TargetHost.
type MigrationCancelled struct {
	MigrationRef
	UID string `json:"uid,omitempty"`
	// TargetHost whose reservation is released, if one was made.
	TargetHost string `json:"targetHost,omitempty"`
}

// Validate checks the fields.
func (e *MigrationCancelled) Validate() error {
	errs := e.MigrationRef.validate()
	errs = append(errs, validateToken(field.NewPath("uid"), e.UID, false)...)
	if e.TargetHost != "" {
		errs = append(errs, validateHostName(field.NewPath("targetHost"), e.TargetHost)...)
	}
	return asError(errs)
}
