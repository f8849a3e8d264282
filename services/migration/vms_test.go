package migration

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/testenv"
)

// vmController stands in for the scheduler and the provisioner's native VM
// controller: it answers a drain's vm.migrate.requested with vm.migrated
// (the VM moved to target after relocate, or failed when fail is set), or
// keeps the request for answer when hold is set, and makes an evicted VM
// again on target, writing the VM records as the provisioner would.
type vmController struct {
	w        *world
	kv       jetstream.KeyValue
	target   string
	relocate time.Duration

	mu       sync.Mutex
	fail     bool
	hold     bool
	held     []*events.VMMigrateRequested
	seen     map[string]bool
	inFlight int // requests not yet answered
	maxIn    int
	asked    int
}

func newVMController(w *world, target string) *vmController {
	c := &vmController{w: w, kv: w.KV(events.BucketVMs), target: target, seen: map[string]bool{}}
	sub, err := w.bus.Conn().Subscribe("pv.vm.>", c.on)
	if err != nil {
		w.t.Fatal(err)
	}
	if err := w.bus.Conn().Flush(); err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { _ = sub.Unsubscribe() })
	return c
}

// putVM writes the provisioner's record of a running VM on host.
func (c *vmController) putVM(ns, name, uid, host string) {
	testenv.Put(c.w.Env, events.BucketVMs, events.VMRecordKey(ns, name), &events.VMRecord{Namespace: ns, Name: name, UID: uid,
		Status: events.VirtualMachineStatus{UID: uid, Phase: events.VMPhaseReady, PowerState: "PoweredOn", Host: host}})
}

func (c *vmController) vm(ns, name string) *events.VMRecord {
	c.w.t.Helper()
	r, _, err := getJSON[events.VMRecord](context.Background(), c.kv, events.VMRecordKey(ns, name))
	if err != nil || r == nil {
		c.w.t.Fatalf("VM record %s/%s: %v", ns, name, err)
	}
	return r
}

