package compat_test

import (
	"context"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/compat"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
)

func TestCheckNamesEachUnmetRequirement(t *testing.T) {
	req := compat.Document{APIVersion: compat.APIVersion, Kind: compat.KindRequires, Provider: compat.ProviderGuestCluster, Name: "k", Version: "v1",
		Requires: []compat.Requirement{
			{Provider: compat.ProviderSDDC, Name: "vcenter.version", Version: ">=8.0 <9"},
			{Provider: compat.ProviderSDDC, Name: "feature/a"},
			{Provider: compat.ProviderSDDC, Name: "feature/b"},
			{Provider: compat.ProviderInfrastructure, Name: "api", Version: ">=2"},
		}}
	offers := compat.Document{APIVersion: compat.APIVersion, Kind: compat.KindOffers, Provider: compat.ProviderSDDC, Name: "vc", Version: "7.0.3",
		Offers: map[string]string{"vcenter.version": "7.0.3", "feature/a": compat.Present}}
	infra := compat.Document{APIVersion: compat.APIVersion, Kind: compat.KindOffers, Provider: compat.ProviderInfrastructure, Name: "p", Version: "1",
		Offers: map[string]string{"api": "10"}}
	res := compat.Check(req, offers, infra)
	if res.Compatible || len(res.Unmet) != 2 {
		t.Fatalf("result %+v: want vcenter.version and feature/b unmet", res)
	}
	if res.Unmet[0].Name != "vcenter.version" || res.Unmet[0].Have != "7.0.3" || res.Unmet[1].Name != "feature/b" || res.Unmet[1].Want != compat.Present {
		t.Errorf("unmet %+v", res.Unmet)
	}
	msg := res.Message("gc1")
	for _, want := range []string{"vcenter.version >=8.0 <9 (offered 7.0.3)", "feature/b present (not offered)"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q does not say %q", msg, want)
		}
	}
	// "api" >=2 against 10: numeric, not text, comparison.
	for _, u := range res.Unmet {
		if u.Name == "api" {
			t.Error("10 >= 2 must hold")
		}
	}
}

func TestDecodeRefusesUnknownFieldsAndVersions(t *testing.T) {
	good := `apiVersion: compat.podvisor.io/v1
kind: Requires
provider: guestcluster
name: kubernetes
version: v1.37.2
requires:
- {provider: sddc, name: vcenter.version, version: ">=8.0"}
`
	docs, err := compat.Decode(strings.NewReader(good + "---\n" + `apiVersion: compat.podvisor.io/v1
kind: Offers
provider: sddc
name: vc
version: "8"
offers: {vcenter.version: "8.0.2"}
`))
	if err != nil || len(docs) != 2 || compat.Check(docs[0], docs[1]).Compatible != true {
		t.Fatalf("decode: %v %+v", err, docs)
	}
	for bad, want := range map[string]string{
		strings.Replace(good, "compat.podvisor.io/v1", "compat.podvisor.io/v2", 1): "apiVersion",
		strings.Replace(good, "provider: sddc", "provider: cloud", 1):              "requires[0].provider",
		good + "extra: 1\n": "extra",
	} {
		if _, err := compat.Decode(strings.NewReader(bad)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Decode = %v, want an error naming %s", err, want)
		}
	}
}

// TestGuestClusterCheckOnVCenter reads the simulator's offers, checks two
// guest cluster versions and finds the result as a vCenter event on the
// cluster.
func TestGuestClusterCheckOnVCenter(t *testing.T) {
	ctx := context.Background()
	d := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 1})
	c := simtest.Client(t, d)
	sddc, err := compat.SDDCOffers(ctx, c.Client)
	if err != nil {
		t.Fatal(err)
	}
	if sddc.Offers["vcenter.version"] != c.ServiceContent.About.Version || sddc.Offers["vsphere.api.feature/ovfManager"] != compat.Present {
		t.Fatalf("offers %v: want the simulator's version and its OVF manager", sddc.Offers)
	}
	cluster := d.Clusters()[0].Ref
	ok, err := compat.CheckGuestCluster(ctx, c.Client, compat.GuestCluster{Namespace: "team-a", Name: "gc1", Version: "v1.37.2",
		Cluster: cluster, Trigger: events.CompatTriggerCreate})
	if err != nil {
		t.Fatal(err)
	}
	if !ok.Compatible || ok.Validate() != nil {
		t.Errorf("v1.37.2: %+v (%v), want compatible", ok, ok.Validate())
	}
	bad, err := compat.CheckGuestCluster(ctx, c.Client, compat.GuestCluster{Namespace: "team-a", Name: "gc2", Version: "v1.38.0",
		Cluster: cluster, Trigger: events.CompatTriggerRequest, CheckID: "check-1"})
	if err != nil {
		t.Fatal(err)
	}
	if bad.Compatible || len(bad.Unmet) == 0 || bad.Validate() != nil {
		t.Fatalf("v1.38.0: %+v, want incompatible with the unmet requirements named", bad)
	}
	if bad.VCenterEventKey == 0 {
		t.Errorf("no vCenter event key: %s", bad.Message)
	}
	found := 0
	for _, e := range simtest.EventsOn(t, c, cluster) {
		if m := e.GetEvent().FullFormattedMessage; strings.Contains(m, "gc2") && strings.Contains(m, bad.Unmet[0].Name) {
			found++
		}
	}
	if found != 1 {
		t.Errorf("vCenter events on the cluster: %d naming gc2 and %s, want 1", found, bad.Unmet[0].Name)
	}
	if _, err := compat.GuestClusterRequires("v0.1.0"); err == nil || !strings.Contains(err.Error(), "v1.37") {
		t.Errorf("unknown version: %v, want the known versions named", err)
	}
}
