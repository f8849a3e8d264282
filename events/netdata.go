package events

import (
	"encoding/base64"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// BucketNetData holds network-config's opaque pass-through data: one
// NetworkDataRecord per object that carries data (keyed by
// NetworkDataKey) and the registered namespaces (key
// NetworkDataNamespacesKey). Host agents read it and deliver each value to
// the module registered for its namespace.
const BucketNetData = "net-data"

// NetworkDataNamespacesKey is the key of the NetworkDataNamespaces record.
const NetworkDataNamespacesKey = "_namespaces"

// Objects that carry pass-through data (NetworkDataScope.Kind). A value set
// on a switch is inherited by its port groups and their ports, one set on a
// port group by its ports, unless the narrower object sets the same key.
const (
	NetworkDataSwitch    = "switch"
	NetworkDataPortGroup = "portgroup"
	NetworkDataPort      = "port"
	NetworkDataHost      = "host"
)

// NetworkDataKinds lists the scope kinds, widest first.
var NetworkDataKinds = []string{NetworkDataSwitch, NetworkDataPortGroup, NetworkDataPort, NetworkDataHost}

// MaxNetworkDataValue bounds one value: the channel carries settings, not
// payloads.
const MaxNetworkDataValue = 4096

// NetworkDataScope names the object data is attached to. Name is the
// switch's or port group's vCenter name, the host's name, or for a port
// the pod's port on a network: <network>/<namespace>/<pod> (PortName).
type NetworkDataScope struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
}

// PortName names a pod's port on a network as a data scope.
func PortName(network, namespace, pod string) string { return network + "/" + namespace + "/" + pod }

// String is kind/name.
func (s NetworkDataScope) String() string { return s.Kind + " " + s.Name }

func (s NetworkDataScope) validate(p *field.Path) field.ErrorList {
	var errs field.ErrorList
	switch s.Kind {
	case NetworkDataSwitch, NetworkDataPortGroup:
		errs = append(errs, validateObjectName(p.Child("name"), s.Name)...)
	case NetworkDataHost:
		errs = append(errs, validateHostName(p.Child("name"), s.Name)...)
	case NetworkDataPort:
		parts := strings.Split(s.Name, "/")
		if len(parts) != 3 {
			errs = append(errs, field.Invalid(p.Child("name"), s.Name, "a port is <network>/<namespace>/<pod>"))
			break
		}
		for _, part := range parts {
			errs = append(errs, validateDNSLabel(p.Child("name"), part)...)
		}
	case "":
		errs = append(errs, field.Required(p.Child("kind"), strings.Join(NetworkDataKinds, ", ")))
	default:
		errs = append(errs, field.NotSupported(p.Child("kind"), s.Kind, NetworkDataKinds))
	}
	return errs
}

// NetworkDataKey is the KV key of the record of an object's data (KV keys
// allow few characters, so the name is base64url-encoded).
func NetworkDataKey(s NetworkDataScope) string {
	return s.Kind + "." + base64.RawURLEncoding.EncodeToString([]byte(s.Name))
}

func validateDataNamespace(p *field.Path, v string) field.ErrorList {
	errs := validateDNSSubdomain(p, v)
	if len(errs) == 0 && strings.Contains(v, "/") {
		errs = append(errs, field.Invalid(p, v, "must not contain '/'"))
	}
	return errs
}

// validateDatum checks where a set or remove request points: the object,
// the namespace and the key.
func validateDatum(scope NetworkDataScope, namespace, key string) field.ErrorList {
	errs := scope.validate(field.NewPath("scope"))
	errs = append(errs, validateDataNamespace(field.NewPath("namespace"), namespace)...)
	return append(errs, validateToken(field.NewPath("key"), key, true)...)
}

// NetworkDataRegisterRequested registers a namespace for a management
// application; data in unregistered namespaces is refused.
type NetworkDataRegisterRequested struct {
	// Namespace, a DNS subdomain such as firewall.acme.example.
	Namespace string `json:"namespace"`
	// Owner names the management application.
	Owner string `json:"owner,omitempty"`
	// Description for a person.
	Description string `json:"description,omitempty"`
}

// Validate checks the fields.
func (e *NetworkDataRegisterRequested) Validate() error {
	errs := validateDataNamespace(field.NewPath("namespace"), e.Namespace)
	if len(e.Description) > 1024 {
		errs = append(errs, field.TooLong(field.NewPath("description"), "", 1024))
	}
	return asError(errs)
}

// ObjectKey is the namespace.
func (e *NetworkDataRegisterRequested) ObjectKey() string { return e.Namespace }

// NetworkDataSetRequested attaches <namespace>/<key> = value to an object.
type NetworkDataSetRequested struct {
	Scope     NetworkDataScope `json:"scope"`
	Namespace string           `json:"namespace"`
	Key       string           `json:"key"`
	Value     string           `json:"value"`
}

// Validate checks the fields.
func (e *NetworkDataSetRequested) Validate() error {
	errs := validateDatum(e.Scope, e.Namespace, e.Key)
	if len(e.Value) > MaxNetworkDataValue {
		errs = append(errs, field.TooLong(field.NewPath("value"), "", MaxNetworkDataValue))
	}
	return asError(errs)
}

// ObjectKey is the scope.
func (e *NetworkDataSetRequested) ObjectKey() string { return e.Scope.Kind + "/" + e.Scope.Name }

// NetworkDataRemoveRequested removes <namespace>/<key> from an object (the
// object then inherits the key again, if a wider one sets it).
type NetworkDataRemoveRequested struct {
	Scope     NetworkDataScope `json:"scope"`
	Namespace string           `json:"namespace"`
	Key       string           `json:"key"`
}

// Validate checks the fields.
func (e *NetworkDataRemoveRequested) Validate() error {
	return asError(validateDatum(e.Scope, e.Namespace, e.Key))
}

// ObjectKey is the scope.
func (e *NetworkDataRemoveRequested) ObjectKey() string { return e.Scope.Kind + "/" + e.Scope.Name }

// NetworkDataNamespaces is the record of registered namespaces.
type NetworkDataNamespaces struct {
	Namespaces map[string]NetworkDataNamespace `json:"namespaces"`
	UpdatedAt  time.Time                       `json:"updatedAt"`
}

// NetworkDataNamespace is one registration.
type NetworkDataNamespace struct {
	Owner        string    `json:"owner,omitempty"`
	Description  string    `json:"description,omitempty"`
	RegisteredAt time.Time `json:"registeredAt"`
}

// NetworkDataRecord is the data attached to one object: values by
// "<namespace>/<key>".
type NetworkDataRecord struct {
	Scope     NetworkDataScope  `json:"scope"`
	Values    map[string]string `json:"values"`
	UpdatedAt time.Time         `json:"updatedAt"`
}

// NetworkDataValue is an effective value and the object it comes from.
type NetworkDataValue struct {
	Value string           `json:"value"`
	From  NetworkDataScope `json:"from"`
}

// EffectiveNetworkData merges records from the widest object to the
// narrowest (switch, port group, port): a narrower object's value for a
// key overrides the wider one's. nil records are skipped.
func EffectiveNetworkData(widestFirst ...*NetworkDataRecord) map[string]NetworkDataValue {
	out := map[string]NetworkDataValue{}
	for _, r := range widestFirst {
		if r == nil {
			continue
		}
		for k, v := range r.Values {
			out[k] = NetworkDataValue{Value: v, From: r.Scope}
		}
	}
	return out
}

// SortedKeys lists the keys of effective data in order.
func SortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
