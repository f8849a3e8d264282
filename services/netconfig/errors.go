package netconfig

import "errors"

// Sentinel errors. Handlers wrap them with the network, host or pod they are
// about; the bus outcome is decided where they arise, with bus.Permanent,
// bus.RetryAfter and bus.WithReason.
var (
	// ErrNetworkNotFound: no record of the network (never declared, or deleted).
	ErrNetworkNotFound = errors.New("network not found")
	// ErrInvalidSpec: a declaration that cannot be applied here (overlapping
	// CIDR, unknown cluster or host). Refused, never retried.
	ErrInvalidSpec = errors.New("invalid network spec")
	// ErrInUse: a change of a network that addresses held on it forbid (a
	// CIDR or gateway leaving them invalid). Refused, never retried.
	ErrInUse = errors.New("network in use")
	// ErrNotInScope: a pod was scheduled to a host outside its network's scope.
	ErrNotInScope = errors.New("host not in network scope")
	// ErrNotRealized: the network could not be realized on the host.
	ErrNotRealized = errors.New("network not realized on host")
	// ErrPodUnknown: pod.scheduled arrived for a pod whose networks are not
	// known yet (pod.accepted not seen, pod record not readable); retried.
	ErrPodUnknown = errors.New("pod networks unknown")
)
