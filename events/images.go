package events

import (
	"k8s.io/apimachinery/pkg/util/validation/field"
	"strconv"
)

// ChainDisk is one virtual disk of an image disk chain: the union of the
// layers up to and including one layer, identified by its OCI chainID.
type ChainDisk struct {
	// ChainID is the OCI chainID of the layer prefix this disk holds.
	ChainID string `json:"chainID"`
	// Disk is the datastore path of the disk.
	Disk string `json:"disk"`
	// Parent is the ChainID of the disk below, empty for the base layer.
	Parent string `json:"parent,omitempty"`
	// Size is the disk's size in bytes.
	Size int64 `json:"size"`
}

// ImagePulled says an image is prepared on a datastore. It is published once
// per image and datastore, also when every layer was already there
// (LayersPulled 0), so consumers can track image locality.
type ImagePulled struct {
	// Image is the reference as written by the pod that needed it.
	Image string `json:"image"`
	// Digest is the manifest digest the reference resolved to.
	Digest string `json:"digest"`
	// Bytes is the total (compressed) size of the image's layers.
	Bytes int64 `json:"bytes"`
	// LayersPulled is how many layers had to be fetched from the registry;
	// the others were shared with images already on the datastore.
	LayersPulled int `json:"layersPulled"`
	// Datastore holds the chain.
	Datastore string `json:"datastore"`
	// Chain lists the image's disks, base layer first; each disk's Parent is
	// the ChainID of the one before it.
	Chain []ChainDisk `json:"chain"`
}

// Validate checks the image and that the chain links up.
func (e *ImagePulled) Validate() error {
	errs := validateImageRef(field.NewPath("image"), e.Image)
	errs = append(errs, validateDigest(field.NewPath("digest"), e.Digest)...)
	errs = append(errs, validateNonNegative(field.NewPath("bytes"), e.Bytes)...)
	errs = append(errs, validateNonNegative(field.NewPath("layersPulled"), int64(e.LayersPulled))...)
	if e.LayersPulled > len(e.Chain) {
		errs = append(errs, field.Invalid(field.NewPath("layersPulled"), e.LayersPulled, "exceeds the number of layers in chain"))
	}
	errs = append(errs, validateObjectName(field.NewPath("datastore"), e.Datastore)...)
	if len(e.Chain) == 0 {
		errs = append(errs, field.Required(field.NewPath("chain"), "at least one layer disk"))
	}
	for i, d := range e.Chain {
		p := field.NewPath("chain").Index(i)
		errs = append(errs, validateDigest(p.Child("chainID"), d.ChainID)...)
		errs = append(errs, validateDatastorePath(p.Child("disk"), d.Disk)...)
		errs = append(errs, validateNonNegative(p.Child("size"), d.Size)...)
		want := ""
		if i > 0 {
			want = e.Chain[i-1].ChainID
		}
		if d.Parent != want {
			detail := "the base disk must have no parent"
			if i > 0 {
				detail = "must be the chainID of chain[" + strconv.Itoa(i-1) + "]"
			}
			errs = append(errs, field.Invalid(p.Child("parent"), d.Parent, detail))
		}
	}
	return asError(errs)
}

// ObjectKey is the image digest and the datastore (digest@datastore): an
// image is announced once per datastore, and the same pod event preparing
// it on two datastores yields two distinct events.
func (e *ImagePulled) ObjectKey() string { return e.Digest + "@" + e.Datastore }

// ImageEvicted says the image cache's garbage collector removed an unused
// disk of a chain from a datastore.
type ImageEvicted struct {
	// ChainID of the removed disk.
	ChainID string `json:"chainID"`
	// Disk is the datastore path of the removed disk.
	Disk string `json:"disk"`
	// Datastore it was on.
	Datastore string `json:"datastore"`
	// Bytes freed.
	Bytes int64 `json:"bytes"`
}

// Validate checks the disk identity.
func (e *ImageEvicted) Validate() error {
	errs := validateDigest(field.NewPath("chainID"), e.ChainID)
	errs = append(errs, validateDatastorePath(field.NewPath("disk"), e.Disk)...)
	errs = append(errs, validateObjectName(field.NewPath("datastore"), e.Datastore)...)
	errs = append(errs, validateNonNegative(field.NewPath("bytes"), e.Bytes)...)
	return asError(errs)
}

// ObjectKey is the chainID.
func (e *ImageEvicted) ObjectKey() string { return e.ChainID }
