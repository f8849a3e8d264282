package vsphere

import "errors"

var (
	// ErrNotFound is wrapped by lookups of an inventory object that does
	// not exist (a datastore, cluster, switch or folder child by name).
	ErrNotFound = errors.New("not found")
	// ErrDuplicateName is wrapped when a name that must identify one object
	// identifies several, e.g. two VMs named pv-<uid>: vCenter allows that in
	// different folders (and vcsim even in one), podvisor's naming does not.
	ErrDuplicateName = errors.New("duplicate name")
	// ErrInvalidName is wrapped when a name or path is rejected before any
	// call is made.
	ErrInvalidName = errors.New("invalid name")
)
