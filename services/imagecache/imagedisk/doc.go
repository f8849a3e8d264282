// Package imagedisk keeps image disk chains on vSphere datastores. It is the
// image cache's only door to vCenter, and the datastore folders it writes are
// the durable truth that Redis merely caches.
//
// # Layout
//
// One folder per chain prefix (OCI chainID), named by the chainID's hex:
//
//	[ds] podvisor-images/<hex>/disk-flat.vmdk   the flat extent: the layer as an erofs filesystem
//	[ds] podvisor-images/<hex>/disk.vmdk        the descriptor, written last
//	[ds] podvisor-images/manifests/<hex>.json   imagelocality.Manifest of every image prepared there
//
// Both disk files reach the datastore through the datastore file API
// (Datastore.Upload), which vcsim and vCenter share. A folder without a
// readable descriptor is a pull that crashed (or still runs elsewhere); Scan
// returns it as partial and the next pull of the chain starts it afresh.
//
// # The parent reference
//
// The descriptor's disk database carries the chain: ddb.podvisor.chainID,
// .parent (the parent's chainID), .diffID, .digest, .fs ("erofs"), .depth,
// .created. It names no parentFileNameHint: an image disk is no block-level
// delta of its parent but a filesystem of its own, which the guest stacks on
// its parent's with overlayfs. The rebuild after a Redis loss reads these
// keys back (ParseDescriptor).
//
// # Datastore names
//
// vcsim crashes on a datastore name it does not know, so every method checks
// the name against the inventory first and returns ErrUnknownDatastore.
package imagedisk
