package framework

import (
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
)

// MaxHostScore is the best score a Score plugin gives a host.
const MaxHostScore int64 = 100

// Topology keys pod anti-affinity understands. A pod VM is alone on its host,
// so "per host" is the only topology that means something here; the
// Kubernetes well-known key is accepted so that existing manifests work.
const (
	TopologyHost           = "kubernetes.io/hostname"
	TopologyHostPodvisor   = "podvisor.io/host"
	LabelHost              = "podvisor.io/host"
	LabelCluster           = "podvisor.io/cluster"
	spreadGroupLabel       = "app"
	spreadGroupLabelK8s    = "app.kubernetes.io/name"
	defaultSpreadGroupName = ""
)

// AntiAffinityTerm is a compiled requiredDuringScheduling pod anti-affinity
// term: no pod matching Selector in Namespaces may share a host with the pod.
type AntiAffinityTerm struct {
	Selector   labels.Selector
	Namespaces map[string]bool
}

// PodInfo is a pod as the framework sees it, computed once per pod so that
// plugins running for thousands of hosts only compare numbers and maps.
type PodInfo struct {
	Namespace, Name, UID string
	// Key is <namespace>/<name>.
	Key string
	// CPUMilli and MemoryBytes are the pod VM's size from events.SizePodVM
	// (the pod VM overhead is already inside: count it once).
	CPUMilli    int64
	MemoryBytes int64
	// Networks the pod attaches to (events.PodNetworks).
	Networks []string
	// Images of the pod's containers.
	Images []string
	// Labels of the pod.
	Labels map[string]string
	// NodeSelector must match the host's labels.
	NodeSelector map[string]string
	// HostAffinity are the required node-affinity terms (ORed), matched
	// against host labels.
	HostAffinity []labels.Selector
	// AntiAffinity terms, all required.
	AntiAffinity []AntiAffinityTerm
	// SpreadGroup is the group ClusterSpread spreads: the namespace plus
	// the pod's app label.
	SpreadGroup string
	// VM marks a native VM placed like a pod: it holds CPU and memory on
	// its host but is no pod (MaxPods and the host's pod count leave it
	// out).
	VM bool
	// Exclude lists hosts the pod must not go to (a migration's source).
	Exclude map[string]bool
	// Datastores the host must mount (a VM's disks stay on theirs when
	// it moves), beside the profile's RequiredDatastores.
	Datastores []string
	// Refused lists hosts that refused one of the pod's networks
	// (network-config's availability query before binding, or the attach):
	// the pod is placed on another host.
	Refused map[string]bool

	// netIDs are Networks interned by the snapshot being scheduled against
	// (resolvedBy), so that filters compare small integers instead of
	// hashing strings for every host.
	netIDs      []int
	resolvedBy  *Snapshot
	resolvedGen uint64
}

// NetworkIDs returns the pod's networks as interned by snapshot s, or nil
// when the pod was not resolved against s (plugins then use the names).
func (p *PodInfo) NetworkIDs(s *Snapshot) []int {
	if p.resolvedBy == nil || p.resolvedBy != s || p.resolvedGen != s.generation {
		return nil
	}
	return p.netIDs
}

// PodSize is the size part of a pod, as produced by events.SizePodVM.
type PodSize struct {
	CPUMilli    int64
	MemoryBytes int64
}

