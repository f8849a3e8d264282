package scheduler

import (
	"errors"
)

var (
	// ErrPodGone: the pod was deleted (or failed) while it waited for a host.
	ErrPodGone = errors.New("pod deleted while waiting for a host")
	// ErrNoInventory: the scheduler has not read the vCenter inventory yet.
	ErrNoInventory = errors.New("host inventory not loaded yet")
	// ErrContention: other schedulers kept taking the room this one chose;
	// the request is retried later.
	ErrContention = errors.New("placement lost to concurrent schedulers")
	// ErrStopped: the service is shutting down.
	ErrStopped = errors.New("scheduler stopped")
)
