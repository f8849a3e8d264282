package events

import (
	"time"
)

// KV buckets of the native VM controller (the provisioner writes them, by
// compare-and-set; everyone else reads them as read models).
const (
	// BucketVMs holds one VMRecord per VirtualMachine, keyed by
	// VMRecordKey (<namespace>.<name>).
	BucketVMs = "vms"
	// BucketVMClasses holds one VMClassRecord per class, keyed by name.
	BucketVMClasses = "vmclasses"
	// BucketVMImages holds one VMImageRecord per image, keyed by name.
	BucketVMImages = "vmimages"
)

// VMRecordKey is the KV key of a VM's record: <namespace>.<name>.
func VMRecordKey(namespace, name string) string { return PodRecordKey(namespace, name) }

// VMRecord is the provisioner's record of one native VM: the declaration
// it converges to, what the scheduler and network-config reported, and
// the observed status. `podvisor get vms` prints it as NAMESPACE NAME
// PHASE POWER HOST IP CLASS AGE; `get vm -o json` prints Object().
type VMRecord struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// UID is assigned at the first declaration and kept across re-declarations;
	// the vCenter VM is NativeVMName(UID).
	UID string `json:"uid"`
	// Generation counts declarations that changed the spec.
	Generation int64 `json:"generation"`
	// DeclaredSeq is where stream VMS stored the last declaration that
	// wrote this record (made the VM, or changed it). A vm.delete.requested
	// stored before it is older than what the record now says: one about
	// an earlier VM of the name, delivered again after that VM was deleted
	// and the name declared anew, leaves this VM alone. 0 (omitted) on
	// records written before it was kept: a delete then applies as it
	// always did.
	DeclaredSeq uint64 `json:"declaredSeq,omitempty"`
	// Labels and Annotations of the latest declaration.
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	// Spec is the latest declaration, defaults applied.
	Spec VirtualMachineSpec `json:"spec"`
	// Size is the class compiled for Generation.
	Size VMSize `json:"size"`
	// Image is the image's spec at acceptance (what the VM is built from).
	Image VirtualMachineImageSpec `json:"image"`
	// ImageDigest is the digest Image.OCI resolved to when the VM's boot
	// disk was first built (sha256:…). A boot disk built again (the VM
	// made again by drift repair or an eviction) is taken from the image
	// disk of this digest without the registry, which may have moved
	// since (another port at the next `podvisor up`), and a pull, when no
	// such disk is left, asks for this digest, not what the tag names by
	// then. It belongs to Image.OCI: a declaration that changes the
	// reference clears it. Empty (omitted) on records written before it
	// was kept and for images without an OCI source: the reference is
	// resolved at the registry, as it always was.
	ImageDigest string `json:"imageDigest,omitempty"`

	// Placement, from vm.scheduled.
	ScheduledGeneration int64    `json:"scheduledGeneration,omitempty"`
	Cluster             string   `json:"cluster,omitempty"`
	ResourcePool        string   `json:"resourcePool,omitempty"`
	Datastores          []string `json:"datastores,omitempty"`
	// AttachedGeneration is the generation whose networks are attached.
	AttachedGeneration int64 `json:"attachedGeneration,omitempty"`

	// Status is the observed state (host, power state, NICs, conditions).
	Status VirtualMachineStatus `json:"status"`

	// Migration is the id of a migration in progress, if any.
	Migration string `json:"migration,omitempty"`
	// StaleVM and StaleHost name the VM an eviction left behind (on a lost
	// host, or on a drained host it could not be moved from); it is removed
	// from vCenter's inventory before the VM is made again elsewhere.
	StaleVM   string `json:"staleVm,omitempty"`
	StaleHost string `json:"staleHost,omitempty"`
	// DisksOn is the datastore where that VM left its files: the VM made
	// again takes its disks up there, as vSphere HA restarts a VM from its
	// files. Cleared once the VM is made again.
	DisksOn string `json:"disksOn,omitempty"`

	CreatedAt           time.Time `json:"createdAt"`
	UpdatedAt           time.Time `json:"updatedAt"`
	DeletionRequestedAt time.Time `json:"deletionRequestedAt,omitzero"`
}

// Key is the VM key <namespace>/<name>.
func (r *VMRecord) Key() string { return PodKey(r.Namespace, r.Name) }

// SetCondition sets a condition, keeping its time when the status is
// unchanged; it reports whether anything changed.
func (r *VMRecord) SetCondition(t, status, reason, message string, now time.Time) bool {
	return setCondition(&r.Status.Conditions, t, status, reason, message, now)
}

// Condition returns the condition of type t.
func (r *VMRecord) Condition(t string) (PodCondition, bool) {
	for _, c := range r.Status.Conditions {
		if c.Type == t {
			return c, true
		}
	}
	return PodCondition{}, false
}

// IPs are the addresses the VM holds, per network.
func (r *VMRecord) IPs() []NetworkIP {
	out := make([]NetworkIP, 0, len(r.Status.NICs))
	for _, n := range r.Status.NICs {
		out = append(out, NetworkIP{Network: n.Network, IP: n.IP})
	}
	return out
}

// Object is the VirtualMachine as `get vm -o json|yaml` prints it: the
// declaration with its status.
func (r *VMRecord) Object() VirtualMachine {
	st := r.Status
	st.UID, st.Generation = r.UID, r.Generation
	if st.IPs == nil {
		st.IPs = []string{}
	}
	return VirtualMachine{
		APIVersion: APIVersion, Kind: KindVirtualMachine,
		Metadata: NamespacedMeta{Name: r.Name, Namespace: r.Namespace, Labels: r.Labels, Annotations: r.Annotations},
		Spec:     r.Spec, Status: &st,
	}
}

// VMClassRecord is a declared class (KV `vmclasses`).
type VMClassRecord struct {
	Class     VirtualMachineClass `json:"class"`
	UpdatedAt time.Time           `json:"updatedAt"`
}

// VMImageRecord is a declared image (KV `vmimages`) and what the
// provisioner found of it.
type VMImageRecord struct {
	Image VirtualMachineImage `json:"image"`
	// LibraryItemID is the content library item's id, once resolved.
	LibraryItemID string `json:"libraryItemId,omitempty"`
	// Ready is true once every source of the image was found.
	Ready bool `json:"ready"`
	// Reason and Message say why it is not ready.
	Reason    string    `json:"reason,omitempty"`
	Message   string    `json:"message,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`
}
