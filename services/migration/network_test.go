package migration

import (
	"strings"
	"testing"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/testenv"
)

// TestSourceLackingNetworkIsRefused: the precheck checks the pod's networks
// on the source too, with the definition the scheduler uses: a source where
// the network failed cannot hand its port over.
func TestSourceLackingNetworkIsRefused(t *testing.T) {
	w := newWorld(t, 1, 3)
	w.start(testConfig())
	h := w.clusterHosts(0)
	p := w.runPod("db", h[0], "edge")
	testenv.Put(w.Env, events.BucketNetHosts, "edge", &events.NetworkAvailability{Network: "edge", Version: 1,
		Hosts: []string{h[1], h[2]}, Scope: []string{h[0], h[1], h[2]}, Failed: []string{h[0]}})

	w.migrate("m-src", p, h[1])
	typ, payload := w.waitEnd("m-src")
	f, ok := payload.(*events.MigrationFailed)
	if typ != events.TypeMigrationFailed || !ok {
		t.Fatalf("migration ended with %s %+v, want failed", typ, payload)
	}
	if f.Reason != ReasonNetworkMissingOnSource || !strings.Contains(f.Message, "edge") || !strings.Contains(f.Message, h[0]) {
		t.Errorf("failed = %s: %s; want %s naming edge and %s", f.Reason, f.Message, ReasonNetworkMissingOnSource, h[0])
	}
	if got, _ := w.vmHost(p.vm); got != h[0] {
		t.Errorf("VM moved to %s despite the refusal", got)
	}
}

// TestHostLosingANetworkEvictsItsPodsOnIt: network.host.failed for a host
// that lost the network evicts that host's pods on the network, and only
// those.
func TestHostLosingANetworkEvictsItsPodsOnIt(t *testing.T) {
	w := newWorld(t, 1, 2)
	w.start(testConfig())
	h := w.clusterHosts(0)
	on := w.runPod("on-edge", h[0], "default", "edge")
	w.runPod("off-edge", h[0], "default")
	w.runPod("elsewhere", h[1], "edge")

	w.publish("podvisor/netconfig", events.TypeNetworkHostFailed, &events.NetworkHostFailed{
		Name: "edge", Version: 2, Host: h[0], Reason: "NotRealized", Message: "port group pv-edge is not among the host's networks"})
	got := testenv.Wait(w.Env, func(*events.PodEvicted) bool { return true })
	if got.Name != on.name || got.Host != h[0] || got.Reason != ReasonNetworkLost || !strings.Contains(got.Message, "edge") {
		t.Errorf("evicted %+v, want %s from %s with %s naming edge", got, on.name, h[0], ReasonNetworkLost)
	}
	eventually(t, "on-edge restarted elsewhere", func() bool { return w.podRecord("on-edge").Host == h[1] })
	// Once the event is handled, only the pod on edge was evicted.
	eventually(t, "network.host.failed handled", func() bool {
		st, err := w.bus.JetStream().Stream(t.Context(), events.StreamNetworks)
		if err != nil {
			return false
		}
		c, err := st.Consumer(t.Context(), Name+"-"+events.StreamNetworks)
		if err != nil {
			return false
		}
		info, err := c.Info(t.Context())
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
	for _, v := range testenv.Distinct[events.PodEvicted](w.Env, nil) {
		if v.Name == "off-edge" {
			t.Errorf("off-edge, not on edge, was evicted: %+v", v)
		}
	}
}
