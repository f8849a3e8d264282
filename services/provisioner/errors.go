package provisioner

import (
	"errors"
	"fmt"

	"github.com/podvisor/podvisor/services/provisioner/podvm"
)

// Sentinel errors of the service.
var (
	// ErrNoVSphere is returned by New without a vSphere session.
	ErrNoVSphere = errors.New("provisioner: a vSphere session is required")
	// ErrNoBus is returned by New without a bus.
	ErrNoBus = errors.New("provisioner: a bus connection is required")
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
	ReasonVMMissing      = "VMMissing"
)

// stepError tags a vSphere failure with the step that failed, which decides
// the pod's failure reason (CreateVMFailed, PowerOnFailed).
type stepError struct {
	reason string
	err    error
}

func (e *stepError) Error() string { return e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

func step(reason string, err error) error {
	if err == nil {
		return nil
	}
	return &stepError{reason: reason, err: err}
}

// failureOf turns a provisioning error into the reason and message of a
// pod.failed event. The message names the step, the VM and the vSphere
// fault, which is what a person needs to act (free capacity, fix a port
// group, grant a permission).
func failureOf(err error, attempts uint64, exhausted bool) (reason, message string) {
	reason = ReasonCreateVMFailed
	var se *stepError
	if errors.As(err, &se) {
		reason = se.reason
	}
	message = err.Error()
	if fault := podvm.Reason(err, ""); fault != "" {
		message = fmt.Sprintf("%s (vSphere fault %s)", message, fault)
	}
	if exhausted {
		message = fmt.Sprintf("gave up after %d attempts: %s", attempts, message)
	}
	return reason, message
}

// createTaskFailed is the fault of a recorded CreateVM task found failed
// when the provisioner came back to it: that attempt made no VM.
type createTaskFailed struct{ err error }

func (e *createTaskFailed) Error() string { return "earlier create attempt failed: " + e.err.Error() }
func (e *createTaskFailed) Unwrap() error { return e.err }
