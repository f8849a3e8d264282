package netconfig

import (
	"strings"
	"testing"

	"github.com/podvisor/podvisor/events"
)

func TestSwitchForScope(t *testing.T) {
	s := &Service{cfg: DefaultConfig()}
	all := s.switchFor(events.NetworkScope{})
	if all != "pv-dvs" {
		t.Fatalf("all-hosts switch = %s, want pv-dvs", all)
	}
	a := s.switchFor(events.NetworkScope{Clusters: []string{"c1", "c2"}, Hosts: []string{"h9"}})
	b := s.switchFor(events.NetworkScope{Clusters: []string{"c2", "c1"}, Hosts: []string{"h9"}})
	c := s.switchFor(events.NetworkScope{Clusters: []string{"c1"}})
	d := s.switchFor(events.NetworkScope{Hosts: []string{"c1"}}) // a host named like a cluster is another scope
	if a != b {
		t.Errorf("same scope in another order gave %s and %s", a, b)
	}
	if a == c || c == d || !strings.HasPrefix(c, "pv-dvs-") {
		t.Errorf("distinct scopes share a switch or misnamed: %s %s %s", a, c, d)
	}
}

func TestPortGroupDescriptionRoundTrip(t *testing.T) {
	spec := events.NetworkSpec{VLAN: 7, CIDR: "10.0.0.0/24", Properties: events.NetworkProperties{MTU: 9000, ForgedTransmits: true}}
	pg := portGroupSpec("frontend", 4, spec)
	if pg.Name != "pv-frontend" || pg.VLAN != 7 || pg.MTU != 9000 || pg.ForgedTransmits == nil || pg.AllowPromiscuous != nil {
		t.Fatalf("portGroupSpec = %+v", pg)
	}
	n, v, ok := ParseDescription(pg.Description)
	if !ok || n != "frontend" || v != 4 {
		t.Fatalf("ParseDescription(%q) = %s %d %v", pg.Description, n, v, ok)
	}
	if _, _, ok := ParseDescription("VM Network"); ok {
		t.Fatal("ParseDescription accepted a foreign description")
	}
}

func TestSpecEqual(t *testing.T) {
	base := events.NetworkSpec{VLAN: 1, CIDR: "10.0.0.0/24", Scope: events.NetworkScope{Clusters: []string{"a", "b"}}}
	tests := []struct {
		name string
		b    events.NetworkSpec
		want bool
	}{
		{"identical", base, true},
		{"scope order", events.NetworkSpec{VLAN: 1, CIDR: "10.0.0.0/24", Scope: events.NetworkScope{Clusters: []string{"b", "a"}}}, true},
		{"explicit default mtu", events.NetworkSpec{VLAN: 1, CIDR: "10.0.0.0/24", Scope: base.Scope, Properties: events.NetworkProperties{MTU: 1500}}, true},
		{"vlan", events.NetworkSpec{VLAN: 2, CIDR: "10.0.0.0/24", Scope: base.Scope}, false},
		{"scope", events.NetworkSpec{VLAN: 1, CIDR: "10.0.0.0/24"}, false},
		{"property", events.NetworkSpec{VLAN: 1, CIDR: "10.0.0.0/24", Scope: base.Scope, Properties: events.NetworkProperties{MACChanges: true}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := base.Equal(tt.b); got != tt.want {
				t.Fatalf("Equal = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestImportRejectsBadFiles(t *testing.T) {
	tests := []struct {
		name, file, want string
	}{
		{"unknown field", "apiVersion: podvisor.io/v1alpha1\nkind: Network\nmetadata: {name: a}\nspec: {vlan: 1, cidr: 10.0.0.0/24, colour: red}\n", "colour"},
		{"bad vlan", "apiVersion: podvisor.io/v1alpha1\nkind: Network\nmetadata: {name: a}\nspec: {vlan: 5000, cidr: 10.0.0.0/24}\n", "spec.vlan"},
		{"no kind", "metadata: {name: a}\nspec: {vlan: 1, cidr: 10.0.0.0/24}\n", "kind"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Import([]byte(tt.file))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Import: %v, want an error naming %q", err, tt.want)
			}
		})
	}
}

func TestDefaultNetworkIsValid(t *testing.T) {
	d := DefaultNetworkDeclared()
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	if d.ObjectKey() != events.DefaultNetwork || !DefaultNetwork().Scope.All() {
		t.Fatalf("DefaultNetworkDeclared = %+v, want %s on every host", d, events.DefaultNetwork)
	}
}
