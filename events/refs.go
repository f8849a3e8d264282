package events

import "k8s.io/apimachinery/pkg/util/validation/field"

// The references below name the object an event is about. Payloads embed
// them without a json tag, so their fields stay at the top level of the
// JSON object, in the same place and under the same names as when each
// payload declared them itself: embedding changes the Go type, never the
// wire format. The embedded struct also gives the payload its ObjectKey.

// PodRef names the pod a pod.* fact is about.
type PodRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// UID of the pod; its pod VM is named pv-<uid>.
	UID string `json:"uid"`
}

// ObjectKey is the pod key <namespace>/<name>.
func (r *PodRef) ObjectKey() string { return PodKey(r.Namespace, r.Name) }

// validate checks the three fields, the uid required.
func (r *PodRef) validate() field.ErrorList {
	return validatePodRef(r.Namespace, r.Name, r.UID, true)
}

// VMRef names the native VM a vm.* fact is about. VM names are DNS labels
// (they become guest host names), stricter than pod names.
type VMRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
}

// ObjectKey is the VM key <namespace>/<name>.
func (r *VMRef) ObjectKey() string { return PodKey(r.Namespace, r.Name) }

// validate checks the three fields, the uid required.
func (r *VMRef) validate() field.ErrorList {
	return validateVMRef(r.Namespace, r.Name, r.UID, true)
}

// MigrationRef names a migration and the pod it moves, in every
// migration.* event.
type MigrationRef struct {
	// ID names the migration in every event about it (a UUID or the
	// Migration object's name).
	ID string `json:"id"`
	// Namespace of the pod.
	Namespace string `json:"namespace"`
	// Pod name.
	Pod string `json:"pod"`
}

// ObjectKey is the pod key: one migration per pod at a time, so migration
// events of a pod share one work-queue key.
func (r *MigrationRef) ObjectKey() string { return PodKey(r.Namespace, r.Pod) }

// validate checks the three fields.
func (r *MigrationRef) validate() field.ErrorList {
	return validateMigrationRef(r.ID, r.Namespace, r.Pod)
}

// MigrationMove is the pod and the two ends of a migration whose target is
// reserved, in migration.target.reserved and migration.completed. Like the
// references above it is embedded without a json tag, so its fields stay at
// the top level of the JSON object.
type MigrationMove struct {
	// UID of the pod.
	UID string `json:"uid"`
	// SourceHost the pod runs on before the move.
	SourceHost string `json:"sourceHost"`
	// TargetHost it moves to.
	TargetHost string `json:"targetHost"`
	// TargetCluster of TargetHost.
	TargetCluster string `json:"targetCluster"`
	// TargetPool is the inventory path of the resource pool on the target.
	TargetPool string `json:"targetPool,omitempty"`
}

// validate checks the fields and, with distinct, that TargetHost is not
// SourceHost (migration.target.reserved checks it, migration.completed
// never has).
func (m *MigrationMove) validate(distinct bool) field.ErrorList {
	errs := validateToken(field.NewPath("uid"), m.UID, true)
	errs = append(errs, validateHostMove(m.SourceHost, m.TargetHost)...)
	if distinct && m.SourceHost != "" && m.SourceHost == m.TargetHost {
		errs = append(errs, field.Invalid(field.NewPath("targetHost"), m.TargetHost, "must differ from sourceHost"))
	}
	return append(errs, validateObjectName(field.NewPath("targetCluster"), m.TargetCluster)...)
}
