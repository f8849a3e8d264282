package events

import "time"

// BucketGuestClusters holds one GuestClusterRecord per guest cluster, keyed
// by GuestClusterRecordKey. Only the guest cluster controller writes it.
const BucketGuestClusters = "guestclusters"

// BucketGuestClusterKubeconfigs holds one GuestClusterKubeconfig per Ready
// guest cluster, keyed by GuestClusterRecordKey. Only the guest cluster
// controller writes it, and only it and the admin identity may read it:
// whoever reads a kubeconfig administers that guest cluster, so it is kept
// out of BucketGuestClusters, which every client reads.
const BucketGuestClusterKubeconfigs = "guestcluster-kubeconfigs"

// GuestClusterKubeconfig is the admin kubeconfig of a guest cluster (API
// server CA and client certificate inline): what `podvisor get guestcluster
// NAME --kubeconfig` prints to an admin.
type GuestClusterKubeconfig struct {
	Namespace  string `json:"namespace"`
	Name       string `json:"name"`
	Kubeconfig string `json:"kubeconfig"`
}

// Guest cluster phases (GuestClusterRecord.Phase).
const (
	// GuestClusterPhaseProvisioning: its control plane is starting.
	GuestClusterPhaseProvisioning = "Provisioning"
	// GuestClusterPhaseReady: its API server answers and its podvisor
	// node is registered.
	GuestClusterPhaseReady = "Ready"
	// GuestClusterPhaseDeleting: its pods, VMs and control plane are being
	// removed.
	GuestClusterPhaseDeleting = "Deleting"
	// GuestClusterPhaseFailed: see Reason and Message.
	GuestClusterPhaseFailed = "Failed"
)

// GuestClusterRecordKey is the KV key of a guest cluster: <namespace>.<name>
// (KV keys cannot hold "/").
func GuestClusterRecordKey(namespace, name string) string { return namespace + "." + name }

// GuestClusterRecord is the guest cluster controller's record of one guest
// cluster.
type GuestClusterRecord struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Spec is the last requested spec (normalized).
	Spec  GuestClusterSpec `json:"spec"`
	Phase string           `json:"phase"`
	// Endpoint is the guest API server's URL once it answered.
	Endpoint string `json:"endpoint,omitempty"`
	// HasKubeconfig says the guest cluster's admin kubeconfig is in
	// BucketGuestClusterKubeconfigs (this bucket is readable by every
	// client; that one is not).
	HasKubeconfig bool `json:"hasKubeconfig,omitempty"`
	// Identity is the NATS identity the guest cluster's node uses: it may
	// ask only this guest cluster's queries (SubjectGuestClusterQueries).
	Identity string `json:"identity,omitempty"`
	// Reason (CamelCase) and Message explain a failure.
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	// Conditions say what was checked and done: Compatible (the
	// compatibility check of its version; False names each unmet
	// requirement), as on pods.
	Conditions []PodCondition `json:"conditions,omitempty"`
	// Workers are the worker nodes (one per worker VM of spec.workers) as
	// last seen, and ReadyWorkers counts those whose VM runs.
	Workers      []GuestNode `json:"workers,omitempty"`
	ReadyWorkers int         `json:"readyWorkers"`
	// ControlPlanes are the control-plane VMs (one per member of
	// spec.controlPlane, when the control plane runs in VMs) as last seen,
	// and ReadyControlPlanes counts those whose VM runs: the cluster
	// answers while a majority does.
	ControlPlanes      []GuestNode `json:"controlPlanes,omitempty"`
	ReadyControlPlanes int         `json:"readyControlPlanes"`
	// Pods counts the guest cluster's pods on the supervisor, as last seen.
	Pods                int        `json:"pods"`
	CreatedAt           time.Time  `json:"createdAt"`
	ReadyAt             *time.Time `json:"readyAt,omitempty"`
	DeletionRequestedAt *time.Time `json:"deletionRequestedAt,omitempty"`
}

// GuestClusterConditionCompatible is the condition of the compatibility
// check of a guest cluster's version against the infrastructure's and the
// vCenter's offers.
const GuestClusterConditionCompatible = "Compatible"

// SetCondition sets a condition, keeping its time when the status is
// unchanged; it reports whether anything changed.
func (r *GuestClusterRecord) SetCondition(t, status, reason, message string, now time.Time) bool {
	return setCondition(&r.Conditions, t, status, reason, message, now)
}

// Key is the record's KV key.
func (r *GuestClusterRecord) Key() string { return GuestClusterRecordKey(r.Namespace, r.Name) }

// AllowedNamespaces are the supervisor namespaces its pods may run in.
func (r *GuestClusterRecord) AllowedNamespaces() []string {
	g := GuestCluster{Metadata: NamespacedMeta{Name: r.Name, Namespace: r.Namespace}, Spec: r.Spec}
	return g.AllowedNamespaces()
}
