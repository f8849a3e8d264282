// Package oci resolves container images in OCI registries and streams their
// layers with verification, for the image cache. It is a thin layer over
// go-containerregistry: authentication comes from the default keychain
// (docker config, credential helpers), loopback registries are spoken to in
// plain HTTP, others in HTTPS unless listed as insecure.
//
// Resolve turns a reference into a digest and the image's layers with their
// OCI chainIDs (chainID(L1) = diffID(L1); chainID(L1..Ln) =
// sha256(chainID(L1..Ln-1) + " " + diffID(Ln))): the chainID names a layer
// prefix, so two images built on the same base share the chainIDs of the
// base's layers and, in the image cache, its disks.
//
// Fetch streams one compressed layer to a writer while hashing it, and
// checks both the compressed digest and the uncompressed diffID; bytes
// that do not match are ErrDigestMismatch, never a stored layer.
//
// Errors are classified for the pod.images.failed reasons: ErrInvalidReference,
// ErrImageNotFound, ErrUnauthorized, ErrRegistryUnavailable (worth retrying),
// ErrDigestMismatch.
package oci
