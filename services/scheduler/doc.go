// Package scheduler is podvisor's scheduler service: it keeps the host
// inventory, places pods on hosts, holds the placement ledger and reserves
// migration targets.
//
// # What it consumes and publishes
//
//	PODS        pod.accepted → pod.scheduled {host, cluster, resourcePool, datastores}
//	                           or pod.unschedulable {"0/16 hosts: 10 insufficient memory, …"}
//	            pod.deleted, pod.failed → allocation released, waiting pods retried
//	            pod.evicted → allocation released on the lost host, pod placed again
//	            pod.network.failed (host-specific) → released there, placed on another host
//	HOSTS       host.cordoned / host.uncordoned → cordon kept in the host's ledger entry
//	            (publishes host.discovered, updated, lost, recovered from the vCenter watch)
//	NETWORKS    network.host.ready, network.realized → waiting pods retried
//	MIGRATIONS  migration.requested → migration.target.reserved or migration.rejected
//	            migration.completed → allocation moved; failed/cancelled/rejected → released
//
// KV `hosts` (events.HostRecord, one per host) and KV `ledger`
// (events.LedgerEntry, one per host) are the scheduler's; it reads KV
// `net-hosts` (network-config), KV `pods` (provisioner) and, through Redis,
// the image cache's locality model, never writing them.
//
// # How a pod is placed
//
// Handlers hand pods to a single scheduling loop (loop.go), which takes them
// in batches: each pod runs through the framework's filters and scores
// (package framework, plugins under plugins/) against an in-memory snapshot
// of the hosts, and is assumed on the chosen host so that the next pod of
// the batch sees it. The batch's reservations are then written to the
// ledger by one committer per host (loop.go): while a write is in flight the
// next passes' reservations for that host queue up and go out together, so
// the loop never waits for the ledger. The ledger checks capacity inside its
// CAS loop, so two scheduler instances can never both take the last room on
// a host; a pod that lost such a race is placed again against the fresh
// entry. Once its host's entry holds a pod's allocation, the pod's binding
// is claimed (ledger/binding.go: one write per pod; a pod live on another
// host already makes the loser free its reservation), so two instances that
// both hold a pod (a restart recovering pending pods while another instance
// retries them) never place it twice. The ledger watch folds updates every
// few milliseconds and skips this instance's own writes before decoding
// them. pod.scheduled is published only after
// its reservation is durable and claimed, with an id derived from the
// cause. A replay that finds a pod's allocation goes through the host's
// committer too: the allocation is confirmed and the binding claimed before
// the answer, so a replay never names a host whose claim is still under
// way, lost, or never made (a crash between reserve and claim).
//
// Capacity is the vSphere API's: a host offers cores × 1000 millicores
// (times the profile's CPU overcommit ratio, 1.0 by default) and its
// physical memory, never overcommitted. A pod takes its events.SizePodVM
// size, which already includes the pod VM overhead; memory is counted as
// the VM's configured memory (MemoryMiB, rounded to vSphere's 4 MiB).
//
// Networks are strict: every network of the pod must be available on the
// host (events.NetworkUsable, shared with the migration precheck: realized
// there, or in scope with nothing failed there — network-config realizes it
// on demand); hosts where it is realized already score higher. No network
// is assumed present, not even "default". Before a pod is bound to the
// chosen host, network-config is asked whether each network is available
// there (netcheck.go: the query reads the host back, the snapshot may lag);
// a refusal excludes the host and the pod is placed again, and the
// refusals ride on pod.scheduled to the pod's NetworkRefused condition. An
// attach that fails on the host for a reason of the host
// (pod.network.failed, events.HostSpecificNetworkReason) places the pod
// again too, never on a host that refused it, until
// events.MaxNetworkRefusals hosts refused and the provisioner fails it.
//
// # Unschedulable pods
//
// A pod that fits nowhere gets pod.unschedulable with the count of hosts per
// reason (the provisioner puts it on the pod's conditions) and waits in
// memory (pending.go). It is retried with exponential backoff and at once
// when something relevant happens: a pod deleted or failed, a ledger entry
// shrinking, a host recovered, uncordoned or grown, a network realized. A
// scheduler that restarts finds waiting pods again in the provisioner's
// records (phase Pending, no host), and every replica rescans them
// (PendingRescan) for pods marked Unschedulable, or NetworkRefused (sent
// back by a host that refused the pod's network), that it does not hold,
// and for pods held in the ledger whose record still shows no host after
// half an interval: a replica that died between a placement's ledger write
// and its pod.scheduled; the loop replays the placement and publishes it.
// Native VMs waiting for a host are rescanned the same way (KV vms); a VM
// held so but resized since its room was reserved is not replayed (its
// host was checked for the old size): the room is freed and the VM placed
// afresh at its new size. A native VM's allocation is flagged in the ledger
// (it holds room but is no pod, so MaxPodsPerHost leaves it out); one
// written without the flag, by a version before it or by such a replica
// rewriting the entry during a rollout, is flagged at start and by every
// ledger sweep (sweep.go), told a VM's by its uid in KV vms.
//
// # Replicas
//
// Any number of scheduler replicas may run: they share the durable
// consumers, and nothing one decides lives only in its memory. Reservations,
// pod bindings and cordons are compare-and-set writes to KV `ledger`, which
// every replica watches; a cordon is a flag in the host's ledger entry, so
// a reservation on a host another replica just cordoned fails its
// compare-and-set and is placed again against the cordoned entry. Host
// records are written with compare-and-set too.
//
// # Inventory
//
// Package inventory watches HostSystems with the property collector and
// reads them in full on every change and periodically (ResyncInterval): a
// watch can lag, repeat or miss. Transitions become host facts: a new host
// is discovered, a connected host that stops responding is lost (migration
// then evicts its pods, and the evictions free its ledger), a lost host that
// reconnects is recovered, anything else that changed is updated. Host
// labels for nodeSelector come from vSphere custom attributes, plus
// podvisor.io/host and podvisor.io/cluster.
package scheduler
