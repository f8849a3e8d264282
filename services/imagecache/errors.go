package imagecache

import (
	"errors"

	"github.com/podvisor/podvisor/services/imagecache/imagedisk"
	"github.com/podvisor/podvisor/services/imagecache/layerfs"
	"github.com/podvisor/podvisor/services/imagecache/oci"
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

// reasonOf maps an error to its reason and whether retrying can help.
func reasonOf(err error) (reason string, retryable bool) {
	switch {
	case errors.Is(err, oci.ErrInvalidReference):
		return ReasonInvalidImageName, false
	case errors.Is(err, oci.ErrImageNotFound):
		return ReasonImageNotFound, false
	case errors.Is(err, oci.ErrUnauthorized):
		return ReasonUnauthorized, false
	case errors.Is(err, oci.ErrDigestMismatch):
		// A registry serving bytes that do not match its own manifest is
		// broken, not busy: retrying only pulls the same bad bytes again.
		return ReasonDigestMismatch, false
	case errors.Is(err, oci.ErrLimit):
		return ReasonImageLimitExceeded, false
	case errors.Is(err, layerfs.ErrInvalidLayer):
		return ReasonInvalidLayer, false
	case errors.Is(err, oci.ErrRefused):
		return ReasonRegistryRefused, false
	case errors.Is(err, oci.ErrInvalidConfig):
		return ReasonInvalidImageConfig, false
	case errors.Is(err, ErrDisksUnavailable):
		return ReasonDisksUnavailable, false
	case errors.Is(err, ErrDatastoreFull):
		return ReasonDatastoreFull, false
	case errors.Is(err, ErrNoDatastore), errors.Is(err, imagedisk.ErrUnknownDatastore):
		return ReasonNoImageDatastore, false
	case errors.Is(err, oci.ErrRegistryUnavailable):
		return ReasonRegistryUnavailable, true
	default:
		return ReasonImagePrepareFailed, true
	}
}
