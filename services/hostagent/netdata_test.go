package hostagent_test

import (
	"context"
	"encoding/json"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/hostagent"
	"github.com/podvisor/podvisor/services/hostagent/guesttest"
	"github.com/podvisor/podvisor/shared/bustest"
	"github.com/podvisor/podvisor/shared/deps"
)

// The module registered for a namespace receives that namespace's data as
// it applies on its host: the switch's value inherited by the port group
// and the pod's port unless overridden, nothing of other namespaces or of
// networks the host does not carry, and again after every change.
func TestDataDeliveredToTheNamespaceModule(t *testing.T) {
	ctx := context.Background()
	b := bustest.Start(t)
	put := func(bucket, key string, v any) {
		t.Helper()
		kv, err := b.KV(ctx, bucket)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := json.Marshal(v)
		if _, err := kv.Put(ctx, key, data); err != nil {
			t.Fatal(err)
		}
	}
	// What network-config records: web realized here on switch pv-dvs,
	// db elsewhere; pod shop/a on this host.
	put(events.BucketNetworks, "web", events.NetworkRecord{Name: "web", Version: 1, PortGroup: "pv-web", Switch: "pv-dvs"})
	put(events.BucketNetworks, "db", events.NetworkRecord{Name: "db", Version: 1, PortGroup: "pv-db", Switch: "pv-dvs-2"})
	put(events.BucketNetHosts, "web", events.NetworkAvailability{Network: "web", Version: 1, Hosts: []string{host}})
	put(events.BucketNetHosts, "db", events.NetworkAvailability{Network: "db", Version: 1, Hosts: []string{"esx-9"}})
	put(events.BucketIPAM, events.IPAllocationKey("web", "10.1.0.5"), events.IPAllocation{Network: "web", IP: "10.1.0.5", Namespace: "shop", Name: "a", UID: "u-a", Host: host})
	rec := func(kind, name string, values map[string]string) {
		s := events.NetworkDataScope{Kind: kind, Name: name}
		put(events.BucketNetData, events.NetworkDataKey(s), events.NetworkDataRecord{Scope: s, Values: values})
	}
	rec(events.NetworkDataSwitch, "pv-dvs", map[string]string{"fw.example/profile": "strict", "fw.example/log": "off", "other.example/x": "1"})
	rec(events.NetworkDataPortGroup, "pv-web", map[string]string{"fw.example/log": "on"})
	rec(events.NetworkDataPort, events.PortName("web", "shop", "a"), map[string]string{"fw.example/profile": "open"})
	rec(events.NetworkDataSwitch, "pv-dvs-2", map[string]string{"fw.example/profile": "db-only"})
	rec(events.NetworkDataHost, host, map[string]string{"fw.example/uplink": "vmnic1"})

	var mu sync.Mutex
	var got []hostagent.HostData
	module := hostagent.DataModuleFunc(func(_ context.Context, d hostagent.HostData) error {
		mu.Lock()
		got = append(got, d)
		mu.Unlock()
		return nil
	})
	dir, err := os.MkdirTemp("", "pvha-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	guesttest.StartHostAgentWith(t, host, dir, hostagent.Deps{Deps: deps.Deps{Bus: b}, Modules: map[string]hostagent.DataModule{"fw.example": module}})

	last := func(ok func(hostagent.HostData) bool) hostagent.HostData {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			var d hostagent.HostData
			n := len(got)
			if n > 0 {
				d = got[n-1]
			}
			mu.Unlock()
			if n > 0 && ok(d) {
				return d
			}
			if time.Now().After(deadline) {
				t.Fatalf("no delivery as expected within 10s; last %+v", d)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	port := events.PortName("web", "shop", "a")
	d := last(func(d hostagent.HostData) bool { return len(d.Ports[port]) == 2 })
	want := map[string]string{
		"port profile": d.Ports[port]["fw.example/profile"].Value + " from " + d.Ports[port]["fw.example/profile"].From.String(),
		"port log":     d.Ports[port]["fw.example/log"].Value + " from " + d.Ports[port]["fw.example/log"].From.String(),
		"pg profile":   d.PortGroups["pv-web"]["fw.example/profile"].Value + " from " + d.PortGroups["pv-web"]["fw.example/profile"].From.String(),
		"host uplink":  d.HostValues["fw.example/uplink"].Value,
	}
	expect := map[string]string{
		"port profile": "open from port web/shop/a",
		"port log":     "on from portgroup pv-web",
		"pg profile":   "strict from switch pv-dvs",
		"host uplink":  "vmnic1",
	}
	for k, v := range expect {
		if want[k] != v {
			t.Errorf("%s = %q, want %q", k, want[k], v)
		}
	}
	if _, ok := d.Switches["pv-dvs-2"]; ok {
		t.Errorf("delivered the switch of a network this host does not carry: %+v", d.Switches)
	}
	if _, ok := d.Switches["pv-dvs"]["other.example/x"]; ok || d.Namespace != "fw.example" || d.Host != host {
		t.Errorf("delivery %+v carries another namespace or the wrong host", d)
	}

	// The port's override goes: the port inherits the switch's value.
	rec(events.NetworkDataPort, port, map[string]string{})
	last(func(d hostagent.HostData) bool { return d.Ports[port]["fw.example/profile"].Value == "strict" })
}
