package events

import (
	"fmt"
	"time"
)

// BucketMigrations holds one MigrationRecord per migration, keyed by
// MigrationRecordKey (the migration ID). Only the migration service writes
// it; `podvisor get migrations` and `podvisor migrate` read it.
const BucketMigrations = "migrations"

// MigrationLeaderKey is the key of the migration service's leader lease in
// bucket migrations. Migration IDs begin with a letter or a digit, so no
// record can take it; readers of the bucket skip it.
const MigrationLeaderKey = "_leader"

// BucketDrains holds one DrainRecord per host that was drained, keyed by
// DrainRecordKey. Only the migration service writes it (and declares it at
// start, since it is the only reader that needs drains to outlive a
// restart: a drain in progress resumes from its record).
const BucketDrains = "drains"

// Migration record phases. The four in-flight phases of MigrationProgress
// (PhaseQueued, PhasePrechecking, PhaseRelocating, PhaseFinalizing) are
// used as they are; these add the waiting phase before them and the final
// ones after.
const (
	// MigrationPhasePending: requested, waiting for the scheduler to reserve
	// room on a target host.
	MigrationPhasePending = "Pending"
	// MigrationPhaseCompleted: the pod VM runs on the target host.
	MigrationPhaseCompleted = "Completed"
	// MigrationPhaseFailed: the migration stopped; the pod stays on its
	// source host. Reason and Message say why.
	MigrationPhaseFailed = "Failed"
	// MigrationPhaseRejected: refused before anything was reserved or moved
	// (by the scheduler: no target; by the migration service: the pod is
	// already migrating).
	MigrationPhaseRejected = "Rejected"
	// MigrationPhaseCancelled: cancelled before relocating began.
	MigrationPhaseCancelled = "Cancelled"
)

// MigrationPhaseFinal reports whether a record phase is final: nothing will
// change the migration any more.
func MigrationPhaseFinal(phase string) bool {
	switch phase {
	case MigrationPhaseCompleted, MigrationPhaseFailed, MigrationPhaseRejected, MigrationPhaseCancelled:
		return true
	}
	return false
}

