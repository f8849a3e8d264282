// Package record is the typed store every record owner uses over a JetStream
// KV bucket, in the manner of cluster-api's patch helper: a record is a Go
// struct stored as JSON under a key, and every write is a compare-and-set on
// the revision it was read at, so that replicas of a service and concurrent
// handlers never overwrite each other's changes.
//
//	pods := record.New[events.PodRecord](kv, "pod")
//	rec, rev, err := pods.Get(ctx, key)            // nil, 0, nil when absent
//	rev, err = pods.Create(ctx, key, &rec)         // ErrExists if taken (admission)
//	rec, err := pods.Mutate(ctx, key, func(r *events.PodRecord) error {
//		r.Phase = events.PodRunning                // re-run on a conflict
//		return nil                                 // or record.ErrUnchanged to write nothing
//	})
//	all, err := pods.Scan(ctx)                     // every record, one replay of the bucket
//	err = pods.ScanEach(ctx, fn)                   // the same, each with its key and revision
//	changes, err := pods.Watch(ctx, ">")           // current values, then every change
//
// Mutate reads, applies the change and writes at the revision it read; when
// another writer got there first (ErrConflict) it reads again and re-applies
// the change, up to Attempts times. The change function therefore must be
// a pure function of the record it is given: it may run several times.
//
// CallTimeout and ScanTimeout bound a request and a replay for callers whose
// context ends far away: an answer lost with a NATS node must end in an error
// the caller retries, not in a wait as long as the caller's deadline.
//
// The three conditions a caller decides on are sentinels: ErrNotFound (the
// record does not exist), ErrExists (Create found it taken) and ErrConflict
// (a compare-and-set lost, after retries). JetStream's own errors for them
// (ErrKeyExists, ErrKeyRevisionMismatch, ErrKeyNotFound) are mapped here
// and nowhere else: owners that write a bucket without a Store ask Conflict
// whether a write lost a compare-and-set.
package record
