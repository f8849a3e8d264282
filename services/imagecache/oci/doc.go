// Package oci resolves container images in OCI registries and streams their
// layers with verification, for the image cache. It is a thin layer over
// go-containerregistry: authentication comes from the default keychain
// (docker config, credential helpers); registries are spoken to in HTTPS
// with their certificates verified against the system's roots plus a CA
// bundle (Config.CAFile: a private registry's CA, or the CA of `podvisor
// up`, whose registry serves TLS), in plain HTTP only when listed as
// insecure or when a loopback registry speaks no TLS at all (a development
// registry on this machine). A certificate that does not verify is
// ErrUntrusted, with no plain-HTTP retry.
//
// Resolve turns a reference into a digest and the image's layers with their
// OCI chainIDs (chainID(L1) = diffID(L1); chainID(L1..Ln) =
// sha256(chainID(L1..Ln-1) + " " + diffID(Ln))): the chainID names a layer
// prefix, so two images built on the same base share the chainIDs of the
// base's layers and, in the image cache, its disks.
//
// Fetch streams one layer, decompressed (gzip, zstd or none), to a reader
// of its tar while hashing both forms, and checks the compressed digest and
// the diffID at the end; bytes that do not match are ErrDigestMismatch
// naming the digest, never a stored layer. A manifest asked for by digest
// that hashes to another is ErrDigestMismatch too.
//
// Every registry request is bounded (Timeouts): connecting, the TLS
// handshake, the wait for the response header, and each pause of a body
// (a stalled body fails, a slow one that keeps arriving does not). Each
// bound that runs out is ErrRegistryUnavailable saying "timed out after".
//
// Hostile registries: Limits cap manifests, layer counts, compressed and
// uncompressed layer sizes and the compression ratio as the stream inflates
// (ErrLimit naming the cap); the transport refuses redirects to hosts not
// allowed (ErrRefused) and sends plain HTTP only to loopback registries and
// those listed as insecure; credentials come from a docker config file
// (AuthFile) or the default keychain; an index resolves to the configured
// platform's image.
//
// Errors are classified for the pod.images.failed reasons: ErrInvalidReference,
// ErrImageNotFound, ErrUnauthorized, ErrRegistryUnavailable (worth retrying),
// ErrDigestMismatch, ErrLimit, ErrRefused (ErrUntrusted among them).
package oci
