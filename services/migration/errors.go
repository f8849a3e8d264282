package migration

import "errors"

// Reasons the migration service puts in migration.rejected,
// migration.failed, pod.evicted and host.drained (CamelCase words a script
// can match; the message beside each explains it for a person).
const (
	// ReasonAlreadyMigrating: the pod has another migration in flight.
	ReasonAlreadyMigrating = "AlreadyMigrating"
	// ReasonNoReservation: the scheduler did not reserve a target in time.
	ReasonNoReservation = "NoReservation"
	// ReasonPodNotFound, ReasonPodReplaced, ReasonNotRunning,
	// ReasonPodMoved: the pod is not what the request moved.
	ReasonPodNotFound = "PodNotFound"
	ReasonPodReplaced = "PodReplaced"
	ReasonNotRunning  = "NotRunning"
	ReasonPodMoved    = "PodMoved"
	// ReasonTargetNotFound, ReasonTargetNotConnected,
	// ReasonTargetInMaintenance, ReasonTargetCordoned: the target host
	// cannot take the pod now.
	ReasonTargetNotFound      = "TargetNotFound"
	ReasonTargetNotConnected  = "TargetNotConnected"
	ReasonTargetInMaintenance = "TargetInMaintenance"
	ReasonTargetCordoned      = "TargetCordoned"
	// ReasonSourceNotConnected: the source host does not answer; a vMotion
	// needs it (a lost host's pods are evicted instead).
	ReasonSourceNotConnected = "SourceNotConnected"
	// ReasonNetworkMissingOnTarget: a network of the pod is not realized on
	// the target host; the message names it.
	ReasonNetworkMissingOnTarget = "NetworkMissingOnTarget"
	// ReasonNetworkMissingOnSource: a network of the pod is no longer
	// available on the source host; the pod's port there cannot be moved
	// (network.host.failed evacuates such pods instead).
	ReasonNetworkMissingOnSource = "NetworkMissingOnSource"
	// ReasonNetworkLost: the host lost a network of the pod
	// (network.host.failed); the pod restarts on another host.
	ReasonNetworkLost = "NetworkLost"
	// ReasonDatastoreMissingOnTarget: the target host does not mount a
	// datastore holding the pod VM's files.
	ReasonDatastoreMissingOnTarget = "DatastoreMissingOnTarget"
	// ReasonVMNotFound, ReasonVMNotOnSource: vCenter disagrees with the pod
	// record about the pod VM.
	ReasonVMNotFound    = "VMNotFound"
	ReasonVMNotOnSource = "VMNotOnSource"
	// ReasonRelocateFailed: vCenter's RelocateVM task failed.
	ReasonRelocateFailed = "RelocateFailed"
	// ReasonTimeout: the relocation took longer than RelocateTimeout.
	ReasonTimeout = "Timeout"
	// ReasonHostLost: the source or target host stopped responding.
	ReasonHostLost = "HostLost"
	// ReasonPrecheckFailed: the checks themselves could not run (vCenter or
	// NATS did not answer).
	ReasonPrecheckFailed = "PrecheckFailed"
	// ReasonReservationFailed: the reserved target could not be taken up
	// (the record could not be written) before the deliveries ran out.
	ReasonReservationFailed = "ReservationFailed"
	// ReasonDrainStopped: the host was uncordoned while its drain ran.
	ReasonDrainStopped = "DrainStopped"
	// ReasonStillProvisioning: a drain found the pod still being placed or
	// provisioned on the host after its last pass.
	ReasonStillProvisioning = "StillProvisioning"
	// ReasonNoTarget: the scheduler found no host that can take the pod or
	// VM (its word, in migration.rejected and vm.migrated); a drain lists
	// it unmovable at once.
	ReasonNoTarget = "NoTarget"
	// ReasonVMStillOnHost: a drain's VM neither moved nor was made again
	// elsewhere within vmLeaveTimeout of its request or eviction.
	ReasonVMStillOnHost = "VMStillOnHost"
)

// Sentinel errors.
var (
	// errExists: a KV Create found the key taken.
	errExists = errors.New("record exists")
	// errNoRecord: a record written before was not found (a read answered
	// by a NATS node that has not applied it yet); try again.
	errNoRecord = errors.New("record not found though it was written (a NATS node not yet current?)")
)
