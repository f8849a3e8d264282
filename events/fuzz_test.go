package events

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// The fuzz targets run in CI for a fixed time each (.ci/run); the seeds are
// the samples in testdata, so mutation starts from real events and
// manifests.

// FuzzDecode: no input makes Decode panic, and what it accepts survives a
// JSON round trip and decodes again (a payload the bus carried once can be
// carried again).
func FuzzDecode(f *testing.F) {
	kinds := Kinds()
	files, _ := filepath.Glob(filepath.Join("testdata", "*.json"))
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		ceType := strings.TrimSuffix(filepath.Base(file), ".json")
		for i, k := range kinds {
			if k.Type == ceType {
				f.Add(uint8(i), data)
			}
		}
	}
	f.Fuzz(func(t *testing.T, kind uint8, data []byte) {
		k := kinds[int(kind)%len(kinds)]
		v, err := Decode(k.Type, data)
		if err != nil {
			return
		}
		again, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("accepted %s does not encode: %v", k.Type, err)
		}
		if _, err := Decode(k.Type, again); err != nil {
			t.Fatalf("accepted %s does not decode after a round trip: %v\nin:  %s\nout: %s", k.Type, err, data, again)
		}
	})
}

// FuzzDecodeObjects: manifests (the YAML or JSON a user applies) never make
// the decoder or the validators panic.
func FuzzDecodeObjects(f *testing.F) {
	f.Add([]byte("apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: a, image: r/x:1, resources: {requests: {cpu: 500m, memory: 256Mi}}}]}\n"))
	f.Add([]byte("apiVersion: podvisor.io/v1alpha1\nkind: Network\nmetadata: {name: frontend}\nspec: {vlan: 120, cidr: 10.20.0.0/24, scope: {clusters: [cluster-1]}}\n---\n" +
		"apiVersion: podvisor.io/v1alpha1\nkind: Migration\nmetadata: {name: m}\nspec: {pod: default/web, to: esx-1-01}\n"))
	f.Add([]byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x","uid":"u"},"spec":{"containers":[{"name":"c","image":"i"}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := DecodeObjects(bytes.NewReader(data))
		if err != nil {
			return
		}
		for _, o := range objs {
			switch {
			case o.Pod != nil:
				_ = (&PodRequested{Pod: *o.Pod}).Validate()
			case o.Network != nil:
				_ = (&NetworkDeclared{Network: *o.Network}).Validate()
			}
		}
	})
}

// FuzzNetworkSpec: whatever VLAN, CIDR and gateway a client declares, an
// accepted spec is an IPv4 subnet of /30 or larger with zero host bits, a
// VLAN from 0 to 4094 and a gateway inside the subnet.
func FuzzNetworkSpec(f *testing.F) {
	f.Add(120, "10.20.0.0/24", "10.20.0.1")
	f.Add(0, "192.168.0.0/16", "")
	f.Add(4095, "10.20.0.0/31", "10.20.0.1")
	f.Add(-1, "fd00::/64", "fd00::1")
	f.Add(7, "10.0.0.1/24", "10.0.1.1")
	f.Fuzz(func(t *testing.T, vlan int, cidr, gateway string) {
		s := NetworkSpec{VLAN: vlan, CIDR: cidr, Gateway: gateway}
		if errs := s.validate(field.NewPath("spec")); len(errs) > 0 {
			return
		}
		if vlan < 0 || vlan > 4094 {
			t.Fatalf("VLAN %d accepted", vlan)
		}
		p, err := netip.ParsePrefix(cidr)
		if err != nil || !p.Addr().Is4() || p.Bits() > 30 || p.Masked() != p {
			t.Fatalf("CIDR %q accepted", cidr)
		}
		if gateway != "" {
			g, err := netip.ParseAddr(gateway)
			if err != nil || !p.Contains(g) {
				t.Fatalf("gateway %q outside %s accepted", gateway, cidr)
			}
		}
	})
}
