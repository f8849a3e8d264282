package events

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// KV buckets network-config owns. Other services and the CLI read them as
// read models; only network-config writes them.
const (
	// BucketNetworks holds one NetworkRecord per logical network, keyed by
	// NetworkRecordKey. Every write is a compare-and-set on the key's revision.
	BucketNetworks = "networks"
	// BucketNetRealized holds what each host in a network's scope carries
	// of it: one NetworkHostRecord per (network, host), keyed by
	// NetworkHostKey. Per-host state lives here rather than in the network
	// record, so that the record every attach reads stays the same size
	// whatever the number of hosts, and realizing a network on one host
	// writes one small key. network-config declares the bucket itself.
	BucketNetRealized = "net-realized"
	// BucketNetHosts holds one NetworkAvailability per network, keyed by
	// NetworkRecordKey: the hosts where the network is realized now. The
	// scheduler and the migration service read it to place pods.
	BucketNetHosts = "net-hosts"
	// BucketIPAM holds one IPAllocation per allocated address, keyed by
	// IPAllocationKey, plus one IPPodBinding per (network, pod) keyed by
	// IPPodBindingKey. Allocation is a KV Create on the address key, so two
	// pods can never hold the same address.
	BucketIPAM = "ipam"
	// BucketNetMgmt holds network-config's memory of each host's last good
	// management port configuration, keyed by host, so that a replica that
	// takes over can repair a port that broke before it started. Only
	// network-config reads it; it declares the bucket itself.
	BucketNetMgmt = "net-mgmt"
)

// SubjectQueryNetworkAvailable is the core NATS request/reply subject that
// answers "is network X available on host H" (request NetworkAvailabilityQuery,
// reply NetworkAvailabilityAnswer, both JSON). It is outside every stream: a
// query is a read, not a fact, and a caller that gets no reply asks again.
const SubjectQueryNetworkAvailable = "pv.query.network.available"

// Network statuses as `podvisor get networks` prints them (NetworkRecord.Status).
const (
	// NetworkStatusPending: a version is being pushed to the hosts in scope.
	NetworkStatusPending = "Pending"
	// NetworkStatusReady: every host in scope carries the current version.
	NetworkStatusReady = "Ready"
	// NetworkStatusDegraded: some hosts in scope failed (see
	// BucketNetRealized).
	NetworkStatusDegraded = "Degraded"
	// NetworkStatusRolledBack: the latest version broke hosts and was undone;
	// Reason and Message say why, Version is the restored good version (0
	// when there was none and the port group was removed).
	NetworkStatusRolledBack = "RolledBack"
	// NetworkStatusRejected: the network was declared but never applied
	// because the declaration is invalid here (overlapping CIDR, unknown
	// cluster or host); Message says why.
	NetworkStatusRejected = "Rejected"
	// NetworkStatusDeleting: the port group is being removed.
	NetworkStatusDeleting = "Deleting"
)

// Per-host states of a network (NetworkHostState.State).
const (
	NetworkHostStatePending = "Pending"
	NetworkHostStateReady   = "Ready"
	NetworkHostStateFailed  = "Failed"
)

// Version statuses in a network's history (NetworkVersion.Status).
const (
	// NetworkVersionApplied: the version was pushed (it may since have been
	// superseded by a newer one).
	NetworkVersionApplied = "Applied"
	// NetworkVersionRolledBack: pushing the version broke hosts; it was undone.
	NetworkVersionRolledBack = "RolledBack"
	// NetworkVersionPending: the version is stored and being pushed.
	NetworkVersionPending = "Pending"
)

// NetworkHistoryLimit bounds NetworkRecord.History: the newest versions are
// kept, older ones can no longer be restored (export them to keep them).
const NetworkHistoryLimit = 16

