package events

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// KindGuestCluster is the kind of a guest cluster manifest.
const KindGuestCluster = "GuestCluster"

// GuestCluster is a tenant Kubernetes cluster whose own control plane
// deploys its pods into pod VMs through the supervisor:
//
//	apiVersion: podvisor.io/v1alpha1
//	kind: GuestCluster
//	metadata: {name: gc1, namespace: team-a}
//	spec: {version: v1.37.2, controlPlane: {replicas: 1, className: small}, workers: {replicas: 1, className: small}}
//
// The guest cluster's pods run in its own namespace of the supervisor
// (metadata.namespace) unless spec.namespaces lets it use others.
type GuestCluster struct {
	APIVersion string           `json:"apiVersion,omitempty"`
	Kind       string           `json:"kind,omitempty"`
	Metadata   NamespacedMeta   `json:"metadata"`
	Spec       GuestClusterSpec `json:"spec"`
}

// GuestClusterSpec is the desired guest cluster.
type GuestClusterSpec struct {
	// Version is the Kubernetes version of the guest control plane, as
	// vMAJOR.MINOR.PATCH; podvisor builds v1.37.2 (GuestClusterVersions).
	Version string `json:"version"`
	// ControlPlane and Workers are the guest cluster's VMs: how many, of
	// which VirtualMachineClass.
	ControlPlane GuestClusterNodes `json:"controlPlane"`
	Workers      GuestClusterNodes `json:"workers"`
	// Network is the logical network its VMs attach to; "default" when
	// empty.
	Network string `json:"network,omitempty"`
	// Namespaces are the supervisor namespaces, besides its own, the guest
	// cluster may run pods in: a guest pod of namespace N runs in
	// supervisor namespace N when N is listed, in the guest cluster's own
	// namespace otherwise.
	Namespaces []string `json:"namespaces,omitempty"`
}

// GuestClusterNodes is a group of the guest cluster's VMs.
type GuestClusterNodes struct {
	Replicas  int32  `json:"replicas"`
	ClassName string `json:"className"`
	// ImageName is the VirtualMachineImage the group's VMs boot;
	// DefaultGuestClusterNodeImage when empty.
	ImageName string `json:"imageName,omitempty"`
}

// DefaultGuestClusterNodeImage is the VirtualMachineImage a guest
// cluster's VMs boot when spec.workers.imageName is empty.
const DefaultGuestClusterNodeImage = "guestcluster-node"

// Image is ImageName with its default.
func (n GuestClusterNodes) Image() string {
	if n.ImageName == "" {
		return DefaultGuestClusterNodeImage
	}
	return n.ImageName
}

// GuestClusterWorkerName is the name of worker i of guest cluster cluster:
// its VM's name in the guest cluster's namespace and its node's name in
// the guest cluster, <cluster>-worker-<i> (shortened with a hash to 63
// characters).
func GuestClusterWorkerName(cluster string, i int) string {
	suffix := fmt.Sprintf("-worker-%d", i)
	if len(cluster)+len(suffix) <= 63 {
		return cluster + suffix
	}
	h := sha256.Sum256([]byte(cluster))
	return cluster[:63-len(suffix)-9] + "-" + hex.EncodeToString(h[:4]) + suffix
}

// GuestClusterVersions are the Kubernetes versions a guest control plane
// can run: the kube-apiserver the guest image is built from.
var GuestClusterVersions = []string{"v1.37.2"}

