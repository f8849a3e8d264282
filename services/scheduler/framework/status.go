package framework

import "fmt"

// Code is the outcome of a plugin.
type Code int

const (
	// Success: the host fits (a nil *Status means the same).
	Success Code = iota
	// Unschedulable: the host does not fit now but may later, when pods
	// leave, networks are realized or the host comes back.
	Unschedulable
	// UnschedulableAndUnresolvable: the host will not fit this pod whatever
	// else changes on it (the pod is larger than the host's capacity, or the
	// host is the source of the pod's migration). A selector mismatch is
	// not: an operator may relabel the host.
	UnschedulableAndUnresolvable
	// Error: the plugin could not decide (a bug or an unreachable read model).
	Error
)

func (c Code) String() string {
	switch c {
	case Success:
		return "Success"
	case Unschedulable:
		return "Unschedulable"
	case UnschedulableAndUnresolvable:
		return "UnschedulableAndUnresolvable"
	case Error:
		return "Error"
	}
	return fmt.Sprintf("Code(%d)", int(c))
}

// Status is a plugin's verdict. Filter plugins return shared, preallocated
// statuses for their common reasons: a Filter runs for thousands of hosts per
// pod and must not allocate.
type Status struct {
	// Code is the outcome.
	Code Code
	// Reason is a CamelCase word counted in pod.unschedulable
	// (InsufficientMemory, NetworkNotOnHost, ...).
	Reason string
	// Message is the phrase a person reads after the count ("insufficient
	// memory").
	Message string
}

// NewStatus returns a status.
func NewStatus(code Code, reason, message string) *Status {
	return &Status{Code: code, Reason: reason, Message: message}
}

// AsError wraps an error as an Error status.
func AsError(err error) *Status {
	return &Status{Code: Error, Reason: "SchedulerError", Message: err.Error()}
}

// IsSuccess reports whether the status lets the pod through.
func (s *Status) IsSuccess() bool { return s == nil || s.Code == Success }

// Error makes a failing status usable as an error.
func (s *Status) Error() string {
	if s == nil {
		return "success"
	}
	return fmt.Sprintf("%s: %s (%s)", s.Code, s.Message, s.Reason)
}
