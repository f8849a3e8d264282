package migration

import (
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/testenv"
)

// TestSourceLackingNetworkIsRefused: the precheck checks the pod's networks
// on the source too, with the definition the scheduler uses: a source where
// the network failed cannot hand its port over.
func TestSourceLackingNetworkIsRefused(t *testing.T) {
	w, h := runningWorld(t, 1, 3)
	p := w.runPod("db", h[0], "edge")
	testenv.Put(w.Env, events.BucketNetHosts, "edge", &events.NetworkAvailability{Network: "edge", Version: 1,
		Hosts: []string{h[1], h[2]}, Scope: []string{h[0], h[1], h[2]}, Failed: []string{h[0]}})

	w.migrate("m-src", p, h[1])
	f := w.waitFailed("m-src")
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
	w, h := runningWorld(t, 1, 2)
	on := w.runPod("on-edge", h[0], "default", "edge")
	w.runPod("off-edge", h[0], "default")
	w.runPod("elsewhere", h[1], "edge")

	w.Send("podvisor/netconfig", events.TypeNetworkHostFailed, &events.NetworkHostFailed{
		Name: "edge", Version: 2, Host: h[0], Reason: "NotRealized", Message: "port group pv-edge is not among the host's networks"})
	got := testenv.Wait(w.Env, func(*events.PodEvicted) bool { return true })
	if got.Name != on.name || got.Host != h[0] || got.Reason != ReasonNetworkLost || !strings.Contains(got.Message, "edge") {
		t.Errorf("evicted %+v, want %s from %s with %s naming edge", got, on.name, h[0], ReasonNetworkLost)
	}
	w.Eventually("on-edge restarted elsewhere", func() bool { return w.podRecord("on-edge").Host == h[1] })
	// Once the event is handled, only the pod on edge was evicted.
	w.networkEventsHandled()
	for _, v := range testenv.Distinct[events.PodEvicted](w.Env, nil) {
		if v.Name == "off-edge" {
			t.Errorf("off-edge, not on edge, was evicted: %+v", v)
		}
	}
}

// TestAPortGroupVCenterDoesNotHaveEvictsNobody: a host agent that could
// not carry a port group because vCenter has none of its key (reason
// PortGroupNotFound: deleted by hand, or not created again yet after a
// restart) reports what every host of the switch reports at once; moving
// the pods would help nobody, so none is evicted, while the same report
// for a reason of the host (CarryFailed) evicts.
func TestAPortGroupVCenterDoesNotHaveEvictsNobody(t *testing.T) {
	w, h := runningWorld(t, 1, 2)
	w.runPod("stays", h[0], "edge")
	w.Send("podvisor/netconfig", events.TypeNetworkHostFailed, &events.NetworkHostFailed{
		Name: "edge", Version: 2, Host: h[0], Reason: "PortGroupNotFound",
		Message: "host agent of " + h[0] + " could not carry port group pv-edge: no port group with key dvportgroup-9"})
	w.networkEventsHandled()
	if v := testenv.Distinct[events.PodEvicted](w.Env, nil); len(v) != 0 {
		t.Fatalf("evicted %+v for a port group vCenter does not have", v)
	}
	w.Send("podvisor/netconfig", events.TypeNetworkHostFailed, &events.NetworkHostFailed{
		Name: "edge", Version: 3, Host: h[0], Reason: "CarryFailed", Message: "host agent of " + h[0] + " could not carry port group pv-edge: bridge pv-edge: no such device"})
	if got := testenv.Wait(w.Env, func(*events.PodEvicted) bool { return true }); got.Name != "stays" || got.Host != h[0] {
		t.Errorf("evicted %+v, want stays from %s for CarryFailed", got, h[0])
	}
	w.Eventually("stays restarted elsewhere", func() bool { return w.podRecord("stays").Host == h[1] })
}

