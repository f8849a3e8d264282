package events

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// KV buckets the scheduler owns. Other services and the CLI read them as read
// models; only the scheduler writes them.
const (
	// BucketHosts holds one HostRecord per host, keyed by HostRecordKey.
	BucketHosts = "hosts"
	// BucketLedger holds one LedgerEntry per host, keyed by LedgerEntryKey,
	// updated only by compare-and-set on the key's revision.
	BucketLedger = "ledger"
)

// Host states as `podvisor get hosts` prints them (HostRecord.State).
const (
	HostStateReady       = "Ready"
	HostStateCordoned    = "Cordoned"
	HostStateMaintenance = "Maintenance"
	HostStateLost        = "Lost"
	HostStateNotReady    = "NotReady"
)

// HostRecord is the scheduler's inventory record of one host (KV `hosts`).
// The hardware, state, datastores and networks come from vCenter's property
// collector; the allocation totals are a summary of the host's LedgerEntry,
// refreshed shortly after the ledger changes (the ledger is the authority).
//
// The HostInfo fields are inlined, so a record reads as one flat JSON object.
type HostRecord struct {
	HostInfo `json:",inline"`

	// ResourcePool is the inventory path of the resource pool pod VMs on this
	// host are created in (the root pool of the host's cluster).
	ResourcePool string `json:"resourcePool,omitempty"`
	// Ref is the HostSystem managed object reference (for example "host-21").
	Ref string `json:"ref,omitempty"`

	// CPUCapacityMilli is what pod VMs may reserve in total:
	// CPUCores × 1000 × the profile's CPU overcommit ratio.
	CPUCapacityMilli int64 `json:"cpuCapacityMilli"`
	// MemoryCapacityBytes is what pod VMs may reserve in total: the host's
	// physical memory (memory is never overcommitted).
	MemoryCapacityBytes int64 `json:"memoryCapacityBytes"`
	// MaxPods caps the number of pod VMs on the host (0 = no cap).
	MaxPods int `json:"maxPods,omitempty"`

	// PodNetworks are the logical networks realized on the host, from
	// network-config's read model (KV net-hosts), sorted; Networks above are
	// the vSphere networks (port groups) the host is connected to.
	PodNetworks []string `json:"podNetworks,omitempty"`

	// AllocatedCPUMilli, AllocatedMemoryBytes, Pods and VMs sum the host's
	// ledger allocations (pods, native VMs and incoming migrations); Pods
	// counts the pods' and VMs the native VMs'.
	AllocatedCPUMilli    int64 `json:"allocatedCpuMilli"`
	AllocatedMemoryBytes int64 `json:"allocatedMemoryBytes"`
	Pods                 int   `json:"pods"`
	VMs                  int   `json:"vms,omitempty"`

	// LostAt is when the inventory last saw the host stop responding; zero
	// while it is connected.
	LostAt time.Time `json:"lostAt,omitzero"`
	// UpdatedAt is when the record was last written.
	UpdatedAt time.Time `json:"updatedAt"`
}

// Schedulable says whether new pods may be placed on the host: connected, not
// in maintenance mode and not cordoned.
func (r *HostRecord) Schedulable() bool {
	return r.ConnectionState == HostConnected && !r.Maintenance && !r.Cordoned
}

// State is the one-word state `podvisor get hosts` prints. A lost host is
// Lost whatever else is true of it, because that is what an operator must
// act on first.
func (r *HostRecord) State() string {
	switch {
	case r.ConnectionState == HostNotResponding:
		return HostStateLost
	case r.ConnectionState != HostConnected:
		return HostStateNotReady
	case r.Maintenance:
		return HostStateMaintenance
	case r.Cordoned:
		return HostStateCordoned
	default:
		return HostStateReady
	}
}

// Validate checks the inventory part of the record and that the numbers are
// not negative.
func (r *HostRecord) Validate() error {
	errs := r.HostInfo.validate(nil)
	for name, v := range map[string]int64{
		"cpuCapacityMilli": r.CPUCapacityMilli, "memoryCapacityBytes": r.MemoryCapacityBytes,
		"maxPods": int64(r.MaxPods), "allocatedCpuMilli": r.AllocatedCPUMilli,
		"allocatedMemoryBytes": r.AllocatedMemoryBytes, "pods": int64(r.Pods), "vms": int64(r.VMs),
	} {
		errs = append(errs, validateNonNegative(pathOf(name), v)...)
	}
	return asError(errs)
}

// HostRecordKey is the KV key of a host's record in BucketHosts.
func HostRecordKey(host string) string { return kvKey(host) }

// LedgerEntryKey is the KV key of a host's entry in BucketLedger.
func LedgerEntryKey(host string) string { return kvKey(host) }

// kvKey maps a host name onto the characters a NATS KV key may hold
// ([-/_=.a-zA-Z0-9]). vCenter host names (FQDNs, IP addresses, the
// simulator's DC0_C0_H0) already fit; anything else is written as =XX (hex)
// so that two different names never share a key.
func kvKey(name string) string {
	ok := true
	for i := 0; i < len(name); i++ {
		if !kvKeyChar(name[i]) || name[i] == '=' {
			ok = false
			break
		}
	}
	if ok {
		return name
	}
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		c := name[i]
		if kvKeyChar(c) && c != '=' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "=%02X", c)
	}
	return b.String()
}

func kvKeyChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '-' || c == '_' || c == '=' || c == '.'
}

// Pod bindings. Per-host compare-and-set keeps a host from being
// overcommitted, but cannot stop two scheduler instances from placing the
// same pod on two different hosts (a pod waiting in both after a restart,
// say). So before a pod's allocation is written, its binding is created
// (KV Create: only one writer wins) in the same bucket under
// PodBindingKey(uid); the value is the host name as JSON. The binding
// prefix cannot be produced by LedgerEntryKey ("=" is always followed by
// two hex digits there), so readers listing ledger entries skip binding
// keys with IsPodBindingKey.
const podBindingPrefix = "==pod."

// PodBindingKey is the ledger-bucket key of a pod's binding.
func PodBindingKey(uid string) string { return podBindingPrefix + kvKey(uid) }

// IsPodBindingKey reports whether a ledger-bucket key is a pod binding
// rather than a host's LedgerEntry.
func IsPodBindingKey(key string) bool { return strings.HasPrefix(key, podBindingPrefix) }

// PodBinding is the value under PodBindingKey.
type PodBinding struct {
	// Host the pod is bound to.
	Host string `json:"host"`
	// UID of the pod.
	UID string `json:"uid"`
	// Confirmed is set once the pod's allocation is written on Host. An
	// unconfirmed binding, or a confirmed one whose host does not hold the
	// pod, may be taken over (compare-and-set on its revision) by another
	// scheduler: its writer died, or lost, between binding and reserving.
	Confirmed bool `json:"confirmed,omitempty"`
}

// Allocation kinds in a LedgerEntry.
const (
	// AllocationPod is a pod placed on (or running on) the host.
	AllocationPod = "pod"
	// AllocationMigration is room held on a migration's target host from
	// migration.target.reserved until the migration completes (it becomes a
	// pod allocation) or fails / is cancelled (it is released).
	AllocationMigration = "migration"
)

// Allocation is the room one pod VM holds on a host.
type Allocation struct {
	// Kind is AllocationPod or AllocationMigration.
	Kind string `json:"kind"`
	// Namespace, Name and UID identify the pod.
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
	// VM says the allocation is a native VM's, placed like a pod (false
	// in entries written before VMs were told apart: they count as pods).
	VM bool `json:"vm,omitempty"`
	// MigrationID is set for Kind AllocationMigration.
	MigrationID string `json:"migrationId,omitempty"`
	// CPUMilli and MemoryBytes are the pod VM's size (SizePodVM: container
	// requests plus the pod VM overhead).
	CPUMilli    int64 `json:"cpuMilli"`
	MemoryBytes int64 `json:"memoryBytes"`
	// Labels are the pod's labels, kept so that pod anti-affinity can be
	// evaluated from the ledger alone.
	Labels map[string]string `json:"labels,omitempty"`
	// ReservedAt is when the allocation was made.
	ReservedAt time.Time `json:"reservedAt"`
}

// Key is the allocation's key inside its LedgerEntry: the pod uid, suffixed
// with the migration id for a migration's reservation so that the same pod
// can hold room on its source and its target at once.
func (a *Allocation) Key() string {
	if a.Kind == AllocationMigration {
		return a.UID + "@" + a.MigrationID
	}
	return a.UID
}

// LedgerEntry is the placement ledger of one host (KV `ledger`): every pod VM
// the scheduler has placed there. Writers read the entry with its KV revision,
// add or remove allocations and write it back with Update(key, value,
// revision): a concurrent writer makes the update fail and the writer retries
// on fresh data, so two schedulers can never both take the last room.
type LedgerEntry struct {
	// Host is the host name (the key may be escaped; this is not).
	Host string `json:"host"`
	// Allocations by Allocation.Key.
	Allocations map[string]Allocation `json:"allocations"`
	// Cordoned: no new allocation may be reserved on the host (a drain or
	// an operator's cordon). It lives in the ledger entry, not in a
	// scheduler's memory, so that every scheduler replica honours a cordon
	// another one recorded, and a reservation racing with the cordon loses
	// the compare-and-set on the entry.
	Cordoned bool `json:"cordoned,omitempty"`
	// UpdatedAt is when the entry was last written.
	UpdatedAt time.Time `json:"updatedAt"`
}

// Totals sums the entry's allocations.
func (e *LedgerEntry) Totals() (cpuMilli, memoryBytes int64, pods int) {
	for _, a := range e.Allocations {
		cpuMilli += a.CPUMilli
		memoryBytes += a.MemoryBytes
		if !a.VM {
			pods++ // a native VM holds room and is no pod
		}
	}
	return cpuMilli, memoryBytes, pods
}

// Keys lists the allocation keys in order (for stable output).
func (e *LedgerEntry) Keys() []string {
	keys := make([]string, 0, len(e.Allocations))
	for k := range e.Allocations {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
