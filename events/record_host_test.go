package events

import (
	"os"
	"strings"
	"testing"
)

// The samples are what `podvisor get hosts` and other readers decode; they
// must decode strictly (no stray or misspelled field) into the record types.
func TestHostRecordSample(t *testing.T) {
	data, err := os.ReadFile("testdata/records/host.json")
	if err != nil {
		t.Fatal(err)
	}
	var r HostRecord
	if err := unmarshalStrict(data, &r); err != nil {
		t.Fatalf("strict decode: %v", err)
	}
	if err := r.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	if r.Name != "esx-1-01" || r.CPUCapacityMilli != 48000 || r.Pods != 2 || r.Labels["gpu"] != "a100" || r.ResourcePool == "" || len(r.PodNetworks) != 2 {
		t.Errorf("decoded %+v", r)
	}
	if r.State() != HostStateReady || !r.Schedulable() {
		t.Errorf("state %s schedulable %v", r.State(), r.Schedulable())
	}
}

func TestHostRecordState(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*HostRecord)
		want   string
	}{
		{"ready", func(*HostRecord) {}, HostStateReady},
		{"cordoned", func(r *HostRecord) { r.Cordoned = true }, HostStateCordoned},
		{"maintenance wins over cordon", func(r *HostRecord) { r.Cordoned, r.Maintenance = true, true }, HostStateMaintenance},
		{"lost wins over everything", func(r *HostRecord) { r.Cordoned, r.ConnectionState = true, HostNotResponding }, HostStateLost},
		{"disconnected", func(r *HostRecord) { r.ConnectionState = HostDisconnected }, HostStateNotReady},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := HostRecord{HostInfo: HostInfo{Name: "h", Cluster: "c", ConnectionState: HostConnected}}
			tt.mutate(&r)
			if got := r.State(); got != tt.want {
				t.Errorf("State() = %s, want %s", got, tt.want)
			}
			if r.Schedulable() != (tt.want == HostStateReady) {
				t.Errorf("Schedulable() = %v in state %s", r.Schedulable(), tt.want)
			}
		})
	}
	bad := HostRecord{HostInfo: HostInfo{Name: "h", Cluster: "c", ConnectionState: HostConnected}, Pods: -1}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "pods") {
		t.Errorf("negative pods: %v", err)
	}
}

func TestLedgerEntrySample(t *testing.T) {
	data, err := os.ReadFile("testdata/records/ledger.json")
	if err != nil {
		t.Fatal(err)
	}
	var e LedgerEntry
	if err := unmarshalStrict(data, &e); err != nil {
		t.Fatalf("strict decode: %v", err)
	}
	cpu, mem, pods := e.Totals()
	if cpu != 2500 || mem != 2*2281701376 || pods != 2 {
		t.Errorf("totals %d %d %d", cpu, mem, pods)
	}
	for k, a := range e.Allocations {
		if a.Key() != k {
			t.Errorf("allocation stored under %q has key %q", k, a.Key())
		}
	}
	if keys := e.Keys(); len(keys) != 2 || keys[0] > keys[1] {
		t.Errorf("keys %v", keys)
	}
}

func TestHostKeys(t *testing.T) {
	tests := map[string]string{
		"esx-1-01":        "esx-1-01",
		"esx01.lab.local": "esx01.lab.local",
		"10.0.0.12":       "10.0.0.12",
		"DC0_C0_H0":       "DC0_C0_H0",
		"esx 01":          "esx=2001",
		"a=b":             "a=3Db",
		"h\u00e9te":       "h=C3=A9te",
	}
	seen := map[string]string{}
	for in, want := range tests {
		got := HostRecordKey(in)
		if got != want || LedgerEntryKey(in) != want {
			t.Errorf("key(%q) = %q, want %q", in, got, want)
		}
		if other, dup := seen[got]; dup {
			t.Errorf("%q and %q share key %q", in, other, got)
		}
		seen[got] = in
	}
}

// A pod binding key can never be read as a host's ledger entry key.
func TestPodBindingKeys(t *testing.T) {
	k := PodBindingKey("6b1d2c44-0d59-4e8e-9d3b-5a8d2f1e0a11")
	if !IsPodBindingKey(k) {
		t.Fatalf("%q not recognized as a binding key", k)
	}
	for _, host := range []string{"==pod.x", "=pod.x", "pod.x", "esx-1-01", "=3D=3Dpod"} {
		if IsPodBindingKey(LedgerEntryKey(host)) {
			t.Errorf("host %q has ledger key %q, taken for a binding", host, LedgerEntryKey(host))
		}
	}
}
