// Package lease elects one active replica among several with a lease kept
// in a JetStream key-value bucket, so that a service whose rules live in one
// process's memory (a queue, a per-object lock, a concurrency limit) can
// run as several replicas: one active, the others standing by.
//
// # How it works
//
// The lease is one key whose value names its holder (and, for people
// reading it, when the holder expects it to expire):
//
//	{"holder":"migration-7d9f-2xk4q-1-5f3a9c1e","expires":"2026-01-02T15:04:05.123Z"}
//
// Run loops over three steps:
//
//  1. Acquire. Create the key (only one replica's Create succeeds); if the
//     key exists and its revision has not changed for a whole TTL, as
//     measured by this replica's own clock since it first saw that
//     revision, take it over with Update at that revision (compare-and-set:
//     of several replicas that see the same stale lease, one wins, and a
//     holder renewing meanwhile beats them all). Otherwise stand by, trying
//     again every TTL/3 and at once when the key changes (a watcher), and
//     log once that this replica is standing by and for whom.
//  2. Lead. Run the function with a context that ends as soon as the lease
//     may be lost. The lease is renewed every TTL/3 with Update at the last
//     revision written. A lost compare-and-set (someone else wrote the key)
//     or a deleted key cancels the function at once. A renewal that fails
//     for another reason (the server is unreachable) is retried at the next
//     tick, but when the lease would expire before that tick the function is
//     cancelled anyway: a standby may take over at the expiry, and the
//     leader must have stopped by then.
//  3. Release. When the function returns, Run waits for it, then deletes the
//     key at the last revision it wrote (so it never deletes a successor's
//     lease) and a standby, woken by its watcher, takes over at once rather
//     than after the TTL.
//
// When ctx ends Run releases the lease and returns nil. When the function
// fails while this replica still holds the lease, Run releases it and
// returns the error (the process restarts; a standby leads meanwhile).
// After a lost lease it goes back to standing by.
//
// # Clocks
//
// No replica compares its clock with another's. A standby measures, with
// its own monotonic clock, how long the lease key has kept one revision;
// the leader measures, with its own, how long ago its last renewal
// succeeded, and stops leading TTL/3 before a standby could decide the
// lease is stale. Only clock rates need to agree, not clock readings.
//
// # Fencing
//
// Fence renews the lease with compare-and-set at the revision the leader
// last wrote, right before an action the lease guards: a leader that was
// paused (a stopped process, a long GC pause) and replaced meanwhile fails
// there with ErrLost instead of acting. The migration service fences every
// vMotion this way.
//
// # What it does not do
//
// Between a Fence and the action it guards there is still a window (the
// call to vCenter is in flight); work done under a lease should therefore
// also be safe to repeat or be compare-and-set on its own records, as the
// migration service's records are.
package lease
