package events

import (
	"bytes"
	"encoding/json"
	"os"
	"testing"
)

// decodeRecordSample decodes a record sample strictly (unknown fields are an
// error) and checks that encoding it again loses nothing.
func decodeRecordSample(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	again, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var want, got any
	_ = json.Unmarshal(data, &want)
	_ = json.Unmarshal(again, &got)
	wb, _ := json.Marshal(want)
	gb, _ := json.Marshal(got)
	if !bytes.Equal(wb, gb) {
		t.Fatalf("%s does not round-trip:\n want %s\n got  %s", path, wb, gb)
	}
}

func TestNetworkRecordSample(t *testing.T) {
	var r NetworkRecord
	decodeRecordSample(t, "testdata/records/network.json", &r)
	if r.HostsReady != 1 || r.HostsInScope != 2 {
		t.Errorf("hosts ready %d of %d, want 1 of 2", r.HostsReady, r.HostsInScope)
	}
	if got := r.LatestVersion(); got != 3 {
		t.Errorf("LatestVersion = %d, want 3", got)
	}
	if v, ok := r.FindVersion(1); !ok || v.Spec.VLAN != 110 {
		t.Errorf("FindVersion(1) = %+v, %v", v, ok)
	}
	if _, ok := r.FindVersion(9); ok {
		t.Error("FindVersion(9) found a version never stored")
	}
}

func TestNetworkHostRecordSampleAndKeys(t *testing.T) {
	var h NetworkHostRecord
	decodeRecordSample(t, "testdata/records/net-realized.json", &h)
	if h.ReadyAt(2) || h.State != NetworkHostStateFailed || h.Pushed != 2 {
		t.Errorf("sample = %+v, want Failed, pushed by version 2, not ready at 2", h)
	}
	ready := NetworkHostRecord{NetworkHostState: NetworkHostState{Version: 2, State: NetworkHostStateReady}}
	if !ready.ReadyAt(2) || ready.ReadyAt(3) || ready.ReadyAt(0) {
		t.Errorf("ReadyAt wrong for %+v", ready)
	}
	var none *NetworkHostRecord
	if none.ReadyAt(1) {
		t.Error("a host with no state is ready")
	}
	for _, c := range []struct{ host, want string }{
		{"DC0_C0_H1", "frontend.DC0_C0_H1"},
		{"esx01.lab.example", "frontend.esx01.lab.example"},
		{"fe80::1", "frontend.x-666538303a3a31"},
		{"x-1", "frontend.x-782d31"},    // would collide with an encoded name
		{"a..b", "frontend.x-612e2e62"}, // an empty token
		{".lead", "frontend.x-2e6c656164"},
	} {
		if got := NetworkHostKey("frontend", c.host); got != c.want {
			t.Errorf("NetworkHostKey(frontend, %q) = %q, want %q", c.host, got, c.want)
		}
	}
	if NetworkHostKeys("frontend") != "frontend.>" {
		t.Errorf("NetworkHostKeys = %q", NetworkHostKeys("frontend"))
	}
}

func TestNetworkAvailabilitySample(t *testing.T) {
	var a NetworkAvailability
	decodeRecordSample(t, "testdata/records/net-hosts.json", &a)
	if !a.Realized("DC0_C0_H0") || a.Realized("DC0_C0_H1") {
		t.Errorf("Realized wrong for %+v", a)
	}
	if !a.InScope("DC0_C0_H1") || a.InScope("DC0_C1_H0") {
		t.Errorf("InScope wrong for %+v", a)
	}
}

func TestIPAllocationSampleAndKeys(t *testing.T) {
	var a IPAllocation
	decodeRecordSample(t, "testdata/records/ipam.json", &a)
	key := IPAllocationKey(a.Network, a.IP)
	if key != "frontend.10-20-0-2" {
		t.Fatalf("IPAllocationKey = %q", key)
	}
	n, ip, err := ParseIPAllocationKey(key)
	if err != nil || n != "frontend" || ip.String() != "10.20.0.2" {
		t.Fatalf("ParseIPAllocationKey(%q) = %q, %v, %v", key, n, ip, err)
	}
	for _, bad := range []string{"frontend", "frontend.pod.x", "frontend.10-20-0"} {
		if _, _, err := ParseIPAllocationKey(bad); err == nil {
			t.Errorf("ParseIPAllocationKey(%q) accepted a key that is not an address", bad)
		}
	}
	if got := IPPodBindingKey("frontend", "a.b-c"); got != "frontend.pod.a=b-c" {
		t.Errorf("IPPodBindingKey = %q", got)
	}
}
