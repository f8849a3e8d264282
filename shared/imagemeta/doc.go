// Package imagemeta is the read side of the image cache's Redis
// metadata: which datastores hold which image disk chains. The scheduler
// scores hosts with it (a host that sees a datastore already holding a pod's
// images starts the pod without a pull) and `podvisor get images` lists the
// images with it. Only the image-cache service writes these keys; everything
// here reads.
//
// # Redis schema
//
// Every key starts with "pv:img:". The part in braces is the Redis Cluster
// hash tag: keys that one Lua script touches together share it, so the
// scripts work on a cluster, while different chains spread over the slots.
//
//	pv:img:ref:{<image ref>}             string  manifest digest the reference resolved to
//	pv:img:manifest:{<digest>}           string  JSON Manifest: layers with digest, diffID, chainID, size
//	pv:img:manifest:{<digest>}:announced set     datastores image.pulled was published for
//	pv:img:chain:{<chainID>}:<ds>        hash    events.ChainRecord of the chain's disk on datastore <ds>,
//	                                             and while pulling its puller (the lease token of the pull
//	                                             the record describes)
//	pv:img:chain:{<chainID>}:<ds>:refs   set     uids of the pods referencing it (its size is the record's refs)
//	pv:img:chain:{<chainID>}:<ds>:lease  string  owner token of the pull in progress, with an expiry
//	pv:img:chain:{<chainID>}:locs        hash    <ds> → state, for every datastore holding the chain
//	pv:img:pod:{<uid>}                   set     "<chainID>@<ds>" the pod references (dropped on pod.deleted)
//	pv:img:pod:{<uid>}:containers        string  JSON [{name, image}] of the pod, from pod.accepted
//	pv:img:pod:{<uid>}:ready             string  the top disks the last pod.images.ready announced
//	pv:img:{index}:chains                set     "<chainID>@<ds>" of every chain record (listing, GC, rebuild)
//	pv:img:{index}:images                set     manifest digests seen
//	pv:img:{index}:epoch                 string  set when the metadata is complete; its absence means Redis
//	                                             lost its data and the image cache rebuilds it from the datastores
//
// The record hash, its refs set, its lease and the chain's locs hash share
// the tag {<chainID>}: taking a reference, flipping a chain to ready and
// marking it for eviction are single Lua scripts over them. The index sets
// share {index} and are updated after the record (an index entry without a
// record is skipped by readers).
//
// # Locality
//
// Locality(images) answers, per datastore, the fraction of the pod's image
// bytes (distinct layers, compressed sizes) that the datastore holds in a
// ready or pulling chain. A datastore with a pull in progress counts: the
// pod will find the image there by the time its VM is created.
//
// Redis is a cache: a reader that finds nothing gets an empty answer, never
// an error, and the scheduler then places the pod as if no image were cached.
package imagemeta
