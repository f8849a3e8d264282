// Package imagecache is the image-cache service: it turns the container
// images of pods into image disk chains on vSphere datastores, once per
// layer prefix however many pods and images share it, and tells the other
// services where they are.
//
// # Flow
//
// On pod.accepted (prefetch: before any host is chosen) every container
// image is resolved to a digest in its registry (package oci; default
// keychain for credentials), and its layers to OCI chainIDs. The image's
// chain is made ready on one datastore, the one already holding the longest
// prefix of it, else the first with room (configured order, or the datastore
// mounted on the most hosts): each missing prefix gets a virtual disk whose
// flat extent is the layer as an erofs filesystem (package layerfs) and
// whose descriptor names its parent chain (package imagedisk). A layer is
// streamed through the registry caps, staged, verified (compressed digest
// and diffID) and only then made into a filesystem and uploaded; the links
// of one image are made side by side. The pod takes a reference on every chain of its
// images, image.pulled announces an image newly complete on a datastore,
// and pod.images.ready lists per container the digest, the top disk and the
// chain. A failure publishes pod.images.failed with a reason:
// InvalidImageName, ImageNotFound, Unauthorized, DigestMismatch,
// ImageLimitExceeded, InvalidLayer, RegistryRefused, ImageDisksUnavailable,
// DatastoreFull or NoImageDatastore at once; RegistryUnavailable and other
// transient errors after the bus's redeliveries run out. Until then each
// failed try publishes pod.images.retrying (the reason, the error, the try
// and when the next is due), which the pod's status shows as
// ImagePullBackOff.
//
// pod.images.ready goes out on pod.accepted when the chain's datastore is
// mounted on every host (the pod can land anywhere). Otherwise pod.scheduled
// finishes: when the chosen host does not mount the datastore, the chain is
// copied (vSphere disk and file copy, no registry traffic) to one it does,
// the pod's references move with it, and pod.images.ready names the copy.
//
// On pod.deleted the pod's references are dropped. The chains stay: the
// next pod of the image starts without a pull. A pod event handled after
// the pod's pod.deleted (tried again, or by another replica) would leave
// references nothing drops: once the chains are referenced, the pod record
// is read, and a pod that is gone (or whose name is a newer pod's) has its
// references dropped and nothing announced.
//
// A pod deleted while its images are prepared stops being prepared: a try
// after the first reads the pod record before it begins, and a preparation
// in flight reads it every few seconds, ending when the pod is being
// deleted or gone. Its worker is free then for the pod's pod.deleted,
// queued behind it; what it referenced is dropped once the pod is gone.
//
// # Pull once
//
// Twenty pods of one image cause one pull: in one process the pods' workers
// share each chain's work (flights: the work goes on while any pod waits
// for it, and stops when none does), and across replicas the Redis
// pull lease (package chaindb) lets one replica pull while the others wait
// for the record to turn ready. A replica that dies mid-pull loses its lease
// when it expires; the next one clears the folder and pulls again, and a
// record turns ready only after the disk's descriptor is written (after its
// flat extent), so a ready record never covers partial data. One that was
// only paused finds, when it wakes, the record no longer pulling under its
// token: it neither takes the lease back nor removes or marks the folder.
//
// # Garbage collection
//
// Every GCInterval, on each datastore whose image data exceeds
// GCBudgetBytes, chains without references and unused for GCGrace are
// evicted, deepest first and only once no chain names them as parent, until
// the datastore fits; each eviction is announced with image.evicted. A
// chain whose disk any VM in vCenter has attached (itself, or as the parent
// of one of its disks) stays, referenced or not: a pod VM template mounts
// its image's chain disks, holds no reference and outlives its pods. The
// VMs' disks are read once per pass (one property-collector retrieval).
//
// # Redis is a cache
//
// The service checks every CheckInterval that Redis still holds its
// metadata (an epoch key). If not (FLUSHALL, a restart without persistence),
// it rebuilds the chain records and manifests from the datastores' disk
// descriptors (their ddb.podvisor.* keys) and the pods' references from the
// pod records (the images pod.images.ready announced, which outlive a
// restart whose vCenter has no VM yet) and from the pod VMs' disks
// (template VMs hold none), each under the uid the VM's guestinfo names,
// else the one in its name (pv-<uid>, or pv-<uid>-<n> for a VM made again
// after an eviction); a reference it cannot write
// leaves the metadata unmarked, and the next check rebuilds again;
// pods being deployed meanwhile keep going, at worst pulling a layer a
// second time, never failing.
//
// The Redis keys are documented in shared/imagemeta, which also holds
// the read side: image locality for the scheduler and the image listing of
// `podvisor get images`.
package imagecache