// NetworkRecord is network-config's record of one logical network (KV
// `networks`). It holds the desired state (Spec at Version), how many hosts
// in scope carry it, and the bounded history of versions that
// network.restore.requested can re-apply. What each host carries is kept
// per host in BucketNetRealized, so the record's size does not grow with
// the number of hosts.
type NetworkRecord struct {
	// Name of the network (a DNS-1123 label).
	Name string `json:"name"`
	// Version is the version whose Spec is the desired state now. Versions
	// count from 1; 0 means nothing is applied (a rejected first declaration
	// or a first version that was rolled back).
	Version int64 `json:"version"`
	// Spec is the desired state at Version (for a Rejected network, the
	// refused declaration, so a person can see what was asked).
	Spec NetworkSpec `json:"spec"`
	// Status is one of the NetworkStatus* constants.
	Status string `json:"status"`
	// Reason is a CamelCase word for the latest notable outcome
	// (ConnectivityLost, InvalidSpec, DeleteRefused, ...), empty when all is
	// well.
	Reason string `json:"reason,omitempty"`
	// Message explains Reason for a person.
	Message string `json:"message,omitempty"`
	// RefusedEvent is the CloudEvent id of the request (network.declared,
	// network.restore.requested) the latest refusal answered (Reason
	// InvalidSpec, InUse or RestoreFailed), so a client tells its own
	// request's refusal from an earlier one.
	RefusedEvent string `json:"refusedEvent,omitempty"`
	// PortGroup is the DVS port group realizing the network (pv-<name>).
	PortGroup string `json:"portGroup"`
	// Switch is the distributed switch carrying PortGroup; its members are
	// exactly the hosts in scope.
	Switch string `json:"switch,omitempty"`
	// HostsInScope counts the hosts in scope when Version was last pushed
	// (Spec.Scope resolved against the inventory); each has a
	// NetworkHostRecord in BucketNetRealized.
	HostsInScope int `json:"hostsInScope"`
	// HostsReady counts the hosts in scope that carry Version.
	HostsReady int `json:"hostsReady"`
	// ApplyFailed lists the hosts in scope whose agent reported it could
	// not carry the port group (network.host.applied), with the agent's
	// reason: such a host is Failed in Hosts whatever vCenter reads back,
	// until its agent reports the port group carried. It holds failures
	// only, so it is empty while all is well.
	ApplyFailed map[string]NetworkHostState `json:"applyFailed,omitempty"`
	// IPsUsed counts the addresses allocated on the network.
	IPsUsed int `json:"ipsUsed"`
	// LastGoodVersion is the newest version that was pushed without any host
	// losing management connectivity: the rollback target.
	LastGoodVersion int64 `json:"lastGoodVersion,omitempty"`
	// History lists stored versions, oldest first, at most
	// NetworkHistoryLimit of them.
	History []NetworkVersion `json:"history,omitempty"`
	// UpdatedAt is when the record was last written.
	UpdatedAt time.Time `json:"updatedAt"`
}

// NetworkHostState is what one host carries of a network.
type NetworkHostState struct {
	// Version realized on the host (0: none yet).
	Version int64 `json:"version"`
	// State is one of the NetworkHostState* constants.
	State string `json:"state"`
	// Reason is a CamelCase word when State is Failed.
	Reason string `json:"reason,omitempty"`
	// Message explains Reason.
	Message string `json:"message,omitempty"`
	// UpdatedAt is when the host was observed in this state (a push that
	// reads back the same state does not write it again).
	UpdatedAt time.Time `json:"updatedAt"`
}

// NetworkHostRecord is what one host in a network's scope carries of it
// (KV BucketNetRealized, key NetworkHostKey).
type NetworkHostRecord struct {
	// Network and Host name the pair.
	Network string `json:"network"`
	Host    string `json:"host"`
	// Pushed is the network version whose push wrote this state: a push of
	// an older version (a replica that fell behind) never overwrites the
	// state a newer one wrote.
	Pushed int64 `json:"pushed"`
	NetworkHostState
}

// ReadyAt reports whether the host carries version of the network.
func (h *NetworkHostRecord) ReadyAt(version int64) bool {
	return h != nil && h.State == NetworkHostStateReady && h.Version == version && version > 0
}

