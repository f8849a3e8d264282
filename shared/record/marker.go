package record

import "github.com/nats-io/nats.go"

// JetStream KV marks a removed key with a message of its own in the
// bucket's stream (KV reads hide it): its KV-Operation header says DEL or
// PURGE. Owners that read the stream itself (a tombstone, when a record was
// removed) tell markers from records by it.
const (
	// HeaderKVOperation is the header of a KV marker.
	HeaderKVOperation = "KV-Operation"
	// KVDelete is its value on a Delete's marker.
	KVDelete = "DEL"
	kvPurge  = "PURGE"
)

// IsRemoval reports whether a message of a KV bucket's stream, by its
// headers, is the marker of a removed key (a delete or a purge), not a
// value.
func IsRemoval(h nats.Header) bool {
	switch h.Get(HeaderKVOperation) {
	case KVDelete, kvPurge:
		return true
	}
	return false
}
