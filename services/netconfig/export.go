package netconfig

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"sigs.k8s.io/yaml"

	"github.com/podvisor/podvisor/events"
)

// Annotations an exported network carries, so a file says where it came
// from. They are informational: importing the file declares its spec.
const (
	AnnotationExportedVersion = "podvisor.io/exported-version"
	AnnotationExportedAt      = "podvisor.io/exported-at"
)

// DefaultNetwork is the spec of the network `podvisor up` declares on every
// host at start (name events.DefaultNetwork): pods without a
// podvisor.io/networks annotation attach to it. Declaring it again with the
// same spec stores no new version, so every start may declare it.
func DefaultNetwork() events.NetworkSpec {
	return events.NetworkSpec{VLAN: 0, CIDR: "10.88.0.0/16", Gateway: "10.88.0.1"}
}

// DefaultNetworkDeclared is the network.declared payload of DefaultNetwork,
// ready to publish (subject: events.DefaultNetwork).
func DefaultNetworkDeclared() *events.NetworkDeclared {
	return &events.NetworkDeclared{Network: events.Network{
		APIVersion: events.APIVersion,
		Kind:       events.KindNetwork,
		Metadata:   events.Meta{Name: events.DefaultNetwork},
		Spec:       DefaultNetwork(),
	}}
}

// Export renders one stored version of a network (0 = the current one) as
// a Network manifest, the same format `podvisor apply -f` reads. The file
// is a snapshot independent of the management plane: it holds the whole
// desired state, so it can be applied to a rebuilt vCenter or another
// podvisor installation, and it outlives the bounded history.
func Export(rec *events.NetworkRecord, version int64) ([]byte, error) {
	if version == 0 {
		version = rec.Version
	}
	v, ok := rec.FindVersion(version)
	if !ok && version == rec.Version && version > 0 {
		v, ok = events.NetworkVersion{Version: version, Spec: rec.Spec}, true
	}
	if !ok {
		return nil, fmt.Errorf("export network %s: version %d is not stored", rec.Name, version)
	}
	n := events.Network{
		APIVersion: events.APIVersion,
		Kind:       events.KindNetwork,
		Metadata: events.Meta{Name: rec.Name, Annotations: map[string]string{
			AnnotationExportedVersion: strconv.FormatInt(v.Version, 10),
			AnnotationExportedAt:      time.Now().UTC().Format(time.RFC3339),
		}},
		Spec: v.Spec,
	}
	return yaml.Marshal(n)
}

// ExportFromKV reads a network from the `networks` bucket and exports one
// version (0 = current). It needs only the bus, not vCenter.
func ExportFromKV(ctx context.Context, networks jetstream.KeyValue, name string, version int64) ([]byte, error) {
	rec, _, err := newStore(networks, nil, nil).get(ctx, name)
	if err != nil {
		return nil, err
	}
	if rec == nil {
		return nil, fmt.Errorf("export network %s: %w", name, ErrNetworkNotFound)
	}
	return Export(rec, version)
}

// Import reads an exported (or hand-written) Network manifest strictly and
// validates it, returning the network.declared payload that re-applies it.
func Import(data []byte) (*events.NetworkDeclared, error) {
	var n events.Network
	if err := yaml.UnmarshalStrict(data, &n); err != nil {
		return nil, fmt.Errorf("import network: %w", err)
	}
	if err := n.Validate(); err != nil {
		return nil, fmt.Errorf("import network %s: %w", n.Metadata.Name, err)
	}
	if n.Kind == "" {
		return nil, errors.New("import network: kind: required (Network)")
	}
	return &events.NetworkDeclared{Network: n}, nil
}
