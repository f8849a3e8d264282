package events

import (
	"fmt"
	"time"
)

// Image chain states (ChainRecord.State and ImageRecord.State).
const (
	// ChainStatePulling: a puller holds the chain's lease and is writing the
	// disk; the data on the datastore is incomplete.
	ChainStatePulling = "pulling"
	// ChainStateReady: the disk is complete and its layer verified; pods may
	// attach it.
	ChainStateReady = "ready"
	// ChainStateFailed: the last pull failed (Reason says why); the next
	// request for the chain pulls again.
	ChainStateFailed = "failed"
	// ChainStateEvicting: the garbage collector is removing the chain; no new
	// reference may be taken.
	ChainStateEvicting = "evicting"
)

// ImageRoot is the folder on every datastore that holds image disk chains:
// "[ds] podvisor-images/<chain>/disk.vmdk" (the descriptor, whose
// ddb.podvisor.* keys name the chain and its parent) with its flat extent
// disk-flat.vmdk (the layer as an erofs filesystem) beside it, and
// "[ds] podvisor-images/manifests/<digest>.json".
const ImageRoot = "podvisor-images"

// ChainRecord is the image cache's record of one image disk on one datastore:
// the union of an image's layers up to one layer, named by the OCI chainID
// of that prefix. Images sharing base layers share the records (and disks) of
// their common prefix. The image cache is its only writer; the record lives
// in Redis (shared/imagelocality documents the keys) and is rebuilt from the
// datastore's disk descriptors when Redis loses it.
type ChainRecord struct {
	// ChainID is the OCI chainID of the layer prefix ("sha256:…").
	ChainID string `json:"chainID"`
	// Datastore holds the disk.
	Datastore string `json:"datastore"`
	// Disk is the datastore path of the disk ("[ds] podvisor-images/<hex>/disk.vmdk").
	Disk string `json:"disk"`
	// Parent is the chainID of the prefix one layer shorter; empty for a base layer.
	Parent string `json:"parent,omitempty"`
	// ParentDisk is the datastore path of the parent's disk on the same datastore.
	ParentDisk string `json:"parentDisk,omitempty"`
	// Layer is the digest of the compressed layer blob as the registry serves it.
	Layer string `json:"layer"`
	// DiffID is the digest of the uncompressed layer.
	DiffID string `json:"diffID"`
	// Blob is unused since the disk holds the layer (always empty; kept so
	// that records written by earlier versions still decode).
	Blob string `json:"blob"`
	// Depth is the number of layers in the prefix (1 for a base layer); the
	// garbage collector removes deeper chains before shallower ones.
	Depth int `json:"depth"`
	// Size is the disk's size in bytes: its flat extent, the layer's
	// filesystem (what this disk adds to the datastore on top of its parent).
	Size int64 `json:"size"`
	// State is one of the ChainState constants.
	State string `json:"state"`
	// Reason explains a failed state.
	Reason string `json:"reason,omitempty"`
	// Refs counts the pods referencing the chain on this datastore.
	Refs int `json:"refs"`
	// CreatedAt is when the pull started.
	CreatedAt time.Time `json:"createdAt,omitzero"`
	// LastUsed is when a pod last took or dropped a reference.
	LastUsed time.Time `json:"lastUsed,omitzero"`
}

// ImageRecord is one image on one datastore, as `podvisor get images` prints
// it (IMAGE DIGEST LAYERS DATASTORE SIZE REFS STATE). It is derived from the
// image's manifest and the ChainRecords of its layers on that datastore.
type ImageRecord struct {
	// Image is the reference pods used, for example
	// "127.0.0.1:5000/podvisor/web:1.0" (the first one seen if several tags
	// resolve to the same digest).
	Image string `json:"image"`
	// Digest is the manifest digest.
	Digest string `json:"digest"`
	// Layers is the number of layers (and disks in the chain).
	Layers int `json:"layers"`
	// Datastore holds the chain.
	Datastore string `json:"datastore"`
	// Size is the sum of the image's compressed layer sizes in bytes.
	Size int64 `json:"size"`
	// Refs counts the pods referencing the image's top disk on the datastore.
	Refs int `json:"refs"`
	// State is the least advanced state of the image's chain records on the
	// datastore (failed < pulling < evicting < ready), "missing" when a layer
	// has no record there.
	State string `json:"state"`
	// Chain lists the chainIDs of the image's disks, base layer first.
	Chain []string `json:"chain"`
	// TopDisk is the datastore path of the top disk (the parent of pods'
	// ephemeral disks); empty while the chain is incomplete.
	TopDisk string `json:"topDisk,omitempty"`
}

// ImageStateMissing is ImageRecord.State when a layer of the image has no
// chain record on the datastore.
const ImageStateMissing = "missing"

// ChainRecordKey names a chain on a datastore in logs and indexes:
// "<chainID>@<datastore>".
func ChainRecordKey(chainID, datastore string) string {
	return fmt.Sprintf("%s@%s", chainID, datastore)
}