// NewPodInfo compiles a pod for the framework. The size comes from the
// shared sizing function (pod.accepted carries it) and is not recomputed
// here so that the ledger and the pod VM agree to the byte.
func NewPodInfo(pod *corev1.Pod, uid string, size PodSize, networks []string) (*PodInfo, error) {
	ns := pod.Namespace
	if ns == "" {
		ns = "default"
	}
	p := &PodInfo{
		Namespace:    ns,
		Name:         pod.Name,
		UID:          uid,
		Key:          ns + "/" + pod.Name,
		CPUMilli:     size.CPUMilli,
		MemoryBytes:  size.MemoryBytes,
		Networks:     networks,
		Labels:       pod.Labels,
		NodeSelector: pod.Spec.NodeSelector,
	}
	for _, c := range pod.Spec.Containers {
		p.Images = append(p.Images, c.Image)
	}
	p.SpreadGroup = SpreadGroup(ns, pod.Labels)
	if a := pod.Spec.Affinity; a != nil {
		if a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
			for i, term := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
				sel, err := hostSelector(term)
				if err != nil {
					return nil, fmt.Errorf("pod.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[%d]: %w", i, err)
				}
				p.HostAffinity = append(p.HostAffinity, sel)
			}
		}
		if a.PodAntiAffinity != nil {
			for i, term := range a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution {
				path := fmt.Sprintf("pod.spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[%d]", i)
				if term.TopologyKey != TopologyHost && term.TopologyKey != TopologyHostPodvisor {
					return nil, fmt.Errorf("%s.topologyKey: %q is not supported, want %q (pod VMs are spread per host)", path, term.TopologyKey, TopologyHost)
				}
				sel, err := metav1.LabelSelectorAsSelector(term.LabelSelector)
				if err != nil {
					return nil, fmt.Errorf("%s.labelSelector: %w", path, err)
				}
				if term.LabelSelector == nil {
					// Kubernetes: a nil selector matches no pod.
					sel = labels.Nothing()
				}
				nss := map[string]bool{}
				for _, n := range term.Namespaces {
					nss[n] = true
				}
				if len(nss) == 0 {
					nss[ns] = true
				}
				p.AntiAffinity = append(p.AntiAffinity, AntiAffinityTerm{Selector: sel, Namespaces: nss})
			}
		}
	}
	return p, nil
}

// hostSelectorOps are the label selector operators of the node selector
// operators a host selector supports.
var hostSelectorOps = map[corev1.NodeSelectorOperator]selection.Operator{
	corev1.NodeSelectorOpIn:           selection.In,
	corev1.NodeSelectorOpNotIn:        selection.NotIn,
	corev1.NodeSelectorOpExists:       selection.Exists,
	corev1.NodeSelectorOpDoesNotExist: selection.DoesNotExist,
	corev1.NodeSelectorOpGt:           selection.GreaterThan,
	corev1.NodeSelectorOpLt:           selection.LessThan,
}

// hostSelector compiles a node selector term against host labels. Field
// selectors are refused: hosts have no Kubernetes fields.
func hostSelector(term corev1.NodeSelectorTerm) (labels.Selector, error) {
	if len(term.MatchFields) > 0 {
		return nil, fmt.Errorf("matchFields: not supported for hosts, use matchExpressions on host labels")
	}
	sel := labels.NewSelector()
	for j, e := range term.MatchExpressions {
		op, ok := hostSelectorOps[e.Operator]
		if !ok {
			return nil, fmt.Errorf("matchExpressions[%d].operator: %q is not supported", j, e.Operator)
		}
		r, err := labels.NewRequirement(e.Key, op, e.Values)
		if err != nil {
			return nil, fmt.Errorf("matchExpressions[%d]: %w", j, err)
		}
		sel = sel.Add(*r)
	}
	return sel, nil
}

// SpreadGroup is the key ClusterSpread counts pods by: namespace and the
// pod's app label (app.kubernetes.io/name, else app), so that the replicas
// of one application spread while unrelated pods do not push each other
// around.
func SpreadGroup(namespace string, podLabels map[string]string) string {
	app := podLabels[spreadGroupLabelK8s]
	if app == "" {
		app = podLabels[spreadGroupLabel]
	}
	return namespace + "/" + app
}

// NetworkState is how far a logical network is on a host.
type NetworkState uint8

const (
	// NetworkAbsent: the host is outside the network's scope.
	NetworkAbsent NetworkState = iota
	// NetworkInScope: the host is in scope; network-config realizes the
	// port group on demand when a pod is scheduled there.
	NetworkInScope
	// NetworkRealized: the port group exists on the host.
	NetworkRealized
)

