// Package ociregistry is the OCI registry that `podvisor up` embeds, so that
// a new user can push images and deploy pods without any registry of their
// own. It is go-containerregistry's in-memory registry (pushes and pulls of
// the OCI distribution API, no authentication) on a loopback address, over
// HTTPS when Config.TLS carries a certificate (what `podvisor up` does, with
// a certificate from the installation's CA that the image cache trusts
// through PODVISOR_REGISTRY_CA) or plain HTTP for tests; go-containerregistry
// clients try HTTPS first and fall back to HTTP for loopback registries only.
//
//	reg, err := ociregistry.Start(ctx, ociregistry.Config{Addr: "127.0.0.1:5000"})
//	defer reg.Close()
//	refs, err := ociregistry.Seed(ctx, reg.Addr(), reg.Options()...)
//	// refs: 127.0.0.1:5000/podvisor/base:1.0, …/web:1.0, …/worker:1.0
//
// Seed pushes sample images that share base layers, the case image-disk
// chains exist for: web and worker are built on base, so a datastore holding
// web and worker needs base's bytes once. The layers hold real, incompressible
// bytes generated from fixed seeds, so their digests are the same on every
// machine and every run (tests and docs can name them).
//
// Layer and Push build further images the same way for tests and benchmarks;
// Config.Wrap lets a test put a handler in front of the registry to count the
// bytes it serves or to corrupt a blob.
//
// Everything is lost when the registry stops: it is a convenience for the
// all-in-one, not a place to keep images.
package ociregistry
