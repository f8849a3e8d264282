package events

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"

	corev1 "k8s.io/api/core/v1"
)

// A guest cluster's node reaches the supervisor through its own queries
// (core NATS request/reply), answered by the guest cluster controller:
// pv.query.guestcluster.<namespace>.<name>.<op>. Its NATS identity may ask
// these subjects only, so it can act on no other guest cluster and publish
// no event itself; the controller checks every pod against the namespaces
// the guest cluster may use before it asks for the pod.
const (
	// GuestOpPodCreate asks for a guest pod (GuestPodRequest with Pod);
	// answered by GuestPodReply naming the supervisor pod.
	GuestOpPodCreate = "pod.create"
	// GuestOpPodDelete asks for a guest pod's deletion (GuestPodRequest).
	GuestOpPodDelete = "pod.delete"
	// GuestOpPodList lists the guest cluster's pods on the supervisor in
	// the Kubernetes shape (GuestPodReply.Pods).
	GuestOpPodList = "pod.list"
	// GuestOpPodLogs and GuestOpPodExec are PodLogsRequest and
	// PodExecRequest naming the guest pod (guest namespace and name); the
	// controller checks it and hands the request to the host agent of the
	// pod's VM, which streams the answer to the asker's reply subject.
	GuestOpPodLogs = "pod.logs"
	GuestOpPodExec = "pod.exec"
	// GuestOpNodeList lists the guest cluster's worker nodes as the
	// supervisor runs them (GuestPodReply.Nodes): one per worker VM of
	// spec.workers, Ready while that VM runs.
	GuestOpNodeList = "node.list"

	subjectQueryGuestCluster = "pv.query.guestcluster"
	// SubjectGuestClusterQueryAll is what the controller serves.
	SubjectGuestClusterQueryAll = subjectQueryGuestCluster + ".>"
)

// SubjectGuestClusterQuery is the subject of op for guest cluster
// namespace/name.
func SubjectGuestClusterQuery(namespace, name, op string) string {
	return subjectQueryGuestCluster + "." + namespace + "." + name + "." + op
}

// SubjectGuestClusterQueries matches every query of one guest cluster: what
// its identity may publish.
func SubjectGuestClusterQueries(namespace, name string) string {
	return subjectQueryGuestCluster + "." + namespace + "." + name + ".>"
}

// Labels podvisor puts on a guest cluster's pods on the supervisor.
const (
	LabelGuestCluster          = "podvisor.io/guestcluster"
	LabelGuestClusterNamespace = "podvisor.io/guestcluster-namespace"
	LabelGuestNamespace        = "podvisor.io/guest-namespace"
	LabelGuestName             = "podvisor.io/guest-name"
	// LabelGuestClusterRole is on a guest cluster's VMs: worker.
	LabelGuestClusterRole = "podvisor.io/guestcluster-role"
)

// GuestPodRequest is a guest cluster node's request about one of its pods.
type GuestPodRequest struct {
	// GuestNamespace and GuestName name the pod in the guest cluster.
	GuestNamespace string `json:"guestNamespace"`
	GuestName      string `json:"guestName"`
	// Namespace, when set, is the supervisor namespace asked for; it must
	// be one the guest cluster may use. Empty: GuestPodNamespace decides.
	Namespace string `json:"namespace,omitempty"`
	// Pod is the guest pod (create only).
	Pod *corev1.Pod `json:"pod,omitempty"`
}

// GuestPodReply answers a guest cluster query.
type GuestPodReply struct {
	// Error says why the request was refused; empty on success.
	Error string `json:"error,omitempty"`
	// Namespace and Name are the supervisor pod of a create or delete.
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	// Pods are the guest cluster's pods (list), Kubernetes shape, with the
	// guest labels naming their guest namespace and name.
	Pods []corev1.Pod `json:"pods,omitempty"`
	// Nodes are the guest cluster's worker nodes (node.list).
	Nodes []GuestNode `json:"nodes,omitempty"`
}

// GuestNode is one worker node of a guest cluster: its worker VM, a native
// VM of the supervisor (GuestClusterWorkerName), and whether it runs.
type GuestNode struct {
	// Name is the node's name in the guest cluster: its VM's name.
	Name string `json:"name"`
	// Ready says the worker VM runs (Running and PoweredOn on a host);
	// Message says why not otherwise.
	Ready   bool   `json:"ready"`
	Message string `json:"message,omitempty"`
	// Host and IPs are where the VM runs and its addresses.
	Host string   `json:"host,omitempty"`
	IPs  []string `json:"ips,omitempty"`
	// ClassName, CPUs and MemoryBytes are the VM's size, the node's
	// capacity.
	ClassName   string `json:"className,omitempty"`
	CPUs        int32  `json:"cpus,omitempty"`
	MemoryBytes int64  `json:"memoryBytes,omitempty"`
}

// GuestPodNamespace is the supervisor namespace of a guest pod of guest
// namespace guestNS: guestNS itself when the guest cluster may use it,
// the guest cluster's own namespace otherwise.
func GuestPodNamespace(allowed []string, guestNS string) string {
	if slices.Contains(allowed, guestNS) {
		return guestNS
	}
	return allowed[0]
}

// GuestPodName is the supervisor name of guest pod guestNS/guestName of
// guest cluster cluster: <cluster>-<guestNS>-<guestName>, shortened with a
// hash to 63 characters (pod VM names and labels carry it).
func GuestPodName(cluster, guestNS, guestName string) string {
	n := cluster + "-" + guestNS + "-" + guestName
	if len(n) <= 63 {
		return n
	}
	h := sha256.Sum256([]byte(n))
	return n[:54] + "-" + hex.EncodeToString(h[:4])
}