// PodRef is a pod (or a migration's reservation) holding room on a host.
type PodRef struct {
	Key         string // ledger allocation key
	Namespace   string
	Name        string
	UID         string
	CPUMilli    int64
	MemoryBytes int64
	Labels      map[string]string
	SpreadGroup string
	// VM: the room is a native VM's (PodInfo.VM).
	VM bool
	// Assumed marks a pod placed by the running scheduling pass but not
	// committed to the ledger yet; SetPods keeps it.
	Assumed bool
}

// Host is one host as the framework evaluates it.
type Host struct {
	Name         string
	Cluster      string
	ResourcePool string
	// Schedulable: connected, not in maintenance, not cordoned.
	ConnectionState string
	Maintenance     bool
	Cordoned        bool

	CPUCapacityMilli    int64
	MemoryCapacityBytes int64
	MaxPods             int

	// Requested sums the ledger allocations and the assumed pods.
	RequestedCPUMilli    int64
	RequestedMemoryBytes int64
	// Pods on the host by allocation key (ledger and assumed), native
	// VMs among them; change it with AddPod, RemovePod, SetPods and
	// SetHost, which keep vms.
	Pods map[string]*PodRef
	// vms counts the native VMs of Pods.
	vms int

	Datastores []string
	Labels     map[string]string
	// Networks by logical network name.
	Networks map[string]NetworkState

	// LedgerRevision is the KV revision of the host's ledger entry the
	// committed allocations come from.
	LedgerRevision uint64

	// Interned by the snapshot holding the host (owner): the cluster's
	// index and the network states by network id.
	owner     *Snapshot
	clusterID int
	nets      []NetworkState
}

// Owner is the snapshot the host belongs to (nil for a free-standing host).
func (h *Host) Owner() *Snapshot { return h.owner }

// ClusterID is the index of the host's cluster in its snapshot.
func (h *Host) ClusterID() int { return h.clusterID }

// NetworkStateByID is the state of an interned network on the host.
func (h *Host) NetworkStateByID(id int) NetworkState {
	if id < 0 || id >= len(h.nets) {
		return NetworkAbsent
	}
	return h.nets[id]
}

// Connected reports whether the host is connected.
func (h *Host) Connected() bool { return h.ConnectionState == "connected" }

// Schedulable reports whether new pods may go there.
func (h *Host) Schedulable() bool { return h.Connected() && !h.Maintenance && !h.Cordoned }

// PodCount is the number of pods holding room on the host (native VMs
// hold room too and are not counted: VMCount).
func (h *Host) PodCount() int { return len(h.Pods) - h.vms }

// VMCount is the number of native VMs holding room on the host.
func (h *Host) VMCount() int { return h.vms }

// countVMs sets vms from Pods, for a host whose Pods were set as a whole
// (SetHost: a new host, or one that took its predecessor's pods).
func (h *Host) countVMs() {
	h.vms = 0
	for _, p := range h.Pods {
		if p.VM {
			h.vms++
		}
	}
}

// AddPod accounts for a pod on the host (idempotent by key).
func (h *Host) AddPod(p *PodRef) bool {
	if h.Pods == nil {
		h.Pods = map[string]*PodRef{}
	}
	if _, ok := h.Pods[p.Key]; ok {
		return false
	}
	h.Pods[p.Key] = p
	if p.VM {
		h.vms++
	}
	h.RequestedCPUMilli += p.CPUMilli
	h.RequestedMemoryBytes += p.MemoryBytes
	return true
}

// RemovePod releases a pod's room (idempotent by key).
func (h *Host) RemovePod(key string) (*PodRef, bool) {
	p, ok := h.Pods[key]
	if !ok {
		return nil, false
	}
	delete(h.Pods, key)
	if p.VM {
		h.vms--
	}
	h.RequestedCPUMilli -= p.CPUMilli
	h.RequestedMemoryBytes -= p.MemoryBytes
	return p, true
}

// Snapshot is the set of hosts a scheduling cycle evaluates, with the
// per-cluster counters the spread score needs. It is not safe for concurrent
// use: the scheduler's loop owns it.
type Snapshot struct {
	hosts  []*Host
	byName map[string]*Host
	// groups counts pods per spread group per cluster id.
	groups     map[string][]int
	clusterIDs map[string]int
	netIDs     map[string]int
	generation uint64
}