// NetworkHostKey is the BucketNetRealized key of a network on a host:
// <network>.<host>, so that <network>.> lists a network's hosts. A host
// name with characters a key may not hold (an IPv6 address) is
// hex-encoded behind "x-".
func NetworkHostKey(network, host string) string {
	return network + "." + kvKeyPart(host)
}

// NetworkHostKeys is the filter of every BucketNetRealized key of a network.
func NetworkHostKeys(network string) string { return network + ".>" }

func kvKeyPart(s string) string {
	ok := s != "" && !strings.HasPrefix(s, ".") && !strings.HasSuffix(s, ".") && !strings.Contains(s, "..")
	for _, r := range s {
		if !(r == '-' || r == '_' || r == '.' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			ok = false
			break
		}
	}
	if ok && !strings.HasPrefix(s, "x-") {
		return s
	}
	return "x-" + hex.EncodeToString([]byte(s))
}

// NetworkVersion is one stored version of a network: a snapshot that can be
// restored.
type NetworkVersion struct {
	Version int64       `json:"version"`
	Spec    NetworkSpec `json:"spec"`
	// Status is one of the NetworkVersion* constants.
	Status string `json:"status"`
	// Origin says where the version came from: "declared", "restored from
	// version N" or "imported".
	Origin string `json:"origin,omitempty"`
	// Event is the id of the CloudEvent that created the version
	// (network.declared or network.restore.requested): a redelivered event
	// finds its version instead of storing another.
	Event string `json:"event,omitempty"`
	// Reason and Message say why a version was rolled back.
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	// CreatedAt is when the version was stored.
	CreatedAt time.Time `json:"createdAt"`
}

// NetworkRecordKey is the key of a network in the `networks` and `net-hosts`
// buckets: the network name itself (a DNS-1123 label is a valid KV key).
func NetworkRecordKey(name string) string { return name }

// FindVersion returns a stored version from the history.
func (r *NetworkRecord) FindVersion(v int64) (NetworkVersion, bool) {
	for _, h := range r.History {
		if h.Version == v {
			return h, true
		}
	}
	return NetworkVersion{}, false
}

// VersionByEvent returns the version a CloudEvent created, if any.
func (r *NetworkRecord) VersionByEvent(id string) (NetworkVersion, bool) {
	for _, h := range r.History {
		if id != "" && h.Event == id {
			return h, true
		}
	}
	return NetworkVersion{}, false
}

// LatestVersion is the highest version number ever stored (the next version
// is one more), or 0.
func (r *NetworkRecord) LatestVersion() int64 {
	var v int64
	for _, h := range r.History {
		v = max(v, h.Version)
	}
	return max(v, r.Version)
}

// NetworkAvailability is the `net-hosts` read model of one network: where it
// is realized now and where it could be realized on demand. The scheduler
// treats a host in Scope as feasible and prefers one in Hosts.
type NetworkAvailability struct {
	// Network name.
	Network string `json:"network"`
	// Version realized on Hosts.
	Version int64 `json:"version"`
	// Hosts where the network is realized, sorted.
	Hosts []string `json:"hosts"`
	// Scope is every host in the network's scope, sorted.
	Scope []string `json:"scope"`
	// Failed are the hosts in scope that do not carry the current version
	// (its push failed there), sorted: not available until repaired.
	Failed []string `json:"failed,omitempty"`
}

// On says where the network stands on host (one of the NetworkOnHost*
// constants); NetworkUsable of it is the shared definition of available.
func (a *NetworkAvailability) On(host string) string {
	switch {
	case a == nil:
		return NetworkOnHostNotInScope
	case a.Realized(host):
		return NetworkOnHostRealized
	case !a.InScope(host):
		return NetworkOnHostNotInScope
	case slices.Contains(a.Failed, host):
		return NetworkOnHostFailed
	}
	return NetworkOnHostInScope
}

// Realized reports whether the network is realized on host.
func (a *NetworkAvailability) Realized(host string) bool {
	_, ok := slices.BinarySearch(a.Hosts, host)
	return ok
}