// TestHostThatCannotCarryANetworkEvictsItsPodsBetweenMigrations: a host
// whose agent could not carry a network's port group (network.host.failed,
// reason CarryFailed: vCenter may still list the host on the switch, but no
// traffic of the network passes there) has its pods on that network
// evicted, as for any other loss of the network by the host; before, the
// service ignored CarryFailed and the pods stayed on a host where their
// network was dead. No pod is evicted in the middle of a migration: one
// queued from the host fails first (NetworkLost, saying which host lost
// which network); one relocating away is left to finish, and is not
// evicted from where it went; one relocating onto the host is evicted once
// it is there.
func TestHostThatCannotCarryANetworkEvictsItsPodsBetweenMigrations(t *testing.T) {
	w := newWorld(t, 1, 4)
	w.relocateDelay(time.Second)
	cfg := testConfig()
	cfg.Limits.PerSourceHost = 1
	cfg.RelocateTimeout = 4 * time.Second // looked at again every second
	w.start(cfg)
	h := w.clusterHosts(0)
	w.network("edge", h...)
	still := w.runPod("still", h[0], "edge")
	moving, waiting := w.runPod("moving", h[0], "edge"), w.runPod("waiting", h[0], "edge")
	incoming := w.runPod("incoming", h[1], "edge")
	w.runPod("off-edge", h[0], "default")

	w.migrate("away", moving, h[2])
	testenv.Wait(w.Env, func(v *events.MigrationProgress) bool { return v.ID == "away" && v.Phase == events.PhaseRelocating })
	w.migrate("queued", waiting, h[3])
	w.Eventually("queued is queued", func() bool { return w.migrationPhase("queued") == events.PhaseQueued })
	w.migrate("onto", incoming, h[0])
	testenv.Wait(w.Env, func(v *events.MigrationProgress) bool { return v.ID == "onto" && v.Phase == events.PhaseRelocating })

	w.Send("podvisor/netconfig", events.TypeNetworkHostFailed, &events.NetworkHostFailed{
		Name: "edge", Version: 2, Host: h[0], Reason: "CarryFailed", Message: "host agent of " + h[0] + " could not carry port group pv-edge: bridge pv-edge: no such device"})

	typ, payload := w.waitEnd("queued")
	if f, ok := payload.(*events.MigrationFailed); typ != events.TypeMigrationFailed || !ok || f.Reason != ReasonNetworkLost ||
		!strings.Contains(f.Message, "edge") || !strings.Contains(f.Message, h[0]) || !strings.Contains(f.Message, "CarryFailed") {
		t.Errorf("queued ended with %s %+v; want failed, %s, naming edge, %s and CarryFailed", typ, payload, ReasonNetworkLost, h[0])
	}
	for _, id := range []string{"away", "onto"} {
		if typ, payload := w.waitEnd(id); typ != events.TypeMigrationCompleted {
			t.Errorf("%s, relocating when the network was lost, ended with %s %+v; want completed", id, typ, payload)
		}
	}
	evicted := func() map[string]*events.PodEvicted {
		out := map[string]*events.PodEvicted{}
		for _, v := range testenv.Distinct[events.PodEvicted](w.Env, nil) {
			out[v.Name] = v
		}
		return out
	}
	w.Eventually("still, waiting and incoming evicted", func() bool { return len(evicted()) >= 3 })
	w.networkEventsHandled()
	got := evicted()
	for _, p := range []pod{still, waiting, incoming} {
		v := got[p.name]
		if v == nil || v.Host != h[0] || v.Reason != ReasonNetworkLost || !strings.Contains(v.Message, "edge") {
			t.Errorf("%s: evicted %+v, want evicted from %s with %s naming edge", p.name, v, h[0], ReasonNetworkLost)
		}
	}
	for _, name := range []string{"moving", "off-edge"} {
		if v := got[name]; v != nil {
			t.Errorf("%s evicted: %+v", name, v)
		}
	}
	for _, p := range []pod{still, waiting, incoming} {
		w.Eventually(p.name+" restarted elsewhere", func() bool { r := w.podRecord(p.name); return r.Generation == 1 && r.Host != h[0] })
	}
	if r := w.podRecord("moving"); r.Host != h[2] {
		t.Errorf("moving's record on %s, want %s where its vMotion took it", r.Host, h[2])
	}
}

// networkEventsHandled waits until the service has settled every network
// event published so far.
func (w *world) networkEventsHandled() {
	w.T.Helper()
	w.Eventually("network events handled", func() bool {
		st, err := w.Bus.JetStream().Stream(w.T.Context(), events.StreamNetworks)
		if err != nil {
			return false
		}
		c, err := st.Consumer(w.T.Context(), Name+"-"+events.StreamNetworks)
		if err != nil {
			return false
		}
		info, err := c.Info(w.T.Context())
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
}
