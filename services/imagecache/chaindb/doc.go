// Package chaindb is the write side of the image cache's Redis metadata (the
// schema is documented in shared/imagemeta, whose Reader the scheduler
// and the CLI use). Every state change of a chain record is one Lua script
// over keys sharing the chain's hash tag, so it is atomic on a single Redis
// and on Redis Cluster alike, and costs one round trip.
//
// # Pull lease
//
// Begin either finds the chain ready, or takes the chain's lease (SET NX PX)
// and marks the record "pulling" under the taker's token (the record's
// puller field), or reports that another puller holds the lease. The lease
// expires: a puller that crashes loses it, and the next Begin takes over and
// redoes the pull from an empty folder. Renew takes a vanished lease back,
// and Complete flips the record to "ready", only while the record is still
// pulling under the caller's token (or is missing: Redis lost its data);
// Fail claims a failure only then, and never on a missing record. So a
// puller paused past its lease can never mark its successor's folder ready,
// nor take the lease back after the successor finished and then remove or
// fail the successor's chain.
//
// # References
//
// A chain's references are a set of pod uids, not a counter: a pod event
// delivered twice adds the pod once, and the record's refs field is the set's
// size written by the same script. The pod's own set is written first
// (another hash tag: not in the same script), so it names every chain
// whose set names the pod. AddRef refuses chains that are not ready,
// so a pod cannot take a reference on a chain the garbage collector is
// evicting; MarkEvicting refuses chains with references, a lease, or a use
// within the grace period.
package chaindb
