// Package chaindb is the write side of the image cache's Redis metadata (the
// schema is documented in shared/imagemeta, whose Reader the scheduler
// and the CLI use). Every state change of a chain record is one Lua script
// over keys sharing the chain's hash tag, so it is atomic on a single Redis
// and on Redis Cluster alike, and costs one round trip.
//
// # Pull lease
//
// Begin either finds the chain ready, or takes the chain's lease (SET NX PX)
// and marks the record "pulling", or reports that another puller holds the
// lease. The lease expires: a puller that crashes loses it, and the next
// Begin takes over and redoes the pull from an empty folder. Complete flips
// the record to "ready" only for the lease holder, so a puller that lost its
// lease to a successor can never mark the successor's half-written folder
// ready.
//
// # References
//
// A chain's references are a set of pod uids, not a counter: a pod event
// delivered twice adds the pod once, and the record's refs field is the set's
// size written by the same script. AddRef refuses chains that are not ready,
// so a pod cannot take a reference on a chain the garbage collector is
// evicting; MarkEvicting refuses chains with references, a lease, or a use
// within the grace period.
package chaindb
