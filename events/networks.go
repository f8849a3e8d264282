package events

import (
	"net/netip"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// APIVersion of podvisor's own objects (Network, Migration).
const APIVersion = "podvisor.io/v1alpha1"

// Object kinds understood by DecodeObjects.
const (
	KindPod       = "Pod"
	KindNetwork   = "Network"
	KindMigration = "Migration"
)

// MTU bounds of a logical network: 1280 is the IPv6 minimum (below it guests
// misbehave), 9000 the usual jumbo frame size a DVS accepts.
const (
	DefaultMTU = 1500
	MinMTU     = 1280
	MaxMTU     = 9000
)

// MaxVLAN is the largest usable 802.1Q VLAN ID (4095 is reserved); VLAN 0
// means untagged.
const MaxVLAN = 4094

// Meta is the metadata of podvisor's own objects. They are cluster-scoped
// and carry no server-side fields, so it is deliberately smaller than the
// Kubernetes ObjectMeta: anything else (namespace, uid, ...) is an unknown
// field rather than a silently ignored one.
type Meta struct {
	// Name of the object.
	Name string `json:"name"`
	// Labels, free for users, checked with the Kubernetes label rules.
	Labels map[string]string `json:"labels,omitempty"`
	// Annotations, free for users.
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Network is a logical network as a user declares it:
//
//	apiVersion: podvisor.io/v1alpha1
//	kind: Network
//	metadata: {name: frontend}
//	spec: {vlan: 120, cidr: 10.20.0.0/24, gateway: 10.20.0.1}
//
// network-config realizes it as the DVS port group pv-<name> on every host in
// scope.
type Network struct {
	// APIVersion must be podvisor.io/v1alpha1 when set.
	APIVersion string `json:"apiVersion,omitempty"`
	// Kind must be Network when set.
	Kind string `json:"kind,omitempty"`
	// Metadata holds the network name, a DNS-1123 label.
	Metadata Meta `json:"metadata"`
	// Spec is the desired state.
	Spec NetworkSpec `json:"spec"`
}

// NetworkSpec is the desired state of a logical network.
type NetworkSpec struct {
	// VLAN is the 802.1Q VLAN ID, 0 (untagged) to 4094.
	VLAN int `json:"vlan"`
	// CIDR is the IPv4 subnet pods get addresses from, for example
	// 10.20.0.0/24 (host bits must be zero).
	CIDR string `json:"cidr"`
	// Gateway is the router inside CIDR, if the network has one.
	Gateway string `json:"gateway,omitempty"`
	// Scope limits the hosts the network is realized on; empty means every
	// host.
	Scope NetworkScope `json:"scope,omitzero"`
	// Properties are the port group's settings.
	Properties NetworkProperties `json:"properties,omitzero"`
}

// Equal compares specs by meaning: scope lists in any order are equal, and
// an MTU of 0 is the default MTU.
func (s NetworkSpec) Equal(o NetworkSpec) bool {
	norm := func(s NetworkSpec) NetworkSpec {
		s.Scope.Clusters = slices.Sorted(slices.Values(s.Scope.Clusters))
		s.Scope.Hosts = slices.Sorted(slices.Values(s.Scope.Hosts))
		if s.Properties.MTU == 0 {
			s.Properties.MTU = DefaultMTU
		}
		return s
	}
	a, b := norm(s), norm(o)
	return a.VLAN == b.VLAN && a.CIDR == b.CIDR && a.Gateway == b.Gateway &&
		slices.Equal(a.Scope.Clusters, b.Scope.Clusters) && slices.Equal(a.Scope.Hosts, b.Scope.Hosts) &&
		a.Properties == b.Properties
}

// NetworkScope names the clusters and hosts a network reaches: a host is in
// scope if its cluster is listed or it is listed itself. Both empty means
// every host.
type NetworkScope struct {
	// Clusters whose every host is in scope.
	Clusters []string `json:"clusters,omitempty"`
	// Hosts in scope individually.
	Hosts []string `json:"hosts,omitempty"`
}

// All reports whether the scope is every host.
func (s NetworkScope) All() bool { return len(s.Clusters) == 0 && len(s.Hosts) == 0 }

// Includes reports whether a host of a cluster is in scope.
func (s NetworkScope) Includes(host, cluster string) bool {
	if s.All() {
		return true
	}
	for _, c := range s.Clusters {
		if c == cluster {
			return true
		}
	}
	for _, h := range s.Hosts {
		if h == host {
			return true
		}
	}
	return false
}

// NetworkProperties are the security and MTU settings of the port group.
// The zero value is vSphere's secure default: MTU 1500, everything rejected.
type NetworkProperties struct {
	// MTU of the network, 1280 to 9000; 0 means 1500.
	MTU int `json:"mtu,omitempty"`
	// AllowPromiscuous lets a NIC see traffic not addressed to it.
	AllowPromiscuous bool `json:"allowPromiscuous,omitempty"`
	// ForgedTransmits lets a NIC send with a source MAC other than its own.
	ForgedTransmits bool `json:"forgedTransmits,omitempty"`
	// MACChanges lets the guest change its NIC's MAC address.
	MACChanges bool `json:"macChanges,omitempty"`
}

// EffectiveMTU is MTU with the default applied.
func (p NetworkProperties) EffectiveMTU() int {
	if p.MTU == 0 {
		return DefaultMTU
	}
	return p.MTU
}

// PortGroupName is the DVS port group that realizes a logical network.
func PortGroupName(network string) string { return "pv-" + network }

// Validate checks the whole object; paths start at the object root
// (metadata.name, spec.cidr, ...).
func (n *Network) Validate() error { return asError(n.validate(nil)) }

func (n *Network) validate(p *field.Path) field.ErrorList {
	var errs field.ErrorList
	errs = append(errs, validateTypeMeta(p, n.APIVersion, n.Kind, APIVersion, KindNetwork)...)
	errs = append(errs, validateDNSLabel(p.Child("metadata", "name"), n.Metadata.Name)...)
	errs = append(errs, validateLabels(p.Child("metadata", "labels"), n.Metadata.Labels)...)
	errs = append(errs, n.Spec.validate(p.Child("spec"))...)
	return errs
}

func (s *NetworkSpec) validate(p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if s.VLAN < 0 || s.VLAN > MaxVLAN {
		errs = append(errs, field.Invalid(p.Child("vlan"), s.VLAN, "must be between 0 (untagged) and 4094"))
	}
	prefix, perrs := parseIPv4CIDR(p.Child("cidr"), s.CIDR)
	errs = append(errs, perrs...)
	if s.Gateway != "" {
		gp := p.Child("gateway")
		gw, err := netip.ParseAddr(s.Gateway)
		switch {
		case err != nil || !gw.Is4():
			errs = append(errs, field.Invalid(gp, s.Gateway, "must be an IPv4 address"))
		case prefix.IsValid() && !prefix.Contains(gw):
			errs = append(errs, field.Invalid(gp, s.Gateway, "must be inside cidr "+s.CIDR))
		case prefix.IsValid() && (gw == prefix.Addr() || gw == lastAddr(prefix)):
			errs = append(errs, field.Invalid(gp, s.Gateway, "must not be the network or broadcast address of cidr "+s.CIDR))
		}
	}
	errs = append(errs, validateNames(p.Child("scope", "clusters"), s.Scope.Clusters, validateObjectName)...)
	errs = append(errs, validateNames(p.Child("scope", "hosts"), s.Scope.Hosts, validateHostName)...)
	if m := s.Properties.MTU; m != 0 && (m < MinMTU || m > MaxMTU) {
		errs = append(errs, field.Invalid(p.Child("properties", "mtu"), m, "must be between 1280 and 9000"))
	}
	return errs
}

// parseIPv4CIDR accepts a subnet with room for at least two addresses and
// no host bits, and says which network was meant otherwise.
func parseIPv4CIDR(p *field.Path, s string) (netip.Prefix, field.ErrorList) {
	if s == "" {
		return netip.Prefix{}, field.ErrorList{field.Required(p, "an IPv4 subnet such as 10.20.0.0/24")}
	}
	prefix, err := netip.ParsePrefix(s)
	if err != nil || !prefix.Addr().Is4() {
		return netip.Prefix{}, field.ErrorList{field.Invalid(p, s, "must be an IPv4 subnet such as 10.20.0.0/24")}
	}
	if prefix.Masked() != prefix {
		return netip.Prefix{}, field.ErrorList{field.Invalid(p, s, "has host bits set; did you mean "+prefix.Masked().String()+"?")}
	}
	if prefix.Bits() > 30 {
		return netip.Prefix{}, field.ErrorList{field.Invalid(p, s, "must be /30 or larger to leave room for pod addresses")}
	}
	return prefix, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	hostBits := 32 - p.Bits()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= uint32(1)<<hostBits - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func validateTypeMeta(p *field.Path, apiVersion, kind, wantAPIVersion, wantKind string) field.ErrorList {
	var errs field.ErrorList
	if apiVersion != "" && apiVersion != wantAPIVersion {
		errs = append(errs, field.NotSupported(p.Child("apiVersion"), apiVersion, []string{wantAPIVersion}))
	}
	if kind != "" && kind != wantKind {
		errs = append(errs, field.NotSupported(p.Child("kind"), kind, []string{wantKind}))
	}
	return errs
}

// NetworkDeclared creates or changes a logical network. Any client may
// publish it; network-config stores it as a new version.
type NetworkDeclared struct {
	// Network is the declared object.
	Network Network `json:"network"`
}

// Validate checks the network; paths start at "network".
func (e *NetworkDeclared) Validate() error {
	return asError(e.Network.validate(field.NewPath("network")))
}

// ObjectKey is the network name.
func (e *NetworkDeclared) ObjectKey() string { return e.Network.Metadata.Name }

func validateVersion(p *field.Path, v int64) field.ErrorList {
	if v < 1 {
		return field.ErrorList{field.Invalid(p, v, "must be 1 or more")}
	}
	return nil
}

// NetworkRealized summarizes one version's rollout: every host in scope is in
// Ready or in Failed.
type NetworkRealized struct {
	// Name of the network.
	Name string `json:"name"`
	// Version that was rolled out.
	Version int64 `json:"version"`
	// Ready lists hosts where the port group matches the version.
	Ready []string `json:"ready,omitempty"`
	// Failed lists hosts where it could not be applied (see
	// network.host.failed for each reason).
	Failed []string `json:"failed,omitempty"`
}

// Validate checks the name, version and host lists.
func (e *NetworkRealized) Validate() error {
	errs := validateDNSLabel(field.NewPath("name"), e.Name)
	errs = append(errs, validateVersion(field.NewPath("version"), e.Version)...)
	errs = append(errs, validateNames(field.NewPath("ready"), e.Ready, validateHostName)...)
	errs = append(errs, validateNames(field.NewPath("failed"), e.Failed, validateHostName)...)
	ready := map[string]bool{}
	for _, h := range e.Ready {
		ready[h] = true
	}
	for i, h := range e.Failed {
		if ready[h] {
			errs = append(errs, field.Duplicate(field.NewPath("failed").Index(i), h))
		}
	}
	return asError(errs)
}

// ObjectKey is the network name.
func (e *NetworkRealized) ObjectKey() string { return e.Name }

// NetworkHostReady says a host carries a network version.
type NetworkHostReady struct {
	Name    string `json:"name"`
	Version int64  `json:"version"`
	// Host now carrying the network.
	Host string `json:"host"`
	// PortGroup realizing the network on the host.
	PortGroup string `json:"portGroup"`
}

// Validate checks the fields.
func (e *NetworkHostReady) Validate() error {
	errs := validateDNSLabel(field.NewPath("name"), e.Name)
	errs = append(errs, validateVersion(field.NewPath("version"), e.Version)...)
	errs = append(errs, validateHostName(field.NewPath("host"), e.Host)...)
	errs = append(errs, validatePortGroupName(field.NewPath("portGroup"), e.PortGroup)...)
	return asError(errs)
}

// ObjectKey is the network name.
func (e *NetworkHostReady) ObjectKey() string { return e.Name }

// NetworkHostFailed says a network version could not be applied to a host.
type NetworkHostFailed struct {
	Name    string `json:"name"`
	Version int64  `json:"version"`
	Host    string `json:"host"`
	// Reason is a CamelCase word: HostDisconnected, DVSJoinFailed,
	// ConnectivityLost, ...
	Reason string `json:"reason"`
	// Message explains for a person.
	Message string `json:"message"`
}

// Validate checks the fields.
func (e *NetworkHostFailed) Validate() error {
	errs := validateDNSLabel(field.NewPath("name"), e.Name)
	errs = append(errs, validateVersion(field.NewPath("version"), e.Version)...)
	errs = append(errs, validateHostName(field.NewPath("host"), e.Host)...)
	errs = append(errs, validateFailure(e.Reason, e.Message)...)
	return asError(errs)
}

// ObjectKey is the network name.
func (e *NetworkHostFailed) ObjectKey() string { return e.Name }

// NetworkRolledBack says hosts were returned to an earlier version because
// the newer one broke them (typically lost management connectivity).
type NetworkRolledBack struct {
	Name string `json:"name"`
	// FromVersion is the version that was undone.
	FromVersion int64 `json:"fromVersion"`
	// ToVersion is the last good version now applied (0: the network was
	// removed from those hosts because no earlier version existed).
	ToVersion int64 `json:"toVersion"`
	// Hosts rolled back.
	Hosts []string `json:"hosts"`
	// Reason is a CamelCase word: ConnectivityLost, ...
	Reason string `json:"reason"`
	// Message explains for a person.
	Message string `json:"message,omitempty"`
}

// Validate checks the fields.
func (e *NetworkRolledBack) Validate() error {
	errs := validateDNSLabel(field.NewPath("name"), e.Name)
	errs = append(errs, validateVersion(field.NewPath("fromVersion"), e.FromVersion)...)
	if e.ToVersion < 0 || e.ToVersion >= e.FromVersion {
		errs = append(errs, field.Invalid(field.NewPath("toVersion"), e.ToVersion, "must be between 0 and fromVersion-1"))
	}
	if len(e.Hosts) == 0 {
		errs = append(errs, field.Required(field.NewPath("hosts"), ""))
	}
	errs = append(errs, validateNames(field.NewPath("hosts"), e.Hosts, validateHostName)...)
	errs = append(errs, validateReason(field.NewPath("reason"), e.Reason)...)
	return asError(errs)
}

// ObjectKey is the network name.
func (e *NetworkRolledBack) ObjectKey() string { return e.Name }

// NetworkRestoreRequested asks to make an earlier version the desired state
// again (it is stored as a new version with the old spec).
type NetworkRestoreRequested struct {
	Name string `json:"name"`
	// Version to restore.
	Version int64 `json:"version"`
}

// Validate checks the fields.
func (e *NetworkRestoreRequested) Validate() error {
	errs := validateDNSLabel(field.NewPath("name"), e.Name)
	errs = append(errs, validateVersion(field.NewPath("version"), e.Version)...)
	return asError(errs)
}

// ObjectKey is the network name.
func (e *NetworkRestoreRequested) ObjectKey() string { return e.Name }

// NetworkDeleteRequested asks to delete a network. network-config refuses
// it with NetworkDeleteRejected while pods use the network.
type NetworkDeleteRequested struct {
	Name string `json:"name"`
}

// Validate checks the name.
func (e *NetworkDeleteRequested) Validate() error {
	return asError(validateDNSLabel(field.NewPath("name"), e.Name))
}

// ObjectKey is the network name.
func (e *NetworkDeleteRequested) ObjectKey() string { return e.Name }

// NetworkDeleteRejected says a network was not deleted and why.
type NetworkDeleteRejected struct {
	Name string `json:"name"`
	// Reason is a CamelCase word: InUse, NotFound, ...
	Reason string `json:"reason"`
	// Message explains for a person.
	Message string `json:"message"`
	// Pods are the keys (<namespace>/<name>) of pods still using the network
	// when Reason is InUse.
	Pods []string `json:"pods,omitempty"`
}

// Validate checks the fields.
func (e *NetworkDeleteRejected) Validate() error {
	errs := validateDNSLabel(field.NewPath("name"), e.Name)
	errs = append(errs, validateFailure(e.Reason, e.Message)...)
	for i, k := range e.Pods {
		if _, _, err := SplitPodKey(k); err != nil {
			errs = append(errs, field.Invalid(field.NewPath("pods").Index(i), k, "must be <namespace>/<name>"))
		}
	}
	return asError(errs)
}

// ObjectKey is the network name.
func (e *NetworkDeleteRejected) ObjectKey() string { return e.Name }

// NetworkDeleted says the network and its port groups are gone.
type NetworkDeleted struct {
	Name string `json:"name"`
}

// Validate checks the name.
func (e *NetworkDeleted) Validate() error {
	return asError(validateDNSLabel(field.NewPath("name"), e.Name))
}

// ObjectKey is the network name.
func (e *NetworkDeleted) ObjectKey() string { return e.Name }

// trimSplit splits a comma-separated list and trims each element.
func trimSplit(s string) []string {
	parts := strings.Split(s, ",")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts
}
