// Package netconfig is podvisor's network-config service: it turns logical
// networks into distributed port groups on the hosts in their scope,
// allocates pod addresses, rolls back changes that cut hosts off their
// management network, and keeps every applied version as a snapshot.
//
// # Declaring a network
//
// A client publishes network.declared with a Network object:
//
//	apiVersion: podvisor.io/v1alpha1
//	kind: Network
//	metadata: {name: frontend}
//	spec:
//	  vlan: 120
//	  cidr: 10.20.0.0/24
//	  gateway: 10.20.0.1
//	  scope: {clusters: [cluster-1]}     # absent: every host
//	  properties: {mtu: 9000, allowPromiscuous: true}
//
// The payload was validated on decode; the service also checks what only
// it knows — named clusters and hosts exist, the CIDR overlaps no other
// network, no other network with a scope sharing a host uses the same VLAN
// (untagged, VLAN 0, excepted; disjoint scopes may reuse one) — and records a refusal with the field and the reason (status
// Rejected for a new network; an existing one keeps its current version).
// A version (declared or restored) whose CIDR or gateway would leave an
// address held on the network invalid — outside the new CIDR's usable
// range, or on the new gateway — is refused as a delete in use is: reason
// InUse, a message naming the field, how many attachments hold addresses
// and which would be cut off, and the current version stays applied.
// Widening, or narrowing around the held addresses, is taken. The check is
// ordered against every replica's allocations by ipam's fence, so an
// address taken while the check runs is either counted or given back.
// A spec equal to the current one stores nothing new (`podvisor up`
// declares DefaultNetwork at every start); any other is stored as the next
// version in KV `networks` (events.NetworkRecord, bounded history).
//
// # Push: desired state to every host in scope
//
// A DVS port group appears on every member host of its switch and port
// group names are unique per datacenter, so scope is switch membership: one
// switch per distinct scope (pv-dvs for every host, pv-dvs-<hash> for
// others), shared by the networks with that scope. Pushing version N of a
// network:
//
//  1. ensures the scope's switch (raising its MTU if the network needs it)
//     and the port group pv-<name> with the version's VLAN, security policy
//     and a description naming network and version — always the whole spec,
//     as a partial port group spec wipes name and VLAN; a port group left on
//     another switch by a scope change is moved;
//  2. joins the hosts in scope that are not members, in one batch (falling
//     back to one by one so a bad host fails alone) and makes members no
//     longer in scope leave;
//  3. reads every host back in parallel (Config.PushParallelism at a time):
//     connected, carries the port group, port group matches the version →
//     Ready; otherwise Failed with a reason (HostDisconnected, DVSJoinFailed,
//     NotRealized, ConfigMismatch);
//  4. if anything changed, probes management connectivity (below);
//  5. records each host's state as its own key in KV `net-realized`
//     (events.NetworkHostRecord; only the hosts whose state changed are
//     written), then the record (counts of hosts in scope and ready, only
//     if something changed) and the hosts where the network is realized in
//     KV `net-hosts` (events.NetworkAvailability, read by the scheduler and
//     the migration service), then publishes network.host.ready /
//     network.host.failed for each host whose state changed and
//     network.realized.
//
// The record every attach reads thus stays the same size at any number of
// hosts, and an attach reads it and its host's key only. A push holds the
// network against other changes, not against attaches: pods attach on
// hosts that carry the current version while a push to thousands of hosts
// runs.
//
// Then every host gets its final state (hoststate.go): after any change,
// and at every resync, the service computes each connected host's whole
// set of port groups (every network whose resolved scope holds it, with
// key, VLAN, MTU and version) and sends each host whose set changed one
// network.host.desired, in parallel (PushParallelism at a time). The host
// agent diffs it against what the host really carries, applies only the
// difference and reports network.host.applied. A port group a host's
// agent could not carry marks the network Failed on that host until the
// agent reports it carried (applied.go).
//
// The push is computed from what vCenter has, so repeating it is harmless:
// the same path serves redeliveries, host.discovered / host.updated /
// host.recovered (a host that appears or comes back gets the networks of
// its scope) and the periodic resync that repairs drift.
//
// # Rollback
//
// After a change, the service watches vCenter's connection state of the
// hosts that were connected before it for Config.ProbeWindow. A host that
// stops responding has lost its management network to the change: the
// network returns to its last good version (the port group's settings are
// switch-wide, so the whole network does), the bad version is marked
// RolledBack in the history, the record shows status RolledBack with the
// reason, and network.rolledback names the hosts. With no good version the
// port group is removed. The simulator makes this real: shared/sim's
// SetManagementVLAN cuts off every member host of a switch carrying that
// VLAN, through the same update path vCenter clients watch.
//
// # Management port repair
//
// A host cut off by its own management port (its VLAN or block changed in
// vCenter, a per-host mistake no network version made) is repaired alone:
// the service clones the port with its last good configuration, scoped to
// the host (an alternate management channel), waits for the host to
// respond through the clone, gives the original port the last good
// configuration and removes the clone: network.management.cloned, then
// .repaired or .failed with the reason (mgmtrepair.go). The network-wide
// rollback above is for versions of a network; this touches one port.
//
// # Snapshots
//
// Every version stays in the record's history (events.NetworkHistoryLimit).
// network.restore.requested stores an earlier version's spec as a new
// version and pushes it. Export renders any stored version as a Network
// manifest and Import reads one back: a file that re-creates the network
// with `podvisor apply -f` on any installation, independent of vCenter
// (`podvisor network export`, `podvisor network restore`). The fabric's
// ExportSwitch/ImportSwitch back up a switch as vCenter realizes it.
//
// # Pods
//
// On pod.scheduled the service makes sure each of the pod's networks
// (remembered from pod.accepted, else read from the pod record) is realized
// on the scheduled host — realizing it on demand when the host is in scope
// — and allocates an address (package ipam: KV Create per address, so no
// two pods ever share one) → pod.network.attached with port group, address,
// prefix, gateway and a stable MAC; or pod.network.failed with
// NetworkNotFound, NotInScope, NotRealizedOnHost or AddressesExhausted.
// pod.deleted and pod.failed free the addresses; migration.completed moves
// the binding to the target host. An address whose owner is gone anyway
// (its release ran before a late attach took it) is freed by the orphan
// sweep once the owner has been missing for two sweeps (orphans.go); a
// network service's address likewise, once its record has been missing,
// or not naming the address's network, for two sweeps. network.delete.requested is refused with
// network.delete.rejected (reason InUse, the pods) while any address is
// allocated; otherwise the port group is removed, hosts leave a scope
// switch that carries no podvisor port group any more, the records go and
// network.deleted is published.
//
// # Network services and pass-through data
//
// network.service.declared registers a NetworkService: a profile per
// network it serves (an address reserved in IPAM, port, zone) in KV
// net-services, which the host agents serve; pods attached afterwards get
// the DNS addresses as nameservers (netservices.go). A service whose
// network does not exist yet or whose pool is full (reason NoAddress)
// waits in its record: it is configured when the network gets a version,
// when addresses of the network are freed (pods, VMs, orphans or services
// released), and at every resync, the services waiting longest first
// until the pool is full again. Pass-through data in
// a registered namespace is kept per switch, port group, port or host in
// KV net-data, for the host agents' modules; an unregistered namespace is
// refused (netdata.go).
//
// # Queries
//
// "Is network X available on host H" is a NATS request on
// events.SubjectQueryNetworkAvailable ("pv.query.network.available") with
// JSON events.NetworkAvailabilityQuery; the reply is
// events.NetworkAvailabilityAnswer (state, available, in scope, version,
// reason). The record and the host's key in `net-realized` say where the
// network should be; the host is then read back from vCenter (connected, and carrying the port
// group where the model says it is realized), since the scheduler asks
// right before binding a pod there. A host that reads back without it is
// Failed in the answer, and the network is reconciled at once, which
// records the host Failed (network.host.failed; `net-hosts` lists it in
// failed). Replicas answer in the queue group "netconfig".
//
// migration.target.reserved realizes the pod's networks on the target
// before the vMotion; the migration precheck waits for it.
//
//	nats req pv.query.network.available '{"network":"frontend","host":"esx-1-01"}'
//
// # Running it
//
//	cfg, err := netconfig.ConfigFromEnv()
//	svc, err := netconfig.New(cfg, netconfig.Deps{Bus: b, VSphere: session, Logger: log})
//	err = svc.Run(ctx) // blocks; nil when ctx ends
package netconfig
