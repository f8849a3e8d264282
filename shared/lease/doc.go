// Package lease elects one active replica among several with a lease kept
// in a JetStream key-value bucket, so that a service whose rules live in one
// process's memory (a queue, a per-object lock, a concurrency limit) can
// run as several replicas: one active, the others standing by.
//
// # How it works
//
// The lease is one key whose value names its holder and when it expires:
//
//	{"holder":"migration-7d9f-2xk4q-1-5f3a9c1e","expires":"2026-01-02T15:04:05.123Z"}
//
// Run loops over three steps:
//
//  1. Acquire. Create the key (only one replica's Create succeeds); if the
//     key exists and its expiry has passed, take it over with Update at the
//     revision that was read (compare-and-set: of several replicas that
//     see the same expired lease, one wins). Otherwise stand by, trying
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
// Expiry is an absolute time written by the holder and compared with the
// reader's local clock. This assumes the replicas' clocks differ by much
// less than the TTL (NTP keeps them within milliseconds; the default TTL is
// 10s). A standby whose clock runs ahead by d takes over d early; the
// leader stops when the lease is within TTL/3 of expiring by its own clock,
// so skew up to about TTL/3 still leaves no overlap.
//
// # What it does not do
//
// A lease bounds how long two replicas can both believe they lead; it does
// not fence their writes. A leader paused longer than the TTL (a stopped
// process, a long GC pause) may write once more after a standby took over.
// Work done under a lease should therefore also be safe to repeat or be
// compare-and-set on its own records, as the migration service's records
// are.
package lease