// MigrationRecord is the migration service's record of one migration (KV
// `migrations`). `podvisor get migrations` prints it as NAMESPACE POD FROM
// TO PHASE AGE REASON.
type MigrationRecord struct {
	// ID names the migration (MigrationRequested.ID).
	ID string `json:"id"`
	// Namespace, Pod and UID identify the pod (UID is known once the
	// scheduler reserved a target).
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	UID       string `json:"uid,omitempty"`
	// RequestedTarget is the target host the request named, if any.
	RequestedTarget string `json:"requestedTarget,omitempty"`

	// SourceHost and SourceCluster are where the pod ran when the target
	// was reserved.
	SourceHost    string `json:"sourceHost,omitempty"`
	SourceCluster string `json:"sourceCluster,omitempty"`
	// TargetHost, TargetCluster and TargetPool are the reserved target.
	TargetHost    string `json:"targetHost,omitempty"`
	TargetCluster string `json:"targetCluster,omitempty"`
	TargetPool    string `json:"targetPool,omitempty"`

	// Phase is MigrationPhasePending, one of MigrationPhases() while in
	// flight, or a final phase (MigrationPhaseFinal).
	Phase string `json:"phase"`
	// Percent is the relocation's progress, 0 to 100.
	Percent int `json:"percent,omitempty"`
	// QueuePosition is the number of migrations ahead while Queued.
	QueuePosition int `json:"queuePosition,omitempty"`
	// Reason (a CamelCase word) and Message explain a refusal, a failure or
	// what a queued migration waits for.
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	// CancelRequested is set when a cancel arrived; it takes effect before
	// relocating begins and is ignored after.
	CancelRequested bool `json:"cancelRequested,omitempty"`
	// Kind is MigrationKindVM for a native VM's migration (Pod then names
	// the VM): the migration service only admits it under the limits, and
	// the native VM controller relocates it. Empty for a pod's.
	Kind string `json:"kind,omitempty"`
	// Drain is the host whose drain requested this migration, if any.
	Drain string `json:"drain,omitempty"`
	// VMRef is the pod VM's managed object reference (from the pod record).
	VMRef string `json:"vmRef,omitempty"`
	// RelocateTask is the RelocateVM task reference while relocating: kept
	// before waiting on the task, so that a restart finds the task rather
	// than starting a second relocation.
	RelocateTask string `json:"relocateTask,omitempty"`
	// AnnouncePending is set when the record is made final and cleared
	// once the outcome's event (migration.completed, .failed, .cancelled)
	// is published: the record is final before anyone hears of the end, and
	// an announcement a crash cut off is made by the leader's sweep.
	AnnouncePending bool `json:"announcePending,omitempty"`
	// TraceParent is the W3C traceparent of the request, so that every
	// event of the migration joins the request's trace.
	TraceParent string `json:"traceparent,omitempty"`

	// CreatedAt is when the request was recorded; StartedAt when it left
	// the queue; EndedAt when it reached a final phase; UpdatedAt when the
	// record was last written.
	CreatedAt time.Time `json:"createdAt"`
	StartedAt time.Time `json:"startedAt,omitzero"`
	EndedAt   time.Time `json:"endedAt,omitzero"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// MigrationRecordKey is the KV key of a migration's record: its ID, which
// is already made of characters a KV key may hold.
func MigrationRecordKey(id string) string { return id }

// Key is the pod key <namespace>/<name>.
func (r *MigrationRecord) Key() string { return PodKey(r.Namespace, r.Pod) }

// MigrationKindVM is MigrationRecord.Kind of a native VM's migration.
const MigrationKindVM = "VirtualMachine"

// IsVM reports whether the record is a native VM's migration.
func (r *MigrationRecord) IsVM() bool { return r.Kind == MigrationKindVM }

// Active reports whether the migration still holds the pod: it is neither
// final nor merely requested and refused.
func (r *MigrationRecord) Active() bool { return !MigrationPhaseFinal(r.Phase) }

// Started reports whether relocation has begun, after which a cancel is
// no longer possible.
func (r *MigrationRecord) Started() bool {
	return r.Phase == PhaseRelocating || r.Phase == PhaseFinalizing || r.Phase == MigrationPhaseCompleted
}

// Drain phases (DrainRecord.Phase).
const (
	// DrainPhaseDraining: the host is cordoned and its pods are migrating.
	DrainPhaseDraining = "Draining"
	// DrainPhaseEnteringMaintenance: every pod left; maintenance mode is
	// being entered.
	DrainPhaseEnteringMaintenance = "EnteringMaintenance"
	// DrainPhaseDrained: the host is empty and in maintenance mode.
	DrainPhaseDrained = "Drained"
	// DrainPhaseIncomplete: some pods could not move (Unmovable says why);
	// the host stays cordoned but not in maintenance.
	DrainPhaseIncomplete = "Incomplete"
	// DrainPhaseUncordoned: the host was uncordoned (and left maintenance
	// mode); a drain still running was stopped.
	DrainPhaseUncordoned = "Uncordoned"
)

// DrainRecord is the migration service's record of the latest drain of one
// host (KV `drains`).
type DrainRecord struct {
	// Host is the host name.
	Host string `json:"host"`
	// Phase is one of the DrainPhase* constants.
	Phase string `json:"phase"`
	// RequestID is the CloudEvent id of the host.drain.requested that
	// started this drain; a redelivery of it does not start another.
	RequestID string `json:"requestId"`
	// Migrations are the IDs of the migrations the drain requested.
	Migrations []string `json:"migrations,omitempty"`
	// Migrated counts the pods that moved away, MigratedVMs the native VMs.
	Migrated    int `json:"migrated"`
	MigratedVMs int `json:"migratedVMs,omitempty"`
	// Unmovable lists the pods that stayed and why.
	Unmovable []UnmovablePod `json:"unmovable,omitempty"`
	// Round counts passes over the host's pods: pods that were still being
	// provisioned on the host in one pass are migrated in the next.
	Round int `json:"round,omitempty"`
	// VMs are the drain's moves of the host's native VMs, each decided
	// here by CAS (so a drain resumed by another process or leader goes on
	// from what was decided, and knows every outcome it was told).
	VMs []DrainVM `json:"vms,omitempty"`
	// Message explains the phase for a person.
	Message string `json:"message,omitempty"`
	// StartedAt and UpdatedAt bound the drain; EndedAt is set once it ends.
	StartedAt time.Time `json:"startedAt"`
	EndedAt   time.Time `json:"endedAt,omitzero"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// DrainVM is a drain's move of one native VM off its host.
type DrainVM struct {
	// ID is the id of its vm.migrate.requested.
	ID        string `json:"id"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
	// RequestedAt is when the move was asked for (zero while it waits for
	// room under the migration limits).
	RequestedAt time.Time `json:"requestedAt,omitzero"`
	// MigratedAt is when vm.migrated answered; Reason and Message are its
	// failure (empty when the VM moved).
	MigratedAt time.Time `json:"migratedAt,omitzero"`
	Reason     string    `json:"reason,omitempty"`
	Message    string    `json:"message,omitempty"`
	// EvictedAt is when a VM that could not move was evicted (vm.evicted,
	// made again on another host).
	EvictedAt time.Time `json:"evictedAt,omitzero"`
	// Result is set once the drain stopped waiting for the VM: DrainVMMoved,
	// DrainVMGone, or the reason it is unmovable.
	Result string `json:"result,omitempty"`
}

// Results of a DrainVM besides an unmovable VM's reason.
const (
	DrainVMMoved = "Moved"
	DrainVMGone  = "Gone"
)

// DrainRecordKey is the KV key of a host's drain record (the host name,
// escaped like HostRecordKey).
func DrainRecordKey(host string) string { return kvKey(host) }

// MovedText says what a drain moved, for a person: "2 pods", "1 pod and
// 1 VM", "no pods".
func MovedText(pods, vms int) string {
	n := func(k int, one string) string {
		if k == 1 {
			return "1 " + one
		}
		return fmt.Sprintf("%d %ss", k, one)
	}
	switch {
	case vms == 0 && pods == 0:
		return "no pods"
	case vms == 0:
		return n(pods, "pod")
	case pods == 0:
		return n(vms, "VM")
	}
	return n(pods, "pod") + " and " + n(vms, "VM")
}
