// Package ipam allocates pod addresses from a network's CIDR in the `ipam`
// JetStream KV bucket, safely under concurrency and across replicas.
//
// Each allocated address is its own key, <network>.<a-b-c-d>, taken with KV
// Create. Create succeeds for exactly one writer, so two pods can never hold
// the same address however many allocators race: the loser sees "key exists",
// marks the address used and tries the next. Listing <network>.* gives the
// used set in one call, which is also how exhaustion is detected and how
// `podvisor get networks` counts IPS USED.
//
// A second key per pod and network, <network>.pod.<uid>, records which
// address the pod holds. It is written before the address is taken, so a
// crash between the two writes leaves a binding to an address the pod does
// not hold (ignored and overwritten by the retry) rather than an address
// nobody can find by pod. That binding is what makes Allocate idempotent: a
// redelivered pod.scheduled returns the pod's existing address, and Release
// deletes an address only if it still belongs to the pod (compare-and-set on
// the revision it read), so a late release never frees a reused address.
//
// A third key per network, <network>.fence.allocations (fence.go), orders
// allocations against a delete of the network across replicas: an
// allocation commits by a compare-and-set on it, a delete marks it before
// counting the addresses, so a delete never misses an address allocated
// concurrently by another replica. A change of the network's addressing
// raises the same fence above the network record it read before listing
// the addresses, and an allocation made from an older record gives its
// address back, so the change never misses one either. A change whose
// write of the new version has an unknown outcome settles its hold from the
// record read again; a hold nobody settles lapses after HoldLease.
//
// The lowest free address is handed out first; the network address, the
// broadcast address and the gateway are never handed out. MAC addresses are
// derived from the network and pod uid in VMware's static range so a
// re-created pod VM keeps its NIC identity.
package ipam
