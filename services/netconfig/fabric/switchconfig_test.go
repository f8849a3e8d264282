package fabric_test

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/podvisor/podvisor/services/netconfig/fabric"
)

// The realized configuration of a switch is read back from vCenter, goes
// through a file, and re-creates the switch on another datacenter (a new
// switch) and repairs a drifted one (an existing switch).
func TestSwitchExportImportRoundTrip(t *testing.T) {
	ctx := context.Background()
	f, _ := newFabric(t)
	if _, err := f.EnsureSwitch(ctx, "pv-dvs-a", 9000); err != nil {
		t.Fatal(err)
	}
	specs := []fabric.PortGroupSpec{
		{Name: "pv-web", VLAN: 120, Description: "podvisor network web version 2 mtu 1500", AllowPromiscuous: ptr(true)},
		{Name: "pv-db", VLAN: 130, Description: "podvisor network db version 1 mtu 9000"},
	}
	for _, s := range specs {
		if _, err := f.EnsurePortGroup(ctx, "pv-dvs-a", s); err != nil {
			t.Fatal(err)
		}
	}
	hosts, err := f.Hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Join(ctx, "pv-dvs-a", hosts[1].Ref); err != nil {
		t.Fatal(err)
	}

	cfg, err := f.ExportSwitch(ctx, "pv-dvs-a")
	if err != nil {
		t.Fatal(err)
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var back fabric.SwitchConfig
	if err := yaml.UnmarshalStrict(data, &back); err != nil {
		t.Fatalf("the exported file does not read back: %v\n%s", err, data)
	}
	if back.MaxMTU != 9000 || !slices.Equal(back.Hosts, []string{hosts[1].Name}) || len(back.PortGroups) != 2 ||
		back.PortGroups[0].Name != "pv-db" || back.PortGroups[1].VLAN != 120 || back.PortGroups[1].AllowPromiscuous == nil {
		t.Fatalf("exported %s", data)
	}

	// A new switch on another datacenter.
	g, _ := newFabric(t)
	res, err := g.ImportSwitch(ctx, &back, "restored", true)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Created || len(res.PortGroups) != 2 || !slices.Equal(res.Joined, []string{hosts[1].Name}) {
		t.Fatalf("import onto a new switch: %+v", res)
	}
	again, err := g.ExportSwitch(ctx, "restored")
	if err != nil {
		t.Fatal(err)
	}
	if again.MaxMTU != back.MaxMTU || !slices.Equal(again.Hosts, back.Hosts) || !reflect.DeepEqual(again.PortGroups, back.PortGroups) {
		t.Fatalf("re-created switch reads back as %+v, want %+v", again, back)
	}

	// The existing switch drifted (a port group edited by hand): importing
	// the file repairs it and touches nothing else.
	if _, err := f.EnsurePortGroup(ctx, "pv-dvs-a", fabric.PortGroupSpec{Name: "pv-web", VLAN: 999, Description: "edited"}); err != nil {
		t.Fatal(err)
	}
	res, err = f.ImportSwitch(ctx, &back, "", true)
	if err != nil {
		t.Fatal(err)
	}
	if res.Created || !slices.Equal(res.PortGroups, []string{"pv-web"}) || len(res.Joined) != 0 {
		t.Fatalf("import onto the drifted switch: %+v, want only pv-web repaired", res)
	}
	if pg, _, _ := f.FindPortGroup(ctx, "pv-web"); pg.VLAN != 120 || !pg.Matches(specs[0]) {
		t.Fatalf("pv-web after import: %+v", pg)
	}
}

func TestSwitchConfigValidateNamesFields(t *testing.T) {
	bad := fabric.SwitchConfig{APIVersion: "v1", Kind: "Switch", MaxMTU: 20,
		PortGroups: []fabric.PortGroupConfig{{Name: "a", VLAN: 5000}, {Name: "a"}}}
	err := bad.Validate()
	for _, want := range []string{"apiVersion", "kind", "name: required", "maxMTU 20", "portGroups[0].vlan 5000", "portGroups[1].name \"a\": duplicate"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %q", err, want)
		}
	}
}
