package events

import (
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// KindNetworkService is the kind of a network service definition.
const KindNetworkService = "NetworkService"

// Network service types network-config knows how to configure.
const (
	// NetworkServiceDNS answers <pod>.<namespace>.<DNSDomain> with the
	// pod's address on the network the question arrives on.
	NetworkServiceDNS = "dns"
)

// DNSDomain is the zone the DNS service answers: pod names are
// <pod>.<namespace>.pod.podvisor.local.
const DNSDomain = "pod.podvisor.local"

// BucketNetServices holds one NetworkServiceRecord per NetworkService,
// keyed by its name. network-config writes it; host agents read it to
// serve the service on the networks of their host.
const BucketNetServices = "net-services"

// NetworkService registers a service definition that network-config
// configures on the networks it serves:
//
//	apiVersion: podvisor.io/v1alpha1
//	kind: NetworkService
//	metadata: {name: pod-dns}
//	spec: {type: dns, networks: [default, frontend]}
//
// network-config gives the service an address on each network (a service
// profile) and hands the profiles to the host agents of the hosts where the
// networks are realized, which serve it there; pods attached afterwards are
// told the address (their resolv.conf names it).
type NetworkService struct {
	APIVersion string             `json:"apiVersion,omitempty"`
	Kind       string             `json:"kind,omitempty"`
	Metadata   Meta               `json:"metadata"`
	Spec       NetworkServiceSpec `json:"spec"`
}

// NetworkServiceSpec is what the service is and where it runs.
type NetworkServiceSpec struct {
	// Type is the service: dns.
	Type string `json:"type"`
	// Networks the service serves (at least one; names of logical networks).
	Networks []string `json:"networks"`
}

// Validate checks the whole object; paths start at the object root.
func (s *NetworkService) Validate() error { return asError(s.validate(nil)) }

func (s *NetworkService) validate(p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if s.APIVersion != "" && s.APIVersion != APIVersion {
		errs = append(errs, field.Invalid(p.Child("apiVersion"), s.APIVersion, "must be "+APIVersion))
	}
	if s.Kind != "" && s.Kind != KindNetworkService {
		errs = append(errs, field.Invalid(p.Child("kind"), s.Kind, "must be "+KindNetworkService))
	}
	errs = append(errs, validateDNSLabel(p.Child("metadata", "name"), s.Metadata.Name)...)
	errs = append(errs, validateLabels(p.Child("metadata", "labels"), s.Metadata.Labels)...)
	sp := p.Child("spec")
	switch s.Spec.Type {
	case NetworkServiceDNS:
	case "":
		errs = append(errs, field.Required(sp.Child("type"), "the service: dns"))
	default:
		errs = append(errs, field.NotSupported(sp.Child("type"), s.Spec.Type, []string{NetworkServiceDNS}))
	}
	if len(s.Spec.Networks) == 0 {
		errs = append(errs, field.Required(sp.Child("networks"), "the networks the service serves"))
	}
	errs = append(errs, validateNames(sp.Child("networks"), s.Spec.Networks, validateDNSLabel)...)
	return errs
}

// NetworkServiceDeclared registers (or updates) a network service; a client
// publishes it (podvisor apply -f).
type NetworkServiceDeclared struct {
	Service NetworkService `json:"service"`
}

// Validate checks the fields.
func (e *NetworkServiceDeclared) Validate() error {
	return asError(e.Service.validate(field.NewPath("service")))
}

// ObjectKey is the service name.
func (e *NetworkServiceDeclared) ObjectKey() string { return e.Service.Metadata.Name }

// NetworkServiceDeleteRequested asks network-config to remove a network
// service: its addresses go back to the networks' pools and the host
// agents stop serving it.
type NetworkServiceDeleteRequested struct {
	Name string `json:"name"`
}

// Validate checks the name.
func (e *NetworkServiceDeleteRequested) Validate() error {
	return asError(validateDNSLabel(field.NewPath("name"), e.Name))
}

// ObjectKey is the service name.
func (e *NetworkServiceDeleteRequested) ObjectKey() string { return e.Name }

// Statuses of a network service (NetworkServiceRecord.Status).
const (
	// NetworkServiceReady: every network of the spec has a profile.
	NetworkServiceReady = "Ready"
	// NetworkServicePartial: some networks of the spec could not get one
	// (unknown network, no free address); Message says which and why.
	NetworkServicePartial = "Partial"
	// NetworkServicePending: no network of the spec has a profile, so
	// nothing is served yet; Reason and Message say which are missing.
	NetworkServicePending = "Pending"
)

// NetworkServiceRecord is network-config's record of a network service (KV
// `net-services`): the definition and one profile per network it serves.
type NetworkServiceRecord struct {
	Name string             `json:"name"`
	Spec NetworkServiceSpec `json:"spec"`
	// Profiles, one per network the service is configured on, sorted by
	// network.
	Profiles []ServiceProfile `json:"profiles"`
	Status   string           `json:"status"`
	Reason   string           `json:"reason,omitempty"`
	Message  string           `json:"message,omitempty"`
	// UpdatedAt is when the record was last written.
	UpdatedAt time.Time `json:"updatedAt"`
}

// Profile returns the profile of a network.
func (r *NetworkServiceRecord) Profile(network string) (ServiceProfile, bool) {
	for _, p := range r.Profiles {
		if p.Network == network {
			return p, true
		}
	}
	return ServiceProfile{}, false
}

// ServiceProfile is a service as configured on one network: the address
// the hosts carrying the network answer on, and what they serve.
type ServiceProfile struct {
	// Service name and Type (dns).
	Service string `json:"service"`
	Type    string `json:"type"`
	// Network and its PortGroup.
	Network   string `json:"network"`
	PortGroup string `json:"portGroup"`
	// Address is the service's IPv4 address on the network, reserved in
	// IPAM so that no pod gets it; PrefixLength is the network's.
	Address      string `json:"address"`
	PrefixLength int    `json:"prefixLength"`
	// Port the service listens on (53 for dns).
	Port int `json:"port"`
	// Domain the DNS service answers (DNSDomain).
	Domain string `json:"domain,omitempty"`
}

// String names the profile in logs and messages.
func (p ServiceProfile) String() string {
	return fmt.Sprintf("%s (%s) on %s at %s:%d", p.Service, p.Type, p.Network, p.Address, p.Port)
}
