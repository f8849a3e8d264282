package events

import (
	"strings"
	"testing"
)

func TestNetworkOnHostIsTheSharedDefinition(t *testing.T) {
	a := &NetworkAvailability{Network: "n", Version: 2, Hosts: []string{"a"}, Scope: []string{"a", "b", "c"}, Failed: []string{"c"}}
	for _, tc := range []struct {
		host, want string
		usable     bool
	}{
		{"a", NetworkOnHostRealized, true},
		{"b", NetworkOnHostInScope, true},
		{"c", NetworkOnHostFailed, false},
		{"d", NetworkOnHostNotInScope, false},
	} {
		if got := a.On(tc.host); got != tc.want || NetworkUsable(got) != tc.usable {
			t.Errorf("On(%s) = %s (usable %v), want %s (usable %v)", tc.host, got, NetworkUsable(got), tc.want, tc.usable)
		}
	}
	var none *NetworkAvailability
	if got := none.On("a"); got != NetworkOnHostNotInScope {
		t.Errorf("On of no network = %s, want %s", got, NetworkOnHostNotInScope)
	}
	if !(NetworkAvailabilityAnswer{State: NetworkOnHostInScope}).Usable() || (NetworkAvailabilityAnswer{State: NetworkOnHostFailed}).Usable() {
		t.Error("an answer's Usable disagrees with NetworkUsable")
	}
}

func TestHostSpecificNetworkReasons(t *testing.T) {
	for reason, want := range map[string]bool{
		ReasonNotRealizedOnHost: true, ReasonNotInScope: true, ReasonNetworkUnavailable: true,
		"AddressesExhausted": false, "NetworkNotFound": false, "AttachFailed": false,
	} {
		if got := HostSpecificNetworkReason(reason); got != want {
			t.Errorf("HostSpecificNetworkReason(%s) = %v, want %v", reason, got, want)
		}
	}
}

func TestNetworkRefusalsAreKeptOnceInOrder(t *testing.T) {
	var r PodRecord
	x := HostRefusal{Host: "esx-1", Network: "default", Reason: ReasonNetworkUnavailable, Message: "host esx-1 reads back without port group pv-default"}
	y := HostRefusal{Host: "esx-2", Network: "default", Reason: ReasonNotRealizedOnHost, OnAttach: true}
	if !r.AddNetworkRefusals([]HostRefusal{x, y}) || r.AddNetworkRefusals([]HostRefusal{x}) {
		t.Fatal("a refusal seen before was counted again, or a new one was not")
	}
	if r.AttachRefusals() != 1 || !r.RefusedHosts()["esx-1"] || !r.RefusedHosts()["esx-2"] {
		t.Errorf("refusals %+v: attach count %d, hosts %v", r.NetworkRefusals, r.AttachRefusals(), r.RefusedHosts())
	}
	msg := r.NetworkRefusalMessage()
	if !strings.HasPrefix(msg, "refused by esx-1: network default NetworkUnavailable (host esx-1 reads back") || !strings.Contains(msg, "; esx-2: network default NotRealizedOnHost") {
		t.Errorf("message %q does not list the refusals, first first", msg)
	}
}

func TestPodScheduledRefusalsAreValidated(t *testing.T) {
	e := PodScheduled{PodRef: PodRef{Namespace: "default", Name: "web", UID: "u1"}, Host: "esx-1", Cluster: "c1",
		Refusals: []HostRefusal{{Host: "", Network: "Bad_Name", Reason: ""}}}
	err := e.Validate()
	for _, want := range []string{"refusals[0].host", "refusals[0].network", "refusals[0].reason"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to name %s", err, want)
		}
	}
}

func TestIsNetworkPortGroup(t *testing.T) {
	for name, want := range map[string]bool{"pv-default": true, "pv-a-b": true, "pv-dvs-DVUplinks-33": false, "VM Network": false, "pv-": false} {
		if got := IsNetworkPortGroup(name); got != want {
			t.Errorf("IsNetworkPortGroup(%q) = %v, want %v", name, got, want)
		}
	}
}
