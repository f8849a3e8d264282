// Package imagedisk keeps image disk chains on vSphere datastores. It is the
// image cache's only door to vCenter, and the datastore folders it writes are
// the durable truth that Redis merely caches.
//
// # Layout
//
// One folder per chain prefix (OCI chainID), named by the chainID's hex:
//
//	[ds] podvisor-images/<hex>/disk.vmdk     the image disk of the prefix
//	[ds] podvisor-images/<hex>/layer.tar.gz  the layer blob, real bytes as pulled and verified
//	[ds] podvisor-images/<hex>/meta.json     events.ChainRecord: parent chain and disk, layer digests, state
//	[ds] podvisor-images/manifests/<hex>.json  imagelocality.Manifest of every image prepared there
//
// meta.json is written twice: with state "pulling" before anything else and
// with state "ready" after the blob is verified and the disk exists. A folder
// whose meta.json is not "ready" is the debris of a crashed pull; Scan skips
// it and the next pull of the chain starts the folder afresh.
//
// # The parent reference
//
// vSphere records a delta disk's parent in the disk descriptor, which
// CreateChildDisk writes; vcsim does not implement it. The parent of an
// image disk is therefore named in meta.json (Parent, ParentDisk), and the
// pod's own child disk is created by the provisioner with Backing.Parent set
// to the top image disk, which vcsim accepts and shows in the VM's layoutEx.
//
// # Datastore names
//
// vcsim crashes on a datastore name it does not know, so every method checks
// the name against the inventory first and returns ErrUnknownDatastore.
package imagedisk
