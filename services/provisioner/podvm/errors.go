package podvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/bus"
)

// IsTransient reports whether trying again later can help: the vSphere
// faults that mean "busy" or "not reachable right now", and transport
// errors. Everything else (invalid arguments, missing objects, permissions)
// needs a person and is permanent.
func IsTransient(err error) bool {
	if err == nil {
		return false
	}
	// A failure marked with the bus's error model (bus.Permanent for a bad
	// spec, a missing port group, a datastore the host cannot see;
	// bus.RetryAfter for one a later attempt is expected to outlive) says
	// so itself.
	switch bus.CodeOf(err) {
	case bus.CodePermanent:
		return false
	case bus.CodeRetryAfter, bus.CodeInProgress:
		return true
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	if fault.IsTransientError(err) {
		return true
	}
	for _, f := range transientFaults {
		if fault.Is(err, f) {
			return true
		}
	}
	// A session that expired is re-established by the session keepalive;
	// the call succeeds on the next attempt.
	return strings.Contains(err.Error(), "NotAuthenticated")
}

// transientFaults are the vSphere faults that a later attempt can outlive:
// resource pressure that drains, locks that are released, hosts that come
// back, and the SystemError vCenter uses for internal timeouts.
var transientFaults = []types.BaseMethodFault{
	&types.InsufficientResourcesFault{},
	&types.InsufficientHostCapacityFault{},
	&types.InsufficientMemoryResourcesFault{},
	&types.InsufficientCpuResourcesFault{},
	&types.ResourceInUse{},
	&types.SystemError{},
	&types.SystemErrorFault{},
	&types.HostNotConnected{},
	&types.HostNotReachable{},
	&types.NotAuthenticated{},
	&types.InvalidState{},
	&types.Timedout{},
	&types.RequestCanceled{},
}

// IsDuplicate says whether err means an object of the name exists already:
// vCenter's DuplicateName for a VM name taken in its folder, or the
// FileAlreadyExists (AlreadyExists) of a VM directory whose files are
// there. For a pod VM, whose name is the pod's, that is another create of
// the same pod (another replica's, or one whose task was never recorded):
// the VM is to be adopted, not the pod failed.
func IsDuplicate(err error) bool {
	return fault.Is(err, &types.DuplicateName{}) || fault.Is(err, &types.FileAlreadyExists{}) ||
		fault.Is(err, &types.AlreadyExists{})
}

// isNotFound says whether err means the object no longer exists.
func isNotFound(err error) bool {
	return fault.Is(err, &types.ManagedObjectNotFound{})
}

// Reason is a short CamelCase name for a vSphere failure, for pod
// conditions and pod.failed events: the fault's type name when the error
// carries a vSphere fault (InvalidDeviceSpec, NoPermission …), else def.
func Reason(err error, def string) string {
	var name string
	fault.In(err, func(f types.BaseMethodFault, _ string, _ []types.LocalizableMessage) bool {
		name = faultName(f)
		return true
	})
	if name == "" || name == "MethodFault" {
		return def
	}
	return name
}

func faultName(f types.BaseMethodFault) string {
	s := strings.TrimPrefix(strings.TrimPrefix(typeName(f), "*"), "types.")
	if s == "SystemErrorFault" {
		return "SystemError"
	}
	return s
}

func typeName(v any) string { return fmt.Sprintf("%T", v) }
