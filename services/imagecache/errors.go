package imagecache

import (
	"errors"

	"github.com/podvisor/podvisor/services/imagecache/imagedisk"
	"github.com/podvisor/podvisor/services/imagecache/layerfs"
	"github.com/podvisor/podvisor/services/imagecache/oci"
	"github.com/podvisor/podvisor/shared/bus"
)

// Errors of image preparation beyond the registry's (package oci) and the
// datastore's (package imagedisk).
var (
	// ErrDatastoreFull: no allowed datastore has room for the missing layers.
	ErrDatastoreFull = errors.New("datastore full")
	// ErrNoDatastore: the host the pod is scheduled on mounts no datastore
	// the image cache may use.
	ErrNoDatastore = errors.New("no image datastore")
	// ErrLeaseLost: another replica took over a pull this one was doing
	// (this one was too slow to renew its lease); the pull is retried.
	ErrLeaseLost = errors.New("pull lease lost")
	// ErrDisksUnavailable: this process cannot write image disks (not root,
	// or no mkfs.erofs); every pull fails with the reason.
	ErrDisksUnavailable = errors.New("image disks cannot be written here")
)

// Reasons of pod.images.failed, as a person reads them in `podvisor get pods`.
const (
	ReasonInvalidImageName    = "InvalidImageName"
	ReasonImageNotFound       = "ImageNotFound"
	ReasonUnauthorized        = "Unauthorized"
	ReasonRegistryUnavailable = "RegistryUnavailable"
	ReasonDigestMismatch      = "DigestMismatch"
	ReasonDatastoreFull       = "DatastoreFull"
	ReasonNoImageDatastore    = "NoImageDatastore"
	ReasonImagePrepareFailed  = "ImagePrepareFailed"
	ReasonImageLimitExceeded  = "ImageLimitExceeded"
	ReasonInvalidLayer        = "InvalidLayer"
	ReasonRegistryRefused     = "RegistryRefused"
	ReasonInvalidImageConfig  = "InvalidImageConfig"
	ReasonDisksUnavailable    = "ImageDisksUnavailable"
)

// classify gives an image preparation error its reason and its code (the
// one error model, package bus): what no retry can fix is Permanent; a
// registry that does not answer, and anything not known, is retried.
func classify(err error) error {
	refuse := func(reason string) error { return bus.Permanent(bus.WithReason(reason, err)) }
	switch {
	case errors.Is(err, oci.ErrInvalidReference):
		return refuse(ReasonInvalidImageName)
	case errors.Is(err, oci.ErrImageNotFound):
		return refuse(ReasonImageNotFound)
	case errors.Is(err, oci.ErrUnauthorized):
		return refuse(ReasonUnauthorized)
	case errors.Is(err, oci.ErrDigestMismatch):
		// A registry serving bytes that do not match its own manifest is
		// broken, not busy: retrying only pulls the same bad bytes again.
		return refuse(ReasonDigestMismatch)
	case errors.Is(err, oci.ErrLimit):
		return refuse(ReasonImageLimitExceeded)
	case errors.Is(err, layerfs.ErrInvalidLayer):
		return refuse(ReasonInvalidLayer)
	case errors.Is(err, oci.ErrRefused):
		return refuse(ReasonRegistryRefused)
	case errors.Is(err, oci.ErrInvalidConfig):
		return refuse(ReasonInvalidImageConfig)
	case errors.Is(err, ErrDisksUnavailable):
		return refuse(ReasonDisksUnavailable)
	case errors.Is(err, ErrDatastoreFull):
		return refuse(ReasonDatastoreFull)
	case errors.Is(err, ErrNoDatastore), errors.Is(err, imagedisk.ErrUnknownDatastore):
		return refuse(ReasonNoImageDatastore)
	case errors.Is(err, oci.ErrRegistryUnavailable):
		return bus.WithReason(ReasonRegistryUnavailable, err)
	default:
		return bus.WithReason(ReasonImagePrepareFailed, err)
	}
}