func (c *vmController) on(m *nats.Msg) {
	ev, err := bus.DecodeMessage(m)
	if err != nil {
		return
	}
	c.mu.Lock()
	if c.seen[ev.ID()] {
		c.mu.Unlock()
		return
	}
	c.seen[ev.ID()] = true
	c.mu.Unlock()
	p, err := events.Decode(ev.Type(), ev.Data())
	if err != nil {
		return
	}
	switch v := p.(type) {
	case *events.VMMigrateRequested:
		c.mu.Lock()
		c.asked++
		c.inFlight++
		c.maxIn = max(c.maxIn, c.inFlight)
		if c.hold {
			c.held = append(c.held, v)
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		go func() {
			time.Sleep(c.relocate) // the vMotion's duration
			c.answer(v)
		}()
	case *events.VMEvicted:
		go c.moveTo(v.Namespace, v.Name, c.target)
	}
}

// answer announces the outcome of a move as the controller would.
func (c *vmController) answer(v *events.VMMigrateRequested) {
	c.mu.Lock()
	fail := c.fail
	c.inFlight--
	c.mu.Unlock()
	r := c.vm(v.Namespace, v.Name)
	out := &events.VMMigrated{ID: v.ID, Namespace: v.Namespace, Name: v.Name, UID: r.UID, SourceHost: r.Status.Host}
	if fail {
		out.Reason, out.Message = "RelocateFailed", "vCenter refused the relocation"
	} else {
		c.moveTo(v.Namespace, v.Name, c.target)
		out.TargetHost = c.target
	}
	c.w.publish("podvisor/provisioner", events.TypeVMMigrated, out)
}

func (c *vmController) moveTo(ns, name, host string) {
	r := c.vm(ns, name)
	r.Status.Host = host
	testenv.Put(c.w.Env, events.BucketVMs, events.VMRecordKey(ns, name), r)
}

// TestDrainOfVMsResumesAfterARestart: the migration service is stopped
// after its drain asked to move a VM; the move's failure is announced
// while no migration service runs; the restarted service goes on from the
// drain record: it evicts the VM (once), the VM is made again on another
// host, and the drain ends with the VM moved and nothing unmovable (a drain
// that kept the outcome in memory lost it and listed the VM unmovable two
// minutes later).
func TestDrainOfVMsResumesAfterARestart(t *testing.T) {
	w := newWorld(t, 1, 2)
	h := w.clusterHosts(0)
	c := newVMController(w, h[1])
	c.fail, c.hold = true, true
	c.putVM("team-a", "vm1", "u-vm1", h[0])
	cfg := testConfig()
	w.start(cfg)

	w.publish("podvisor/cli", events.TypeHostDrainRequested, &events.HostDrainRequested{Name: h[0]})
	eventually(t, "the drain's move of vm1 asked for and recorded", func() bool {
		c.mu.Lock()
		n := len(c.held)
		c.mu.Unlock()
		d := w.drainRecord(h[0])
		return n == 1 && d != nil && len(d.VMs) == 1 && !d.VMs[0].RequestedAt.IsZero()
	})
	w.stop()
	c.mu.Lock()
	held := c.held[0]
	c.mu.Unlock()
	c.answer(held) // vm.migrated: RelocateFailed, with no migration service running

	w.start(cfg)
	d := w.waitDrained(h[0])
	if d.Migrated != 1 || len(d.Unmovable) != 0 {
		t.Fatalf("drained = %+v, want vm1 moved (made again elsewhere), nothing unmovable", d)
	}
	if got := c.vm("team-a", "vm1").Status.Host; got != h[1] {
		t.Errorf("vm1 on %s, want %s", got, h[1])
	}
	evicted := testenv.Distinct[events.VMEvicted](w.Env, nil)
	if len(evicted) != 1 || evicted[0].Reason != ReasonDrainUnmovable || evicted[0].Host != h[0] {
		t.Errorf("vm.evicted = %+v, want one DrainUnmovable from %s", evicted, h[0])
	}
	rec := w.drainRecord(h[0])
	if len(rec.VMs) != 1 {
		t.Fatalf("drain record VMs = %+v", rec.VMs)
	}
	v := rec.VMs[0]
	if v.Reason != "RelocateFailed" || v.MigratedAt.IsZero() || v.EvictedAt.IsZero() || v.Result != events.DrainVMMoved {
		t.Errorf("drain record's move = %+v, want the failure, the eviction and Moved recorded", v)
	}
}

// TestDrainMovesVMsWithinTheMigrationLimits: three VMs leave a drained host
// one at a time under a limit of one migration per source host (a VM move
// holds its room from its request to vm.migrated), and all three move.
func TestDrainMovesVMsWithinTheMigrationLimits(t *testing.T) {
	w := newWorld(t, 1, 2)
	h := w.clusterHosts(0)
	c := newVMController(w, h[1])
	c.relocate = 200 * time.Millisecond
	for i := range 3 {
		c.putVM("team-a", fmt.Sprintf("vm%d", i), fmt.Sprintf("u-vm%d", i), h[0])
	}
	cfg := testConfig()
	cfg.Limits.PerSourceHost = 1
	w.start(cfg)

	w.publish("podvisor/cli", events.TypeHostDrainRequested, &events.HostDrainRequested{Name: h[0]})
	d := w.waitDrained(h[0])
	if d.Migrated != 3 || len(d.Unmovable) != 0 {
		t.Fatalf("drained = %+v, want 3 VMs moved", d)
	}
	c.mu.Lock()
	maxIn, asked := c.maxIn, c.asked
	c.mu.Unlock()
	if asked != 3 || maxIn != 1 {
		t.Errorf("%d moves asked, at most %d at once; want 3, one at a time (limit 1 per source host)", asked, maxIn)
	}
	for i := range 3 {
		if got := c.vm("team-a", fmt.Sprintf("vm%d", i)).Status.Host; got != h[1] {
			t.Errorf("vm%d on %s, want %s", i, got, h[1])
		}
	}
	b, _ := json.Marshal(w.drainRecord(h[0]).VMs)
	t.Logf("drain record's moves: %s", b)
}
