package provisioner

import (
	"fmt"

	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/podvisor/podvisor/shared/bus"
)

// Reasons the provisioner puts on failed pods (PodFailed.Reason and the
// record's Reason), each a CamelCase word a person can search for.
const (
	ReasonCreateVMFailed = "CreateVMFailed"
	ReasonPowerOnFailed  = "PowerOnFailed"
	ReasonImagesFailed   = "ImagesFailed"
	ReasonNetworkFailed  = "NetworkFailed"
	ReasonDeleteFailed   = "DeleteFailed"
	ReasonUnschedulable  = "Unschedulable"
	// ReasonNetworkRefused: the host the pod was scheduled to refused one
	// of its networks; the pod is being placed on another host.
	ReasonNetworkRefused = "NetworkRefused"
	ReasonVMMissing      = "VMMissing"
	// ReasonEncryptionUnavailable: the pod asks for an encrypted ephemeral
	// disk and the provisioner has no key-encryption key.
	ReasonEncryptionUnavailable = "EncryptionUnavailable"
)

// step tags a vSphere failure with the step that failed (bus.WithReason),
// which decides the pod's failure reason (CreateVMFailed, PowerOnFailed);
// only such a failure can fail a pod (gaveUp).
func step(reason string, err error) error { return bus.WithReason(reason, err) }

// failureOf turns a provisioning error that ended m's handling into the
// reason and message of a pod.failed event. The message names the step,
// the VM and the vSphere fault, which is what a person needs to act (free
// capacity, fix a port group, grant a permission).
func failureOf(m *bus.Message, err error) (reason, message string) {
	message = m.FailureMessage(err)
	if fault := podvm.Reason(err, ""); fault != "" {
		message = fmt.Sprintf("%s (vSphere fault %s)", message, fault)
	}
	return bus.ReasonOf(err, ReasonCreateVMFailed), message
}

// createTaskFailed is the fault of a recorded CreateVM task found failed
// when the provisioner came back to it: that attempt made no VM.
type createTaskFailed struct{ err error }

func (e *createTaskFailed) Error() string { return "earlier create attempt failed: " + e.err.Error() }
func (e *createTaskFailed) Unwrap() error { return e.err }