// NewSnapshot builds a snapshot of hosts (sorted by name).
func NewSnapshot(hosts ...*Host) *Snapshot {
	s := &Snapshot{byName: map[string]*Host{}, groups: map[string][]int{}, clusterIDs: map[string]int{}, netIDs: map[string]int{}}
	for _, h := range hosts {
		s.SetHost(h)
	}
	return s
}

// Hosts returns the hosts sorted by name. Do not modify the slice.
func (s *Snapshot) Hosts() []*Host { return s.hosts }

// Host returns a host by name.
func (s *Snapshot) Host(name string) (*Host, bool) {
	h, ok := s.byName[name]
	return h, ok
}

// Len is the number of hosts.
func (s *Snapshot) Len() int { return len(s.hosts) }

// Clusters lists the clusters with at least one host, sorted.
func (s *Snapshot) Clusters() []string {
	seen := map[string]bool{}
	for _, h := range s.hosts {
		seen[h.Cluster] = true
	}
	out := make([]string, 0, len(seen))
	for c := range seen {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

// GroupCount is the number of pods of a spread group in a cluster.
func (s *Snapshot) GroupCount(cluster, group string) int {
	id, ok := s.clusterIDs[cluster]
	if !ok {
		return 0
	}
	return s.GroupCounts(group)[id]
}

// GroupCounts is the number of pods of a spread group per cluster id
// (Host.ClusterID). Do not modify the slice.
func (s *Snapshot) GroupCounts(group string) []int {
	c := s.groups[group]
	if len(c) < len(s.clusterIDs) {
		c = append(c, make([]int, len(s.clusterIDs)-len(c))...)
		s.groups[group] = c
	}
	return c
}

// Resolve interns the pod's networks for this snapshot; the framework calls
// it at the start of every cycle.
func (s *Snapshot) Resolve(p *PodInfo) {
	if p.resolvedBy == s && p.resolvedGen == s.generation {
		return
	}
	p.netIDs = p.netIDs[:0]
	for _, n := range p.Networks {
		id, ok := s.netIDs[n]
		if !ok {
			id = -1
		}
		p.netIDs = append(p.netIDs, id)
	}
	p.resolvedBy, p.resolvedGen = s, s.generation
}

// SetNetwork sets the state of a network on a host (from network-config's
// read model).
func (s *Snapshot) SetNetwork(host, network string, st NetworkState) {
	h, ok := s.byName[host]
	if !ok {
		return
	}
	if st == NetworkAbsent {
		delete(h.Networks, network)
	} else {
		if h.Networks == nil {
			h.Networks = map[string]NetworkState{}
		}
		h.Networks[network] = st
	}
	s.intern(h)
}

// intern assigns the host's cluster and network ids. A network seen for
// the first time gets a new id; pods resolved before keep -1 for it, which
// is why Resolve is per cycle.
func (s *Snapshot) intern(h *Host) {
	h.owner = s
	id, ok := s.clusterIDs[h.Cluster]
	if !ok {
		id = len(s.clusterIDs)
		s.clusterIDs[h.Cluster] = id
	}
	h.clusterID = id
	h.nets = h.nets[:0]
	for n, st := range h.Networks {
		nid, ok := s.netIDs[n]
		if !ok {
			nid = len(s.netIDs)
			s.netIDs[n] = nid
			s.invalidatePods()
		}
		for len(h.nets) <= nid {
			h.nets = append(h.nets, NetworkAbsent)
		}
		h.nets[nid] = st
	}
}

// invalidatePods makes pods resolved earlier resolve again: a new network
// id may concern them.
func (s *Snapshot) invalidatePods() { s.generation++ }

// SetHost adds or replaces a host. A replaced host keeps its pods when the
// new one has none, so that an inventory update does not drop allocations.
func (s *Snapshot) SetHost(h *Host) {
	if old, ok := s.byName[h.Name]; ok {
		for _, p := range old.Pods {
			s.count(old.clusterID, p.SpreadGroup, -1)
		}
		if h.Pods == nil {
			h.Pods, h.RequestedCPUMilli, h.RequestedMemoryBytes = old.Pods, old.RequestedCPUMilli, old.RequestedMemoryBytes
			h.LedgerRevision = old.LedgerRevision
		}
		h.countVMs()
		for i, x := range s.hosts {
			if x.Name == h.Name {
				s.hosts[i] = h
				break
			}
		}
	} else {
		h.countVMs()
		i := sort.Search(len(s.hosts), func(i int) bool { return s.hosts[i].Name >= h.Name })
		s.hosts = append(s.hosts, nil)
		copy(s.hosts[i+1:], s.hosts[i:])
		s.hosts[i] = h
	}
	s.byName[h.Name] = h
	s.intern(h)
	for _, p := range h.Pods {
		s.count(h.clusterID, p.SpreadGroup, 1)
	}
}

// RemoveHost drops a host.
func (s *Snapshot) RemoveHost(name string) {
	h, ok := s.byName[name]
	if !ok {
		return
	}
	for _, p := range h.Pods {
		s.count(h.clusterID, p.SpreadGroup, -1)
	}
	delete(s.byName, name)
	for i, x := range s.hosts {
		if x == h {
			s.hosts = append(s.hosts[:i], s.hosts[i+1:]...)
			break
		}
	}
}

// AddPod accounts for a pod on a host; false if the host is unknown or the
// pod already there.
func (s *Snapshot) AddPod(host string, p *PodRef) bool {
	h, ok := s.byName[host]
	if !ok || !h.AddPod(p) {
		return false
	}
	s.count(h.clusterID, p.SpreadGroup, 1)
	return true
}

// RemovePod releases a pod's room on a host.
func (s *Snapshot) RemovePod(host, key string) bool {
	h, ok := s.byName[host]
	if !ok {
		return false
	}
	p, ok := h.RemovePod(key)
	if ok {
		s.count(h.clusterID, p.SpreadGroup, -1)
	}
	return ok
}

// ForgetAssumed removes a pod the caller assumed on a host (AddPod), but
// only if the host still holds that very reference: when a ledger entry
// replaced the host's pods meanwhile (SetPods), the pod in it is the
// committed one and stays.
func (s *Snapshot) ForgetAssumed(host string, p *PodRef) bool {
	h, ok := s.byName[host]
	if !ok || h.Pods[p.Key] != p {
		return false
	}
	return s.RemovePod(host, p.Key)
}

// SetPods replaces a host's committed pods (from a ledger entry at
// revision rev); assumed pods not in the entry are kept.
func (s *Snapshot) SetPods(host string, pods []*PodRef, rev uint64) bool {
	h, ok := s.byName[host]
	if !ok {
		return false
	}
	var assumed []*PodRef
	for _, p := range h.Pods {
		s.count(h.clusterID, p.SpreadGroup, -1)
		if p.Assumed {
			assumed = append(assumed, p)
		}
	}
	h.Pods = make(map[string]*PodRef, len(pods)+len(assumed))
	h.RequestedCPUMilli, h.RequestedMemoryBytes, h.vms = 0, 0, 0
	for _, p := range pods {
		h.AddPod(p)
		s.count(h.clusterID, p.SpreadGroup, 1)
	}
	// Pods assumed by a pass in flight stay until their commit answers,
	// unless the entry already holds them.
	for _, p := range assumed {
		if h.AddPod(p) {
			s.count(h.clusterID, p.SpreadGroup, 1)
		}
	}
	h.LedgerRevision = rev
	return true
}

func (s *Snapshot) count(clusterID int, group string, d int) {
	c := s.GroupCounts(group)
	c[clusterID] += d
}

// PodRefOf is the PodRef of a pod placed by the framework.
func PodRefOf(p *PodInfo) *PodRef {
	return &PodRef{Key: p.UID, Namespace: p.Namespace, Name: p.Name, UID: p.UID,
		CPUMilli: p.CPUMilli, MemoryBytes: p.MemoryBytes, Labels: p.Labels, SpreadGroup: p.SpreadGroup, VM: p.VM}
}
