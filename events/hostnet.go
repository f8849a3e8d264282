package events

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Final-state push. network-config sends each host, in parallel, one
// network.host.desired: every port group the host must carry, whole. The
// host agent compares it with what the host really has, applies only the
// difference and reports it with network.host.applied. Sending the final
// state rather than changes makes a lost, repeated or reordered message
// harmless: the next one says everything again.

// HostPortGroup is one port group a host must carry.
type HostPortGroup struct {
	// Network is the logical network.
	Network string `json:"network"`
	// PortGroup is its distributed port group (pv-<network>).
	PortGroup string `json:"portGroup"`
	// Key is the port group's key in vCenter (what a host's switch
	// proxy, and the simulated datacenter's segments, know it by).
	Key string `json:"key"`
	// Switch carrying the port group.
	Switch string `json:"switch,omitempty"`
	// VLAN and MTU of the network's current version.
	VLAN int `json:"vlan"`
	MTU  int `json:"mtu,omitempty"`
	// Version of the network this state is of.
	Version int64 `json:"version"`
}

// NetworkHostDesired is the final desired network state of one host.
type NetworkHostDesired struct {
	// Host the state is for.
	Host string `json:"host"`
	// Digest fingerprints PortGroups (HostStateDigest): equal digests,
	// equal states.
	Digest string `json:"digest"`
	// PortGroups the host must carry, sorted by port group; any other
	// podvisor port group must go.
	PortGroups []HostPortGroup `json:"portGroups"`
}

// HostStateDigest fingerprints a host's desired port groups.
func HostStateDigest(pgs []HostPortGroup) string {
	sorted := slices.Clone(pgs)
	slices.SortFunc(sorted, func(a, b HostPortGroup) int { return strings.Compare(a.PortGroup, b.PortGroup) })
	data, _ := json.Marshal(sorted)
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Validate checks the host, the digest and every port group.
func (e *NetworkHostDesired) Validate() error {
	errs := validateHostName(field.NewPath("host"), e.Host)
	if e.Digest != HostStateDigest(e.PortGroups) {
		errs = append(errs, field.Invalid(field.NewPath("digest"), e.Digest, "must be HostStateDigest(portGroups)"))
	}
	seen := map[string]bool{}
	for i, pg := range e.PortGroups {
		p := field.NewPath("portGroups").Index(i)
		errs = append(errs, validateDNSLabel(p.Child("network"), pg.Network)...)
		errs = append(errs, validatePortGroupName(p.Child("portGroup"), pg.PortGroup)...)
		errs = append(errs, required(p.Child("key"), pg.Key)...)
		if pg.VLAN < 0 || pg.VLAN > MaxVLAN {
			errs = append(errs, field.Invalid(p.Child("vlan"), pg.VLAN, "must be between 0 and 4094"))
		}
		errs = append(errs, validateVersion(p.Child("version"), pg.Version)...)
		if seen[pg.Key] {
			errs = append(errs, field.Duplicate(p.Child("key"), pg.Key))
		}
		seen[pg.Key] = true
	}
	return asError(errs)
}

// ObjectKey is the host name.
func (e *NetworkHostDesired) ObjectKey() string { return e.Host }

// PortGroupFailure is a port group a host could not bring to its desired
// state.
type PortGroupFailure struct {
	PortGroup string `json:"portGroup"`
	// Reason is a CamelCase word; Message explains it.
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// NetworkHostApplied reports what a host agent changed to reach a desired
// state: only the differences, by port group name.
type NetworkHostApplied struct {
	Host string `json:"host"`
	// Digest of the desired state applied.
	Digest string `json:"digest"`
	// Added: port groups the host did not carry and now does.
	Added []string `json:"added,omitempty"`
	// Removed: podvisor port groups the host carried and no longer does.
	Removed []string `json:"removed,omitempty"`
	// Unchanged counts the port groups that already matched.
	Unchanged int `json:"unchanged"`
	// Failed lists what could not be applied.
	Failed []PortGroupFailure `json:"failed,omitempty"`
}

// Validate checks the host, the digest and the failures.
func (e *NetworkHostApplied) Validate() error {
	errs := validateHostName(field.NewPath("host"), e.Host)
	errs = append(errs, required(field.NewPath("digest"), e.Digest)...)
	if e.Unchanged < 0 {
		errs = append(errs, field.Invalid(field.NewPath("unchanged"), e.Unchanged, "must not be negative"))
	}
	for i, f := range e.Failed {
		p := field.NewPath("failed").Index(i)
		errs = append(errs, required(p.Child("portGroup"), f.PortGroup)...)
		errs = append(errs, validateReason(p.Child("reason"), f.Reason)...)
	}
	return asError(errs)
}

// ObjectKey is the host name.
func (e *NetworkHostApplied) ObjectKey() string { return e.Host }

// IsNetworkPortGroup reports whether a port group name is one podvisor
// makes for a logical network (pv-<network>, the network a DNS label);
// a switch's own uplink port group (pv-dvs-DVUplinks-N) is not.
func IsNetworkPortGroup(name string) bool {
	return len(validatePortGroupName(field.NewPath("portGroup"), name)) == 0
}