// InScope reports whether host is in the network's scope.
func (a *NetworkAvailability) InScope(host string) bool {
	_, ok := slices.BinarySearch(a.Scope, host)
	return ok
}

// NetworkAvailabilityQuery asks whether Network is available on Host
// (request on SubjectQueryNetworkAvailable).
type NetworkAvailabilityQuery struct {
	Network string `json:"network"`
	Host    string `json:"host"`
}

// NetworkAvailabilityAnswer is the reply to a NetworkAvailabilityQuery.
type NetworkAvailabilityAnswer struct {
	Network string `json:"network"`
	Host    string `json:"host"`
	// Available: the network's current version is realized on the host.
	Available bool `json:"available"`
	// State is where the network stands on the host, one of the
	// NetworkOnHost* constants; NetworkUsable(State) is whether a pod may be
	// placed there.
	State string `json:"state,omitempty"`
	// InScope: the host is in the network's scope (network-config realizes
	// it there on demand when a pod is scheduled).
	InScope bool `json:"inScope"`
	// Version of the network realized on the host (0 when not available).
	Version int64 `json:"version,omitempty"`
	// Reason explains a negative answer (NetworkNotFound, NotInScope,
	// NotRealized, HostDisconnected, InvalidQuery).
	Reason string `json:"reason,omitempty"`
	// Message explains Reason for a person.
	Message string `json:"message,omitempty"`
}

// IPAllocation is one allocated address (KV `ipam`, key IPAllocationKey).
// The key is created with KV Create, which fails if it exists: that is what
// keeps two pods from ever holding the same address.
type IPAllocation struct {
	Network string `json:"network"`
	IP      string `json:"ip"`
	// The pod holding the address.
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
	// Host the pod's port is bound on; moved on migration.completed.
	Host string `json:"host,omitempty"`
	// MAC of the pod's NIC on this network (deterministic per pod and
	// network, in VMware's manually assigned range 00:50:56:00-3f:xx:xx).
	MAC string `json:"mac"`
	// AllocatedAt is when the address was taken.
	AllocatedAt time.Time `json:"allocatedAt"`
}

// IPPodBinding points from a pod (by uid) to its address on a network
// (KV `ipam`, key IPPodBindingKey). It is written before the address is
// taken, so a crash between the two never leaks an address: the retry finds
// the binding and either the address it names or nothing.
type IPPodBinding struct {
	IP string `json:"ip"`
}

// IPAllocationKey is the `ipam` key of an address: <network>.<a-b-c-d>.
// The address's dots become dashes so the key has exactly two tokens and
// `<network>.*` lists a network's addresses.
func IPAllocationKey(network, ip string) string {
	return network + "." + strings.ReplaceAll(ip, ".", "-")
}

// IPPodBindingKey is the `ipam` key of a pod's binding on a network:
// <network>.pod.<uid>, with dots of the uid replaced by '=' (never part of a
// uid) so the key keeps three tokens.
func IPPodBindingKey(network, uid string) string {
	return network + ".pod." + strings.ReplaceAll(uid, ".", "=")
}

// ParseIPAllocationKey is the inverse of IPAllocationKey.
func ParseIPAllocationKey(key string) (network string, ip netip.Addr, err error) {
	network, rest, ok := strings.Cut(key, ".")
	if !ok || strings.Contains(rest, ".") {
		return "", netip.Addr{}, fmt.Errorf("ipam key %q: want <network>.<a-b-c-d>", key)
	}
	ip, err = netip.ParseAddr(strings.ReplaceAll(rest, "-", "."))
	if err != nil || !ip.Is4() {
		return "", netip.Addr{}, fmt.Errorf("ipam key %q: %q is not an IPv4 address with dashes", key, rest)
	}
	return network, ip, nil
}

// Usable reports whether a pod may be placed on the host for this network
// (see NetworkUsable).
func (a NetworkAvailabilityAnswer) Usable() bool { return NetworkUsable(a.State) }