var semverRE = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+$`)

// Normalize fills the defaults: namespace "default", network "default".
func (g *GuestCluster) Normalize() {
	if g.Metadata.Namespace == "" {
		g.Metadata.Namespace = "default"
	}
	if g.Spec.Network == "" {
		g.Spec.Network = DefaultNetwork
	}
}

// AllowedNamespaces are the supervisor namespaces the guest cluster's pods
// may run in: its own first, then spec.namespaces.
func (g *GuestCluster) AllowedNamespaces() []string {
	ns := g.Metadata.Namespace
	if ns == "" {
		ns = "default"
	}
	out := []string{ns}
	for _, n := range g.Spec.Namespaces {
		if n != ns {
			out = append(out, n)
		}
	}
	return out
}

func (g *GuestCluster) validate(p *field.Path) field.ErrorList {
	var errs field.ErrorList
	errs = append(errs, validateTypeMeta(p, g.APIVersion, g.Kind, APIVersion, KindGuestCluster)...)
	errs = append(errs, validateDNSLabel(p.Child("metadata", "name"), g.Metadata.Name)...)
	if g.Metadata.Namespace != "" {
		errs = append(errs, validateDNSLabel(p.Child("metadata", "namespace"), g.Metadata.Namespace)...)
	}
	errs = append(errs, validateLabels(p.Child("metadata", "labels"), g.Metadata.Labels)...)
	sp := p.Child("spec")
	switch {
	case g.Spec.Version == "":
		errs = append(errs, field.Required(sp.Child("version"), fmt.Sprintf("one of %v", GuestClusterVersions)))
	case !semverRE.MatchString(g.Spec.Version):
		errs = append(errs, field.Invalid(sp.Child("version"), g.Spec.Version, "must look like v1.37.2"))
	}
	errs = append(errs, g.Spec.ControlPlane.validate(sp.Child("controlPlane"), 1, MaxGuestControlPlanes, "")...)
	if r := g.Spec.ControlPlane.Replicas; r > 0 && r%2 == 0 {
		errs = append(errs, field.Invalid(sp.Child("controlPlane", "replicas"), r,
			"must be odd: each control-plane VM runs a member of the cluster's etcd, which needs a majority of its members, so an even count tolerates no more failures than one fewer"))
	}
	errs = append(errs, g.Spec.Workers.validate(sp.Child("workers"), 0, 16, "")...)
	if g.Spec.Network != "" {
		errs = append(errs, validateDNSLabel(sp.Child("network"), g.Spec.Network)...)
	}
	errs = append(errs, validateNames(sp.Child("namespaces"), g.Spec.Namespaces, validateDNSLabel)...)
	return errs
}

// ChangeRefused says why a guest cluster that exists with spec prev cannot
// take next, naming the field; nil when it can. The control-plane count is
// fixed at creation: each control-plane VM runs a member of the cluster's
// etcd, whose membership is made with the cluster.
func (next GuestClusterSpec) ChangeRefused(prev GuestClusterSpec) error {
	if prev.ControlPlane.Replicas != 0 && next.ControlPlane.Replicas != prev.ControlPlane.Replicas {
		return field.Forbidden(field.NewPath("spec", "controlPlane", "replicas"), fmt.Sprintf(
			"the guest cluster was made with %d control-plane VMs and the count cannot change (its etcd's membership is fixed at creation); delete it and apply it again",
			prev.ControlPlane.Replicas))
	}
	return nil
}

// MaxGuestControlPlanes is how many control-plane VMs a guest cluster may
// ask for. Each runs a member of the cluster's etcd and an API server on
// it (stacked etcd); 1, 3 or 5 (an odd count: etcd needs a majority), as
// cluster-api's KubeadmControlPlane allows.
const MaxGuestControlPlanes = 5

// validate checks the group; replicas must be min to max, and limit (when
// set) says why no more are allowed.
func (n GuestClusterNodes) validate(p *field.Path, min, max int32, limit string) field.ErrorList {
	var errs field.ErrorList
	if n.Replicas < min || n.Replicas > max {
		msg := fmt.Sprintf("must be %d to %d", min, max)
		if min == max {
			msg = fmt.Sprintf("must be %d", min)
		}
		if limit != "" {
			msg += " (" + limit + ")"
		}
		errs = append(errs, field.Invalid(p.Child("replicas"), n.Replicas, msg))
	}
	if n.Replicas > 0 || n.ClassName != "" {
		errs = append(errs, validateDNSLabel(p.Child("className"), n.ClassName)...)
	}
	if n.ImageName != "" {
		errs = append(errs, validateDNSLabel(p.Child("imageName"), n.ImageName)...)
	}
	return errs
}

// GuestClusterKey is the key of a guest cluster: <namespace>/<name>.
func GuestClusterKey(namespace, name string) string { return namespace + "/" + name }

// GuestClusterRequested asks podvisor to create (or converge) a guest
// cluster. Any client may publish it.
type GuestClusterRequested struct {
	GuestCluster GuestCluster `json:"guestCluster"`
}

// Validate checks the manifest.
func (e *GuestClusterRequested) Validate() error {
	return asError(e.GuestCluster.validate(field.NewPath("guestCluster")))
}

// ObjectKey is <namespace>/<name>.
func (e *GuestClusterRequested) ObjectKey() string {
	g := e.GuestCluster
	g.Normalize()
	return GuestClusterKey(g.Metadata.Namespace, g.Metadata.Name)
}

// GuestClusterRef names a guest cluster in the events about it.
type GuestClusterRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

func (r GuestClusterRef) validate() field.ErrorList {
	errs := validateDNSLabel(field.NewPath("namespace"), r.Namespace)
	return append(errs, validateDNSLabel(field.NewPath("name"), r.Name)...)
}

// ObjectKey is <namespace>/<name>.
func (r GuestClusterRef) ObjectKey() string { return GuestClusterKey(r.Namespace, r.Name) }

// GuestClusterDeleteRequested asks podvisor to delete a guest cluster: its
// pods, its VMs, its control plane and its identity.
type GuestClusterDeleteRequested struct {
	GuestClusterRef
}

// Validate checks the reference.
func (e *GuestClusterDeleteRequested) Validate() error { return asError(e.validate()) }

// GuestClusterReady says the guest cluster's API server answers and its
// podvisor node is registered.
type GuestClusterReady struct {
	GuestClusterRef
	// Endpoint is the API server's URL.
	Endpoint string `json:"endpoint"`
}

// Validate checks the reference and the endpoint.
func (e *GuestClusterReady) Validate() error {
	errs := e.validate()
	errs = append(errs, required(field.NewPath("endpoint"), e.Endpoint)...)
	return asError(errs)
}

// GuestClusterFailed says a guest cluster could not be created or kept.
type GuestClusterFailed struct {
	GuestClusterRef
	// Reason is a CamelCase word (ControlPlaneFailed, Invalid, ...).
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// Validate checks the reference, reason and message.
func (e *GuestClusterFailed) Validate() error {
	errs := e.validate()
	errs = append(errs, validateFailure(e.Reason, e.Message)...)
	return asError(errs)
}

// GuestClusterDeleted says the guest cluster and everything it had are gone.
type GuestClusterDeleted struct {
	GuestClusterRef
	// Pods is how many of its pods were deleted with it.
	Pods int `json:"pods"`
}

// Validate checks the reference.
func (e *GuestClusterDeleted) Validate() error {
	errs := e.validate()
	return asError(append(errs, validateNonNegative(field.NewPath("pods"), int64(e.Pods))...))
}
