// Package migration is podvisor's migration service: it moves running pod
// VMs between hosts with vMotion, empties hosts for maintenance (drain), and
// restarts the pods of a host that stopped responding elsewhere (host loss),
// or of a host that lost one of their networks.
//
// # A migration
//
// A client publishes migration.requested (`podvisor migrate pod web --to
// esx-1-03`, or a Migration object through `podvisor apply`). Two services
// take it from there:
//
//  1. The scheduler picks (or checks) a target that carries every network of
//     the pod and has room, reserves that room in its ledger and answers
//     migration.target.reserved, or migration.rejected with a reason.
//  2. This service records the request (KV `migrations`, key = migration
//     ID) and allows one active migration per pod: a second request for a
//     pod that is already moving is rejected at once with reason
//     AlreadyMigrating (the scheduler releases what it reserved for it
//     when it reads the rejection).
//
// Once reserved, the migration waits in a queue for room. vMotion saturates
// the source host's vMotion network and a cluster's shared links, so at most
// Limits.PerSourceHost migrations (default 2) leave one host and at most
// Limits.PerCluster (default 5) touch one cluster at a time — a cross-cluster
// move counts in both. Migrations start in arrival order, except that one
// blocked by a busy host does not hold back one from an idle host. While
// queued, the record and migration.progress say how many are ahead and what
// the migration waits for.
//
// With room, the migration runs its prechecks. The simulator's RelocateVM
// checks nothing — it moves a VM onto a disconnected host, a host in
// maintenance, or one without the VM's datastore — so these checks are the
// product: the pod is Running on the source host and its VM is there; the
// source answers; the target exists, is connected, not in maintenance mode,
// not cordoned, mounts every datastore of the VM, and every network of the
// pod is available on both the source and the target (network-config's
// `net-hosts` read model, judged by events.NetworkUsable, the definition the
// scheduler reserved the target with; a target only in scope is realized by
// network-config on migration.target.reserved and the precheck waits for
// it). A refusal fails the migration with a reason a person can act on, e.g.
//
//	NetworkMissingOnTarget: network backend is not available on esx-2-01
//	(not in its scope); it is realized on esx-1-01, esx-1-02, esx-1-03
//
// Then the vMotion: RelocateVM to the target host and into the resource
// pool of the target's cluster (which is what makes a cross-cluster move
// work), reporting vCenter's progress, bounded by RelocateTimeout counted
// from when vCenter queued the task (its age read from vCenter, so a
// runner resumed after a restart keeps the deadline rather than start it
// again). A task still running then is cancelled and given a short grace;
// the migration then ends by where the VM is (completed if it reached the
// target, failed with Timeout otherwise, which frees its slot and the
// target's reservation). Only a task vCenter says still runs after the
// cancel keeps the migration active, its target held, for the repair sweep
// to look at again; its slot is freed meanwhile. Every vCenter call a
// runner makes is bounded, and a wait on a task that brings no update
// reads the task's state instead, so no migration holds a slot, or a
// drain queued behind it, for good.
// Finally the service confirms where vCenter says the VM runs and publishes
// migration.completed; the scheduler moves the allocation, the provisioner
// the pod record, network-config the port binding. Any failure ends in
// migration.failed with a reason, and the scheduler releases the target.
// The record is made final (and the pod freed for its next migration)
// before the end is published, so a client that asks again on hearing it
// is not rejected AlreadyMigrating; the record says the announcement is
// pending until it is out, and the leader's sweep makes one a crash cut
// off.
//
// migration.cancel.requested cancels a migration that has not begun
// relocating (pending, queued, or prechecking: the runner stops at the
// checkpoint just before the vMotion). Once the vMotion runs a cancel is
// refused — stopping it half-way would leave the pod nowhere safe — and the
// record says so.
//
// # Drain
//
// host.drain.requested (`podvisor drain host esx-1-01`) cordons the host
// (host.cordoned: the scheduler places nothing more there), requests one
// migration per running pod — the scheduler picks each target, and the
// migrations share the queue and limits with all others — waits for them,
// and, if every pod left, puts the host in maintenance mode. host.drained
// reports how many moved and lists the pods that could not, with reasons; a
// host with such pods stays cordoned and out of maintenance. A drain makes up
// to DrainRounds passes, so pods still being provisioned on the host when it
// starts are moved once they run. Then the host's native VMs are moved
// (vms.go): each move is recorded in the drain record and asked for; a VM
// no other host can take is listed at once with the scheduler's NoTarget,
// as a pod is, and one whose move failed otherwise is evicted.
//
// # Native VM moves
//
// A VM's move, a drain's or `podvisor migrate vm`'s, shares the queue and
// the limits (vmmoves.go): once the scheduler reserved its target
// (vm.migration.target.reserved) it is recorded (Kind VirtualMachine) and
// queued, counted against its source host, its source cluster and its
// target cluster like a pod's migration, admitted with room
// (vm.migration.admitted: the native VM controller runs the vMotion) and
// ended by vm.migrated.
// The drain's state is in KV `drains`
// (events.DrainRecord), so a drain under way resumes after a restart.
// host.uncordoned (`podvisor uncordon host esx-1-01`) stops a drain and
// takes the host out of maintenance mode.
//
// # Host loss
//
// A host that stops responding cannot be vMotioned from. On host.lost (from
// the scheduler's inventory watch) the service evicts the host's pods
// (pod.evicted, reason HostLost): the provisioner returns them to Pending
// and they are scheduled and provisioned elsewhere, as vSphere HA would
// restart them. Migrations to or from the host that had not begun
// relocating fail with reason HostLost. When the host answers again
// (host.recovered), the pod VMs left on it are destroyed — a VM is a
// leftover when its pod no longer exists, was replaced, or now runs a
// different VM — and the pods' current VMs are never touched.
//
// A host that loses one network (network.host.failed with reason
// NotRealized, DVSJoinFailed or CarryFailed: the host itself does not carry
// it) has its pods on that network evicted the same way (reason
// NetworkLost); its other pods stay. PortGroupNotFound (vCenter has no
// such port group, which every host of the switch reports at once) evicts
// nobody. No pod is evicted in the middle of a
// migration: the migrations of the network's pods to or from the host that
// have not begun relocating fail (NetworkLost, naming the host and the
// network), and one relocating is left to finish before the event is
// looked at again (a pod that left the host is not evicted; one that
// landed on it is). A disconnected host is host.lost's to handle, and a
// port group whose settings mismatch fails on every host of its switch at
// once, where evicting would help nobody.
//
// # State and restarts
//
// The records are the truth; the queue, the pod locks and the running
// drains are rebuilt from them at start. The vMotion task reference is
// written before the service waits on it, so a restart waits for that task
// rather than start a second one. A resumed migration looks where vCenter
// says the VM is before anything else: one already on the target is only
// announced (completed), whatever became of the target since.
//
// A runner that meets an error it cannot decide on — the bus, the KV store
// or vCenter not answering for a moment — leaves the record as it is and
// stops; the leader's sweep queues again every active migration that no
// runner works on (repair), so a migration left Finalizing is finished by
// the leader of the moment, not only by the next one. A refusal after the
// vMotion began ends by where the VM is: completed if it reached the
// target after all, failed (the scheduler releases the reservation)
// otherwise — never failed with its VM on the target. Events a migration's runner publishes
// have ids derived from the migration ID, so a resumed runner's events are
// de-duplicated by JetStream.
//
// A drain's runner treats the KV store or the bus not answering the same
// way: it stops, leaving the drain record as it is, and the sweep resumes
// the drain (a drain record not found by an update is read again a few
// times first: a NATS node not yet current, not a drain that ended). Only
// the drain's deadline or a refusal ends it Incomplete.
//
// A target reservation is acknowledged only once its outcome is durable
// and acted on: the record Queued and the migration queued or running in
// the leader, or the migration ended and the reservation released. A KV
// store that does not answer, or a read answered by a NATS node not yet
// current (a record written before and not found is retried, never taken
// for "nothing to do"), brings the reservation again rather than leave the
// migration Pending with room held on its target. Listings of a bucket
// are bounded (30 s), so a watcher that never ends its replay holds no
// drain, sweep or recovery for good.
//
// # Replicas: active and standby
//
// The one-migration-per-pod rule and the limits live in one process's
// memory (the pod locks, the queue), so one replica at a time does the
// work. Any number may run: they compete for a lease, key events.MigrationLeaderKey
// (`_leader`) in KV `migrations` (package shared/lease). The holder
// consumes the events, runs the queue and the drains; the others stand by,
// consume nothing, and log once that they do. A leader's term (its
// dispatcher, sweep, consumers, runners and drains) ends as a whole with
// the first part that fails: the error is logged and returned, the lease
// released, and the next leader resumes from the records. The leader renews the lease
// every LeaseTTL/3 (default 10s) and stops all its work the moment a
// renewal shows the lease lost (or about to expire unrenewed). A leader
// that stops cleanly deletes the key, and a standby — woken by a watch on
// it — takes over at once, rebuilding the view from the records as after a
// restart; a leader that dies is replaced once its lease expires. Expiry is
// compared with each replica's local clock, which assumes their clocks
// differ by much less than the TTL. No migration ID can be `_leader` (IDs
// begin with a letter or digit); the service and `podvisor get migrations`
// skip that key when they list the bucket.
//
// # Observing it
//
// `podvisor get migrations` lists the records: POD FROM TO PHASE AGE
// REASON, with the queue position or the percentage in PHASE. Records of
// finished migrations are kept for RecordRetention (default 24h). Metrics:
// podvisor_migration_ended_total{outcome,reason} and
// podvisor_migration_duration_seconds (request to completion). Each
// migration's run is a span (migration.run) with the pod key, uid, source
// and target, in the trace of the request.
//
// # Rebalancing
//
// Package rebalance plans moves from the most to the least loaded hosts
// within capacity and the network rules; `podvisor rebalance` turns the plan
// into migrations with named targets, which this service runs like any
// other.
//
// # Running it
//
//	cfg, err := migration.ConfigFromEnv() // PODVISOR_MIGRATION_MAX_PER_HOST, PODVISOR_MIGRATION_LEASE_TTL, …
//	svc, err := migration.New(cfg, migration.Deps{Bus: b, VSphere: session, Logger: log})
//	err = svc.Run(ctx) // leads or stands by; nil when ctx ends
package migration
