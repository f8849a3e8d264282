package migration

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
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
// controller: it answers vm.migrate.requested with
// vm.migration.target.reserved (on the request's target host, else on
// target, or refused with NoTarget as the scheduler does when noTarget is
// set), and the migration service's vm.migration.admitted with
// vm.migrated (the VM moved after relocate, or failed when fail is set);
// it keeps a request for answer when hold is set, an admission for
// finish when holdAdmitted is set, and makes an evicted VM again on
// target, writing the VM records as the provisioner would.
type vmController struct {
	w        *world
	kv       jetstream.KeyValue
	target   string
	relocate time.Duration

	mu           sync.Mutex
	fail         bool
	noTarget     bool
	hold         bool
	held         []*events.VMMigrateRequested
	holdAdmitted bool
	admitted     []*events.VMMigrationAdmitted
	seen         map[string]bool
	inFlight     int // admitted moves not yet answered
	maxIn        int
	asked        int
}

func newVMController(w *world, target string) *vmController {
	c := &vmController{w: w, kv: w.KV(events.BucketVMs), target: target, seen: map[string]bool{}}
	sub, err := w.Bus.Conn().Subscribe("pv.vm.>", c.on)
	if err != nil {
		w.T.Fatal(err)
	}
	if err := w.Bus.Conn().Flush(); err != nil {
		w.T.Fatal(err)
	}
	w.T.Cleanup(func() { _ = sub.Unsubscribe() })
	return c
}

// putVM writes the provisioner's record of a running VM on host.
func (c *vmController) putVM(ns, name, uid, host string) {
	testenv.Put(c.w.Env, events.BucketVMs, events.VMRecordKey(ns, name), &events.VMRecord{Namespace: ns, Name: name, UID: uid,
		Status: events.VirtualMachineStatus{UID: uid, Phase: events.VMPhaseReady, PowerState: "PoweredOn", Host: host}})
}

func (c *vmController) vm(ns, name string) *events.VMRecord {
	c.w.T.Helper()
	r, _, err := records[events.VMRecord](c.kv, "VM", nil).Get(context.Background(), events.VMRecordKey(ns, name))
	if err != nil || r == nil {
		c.w.T.Fatalf("VM record %s/%s: %v", ns, name, err)
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
		if c.hold {
			c.held = append(c.held, v)
			c.mu.Unlock()
			return
		}
		noTarget := c.noTarget
		c.mu.Unlock()
		if noTarget {
			go c.refuse(v)
			return
		}
		go c.reserve(v)
	case *events.VMMigrationAdmitted:
		c.mu.Lock()
		c.inFlight++
		c.maxIn = max(c.maxIn, c.inFlight)
		if c.holdAdmitted {
			c.admitted = append(c.admitted, v)
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		go func() {
			time.Sleep(c.relocate) // the vMotion's duration
			c.finish(v)
		}()
	case *events.VMEvicted:
		go c.moveTo(v.Namespace, v.Name, c.target)
	}
}

// reserve answers a request as the scheduler would.
func (c *vmController) reserve(v *events.VMMigrateRequested) {
	r := c.vm(v.Namespace, v.Name)
	target := v.TargetHost
	if target == "" {
		target = c.target
	}
	c.w.Send("podvisor/scheduler", events.TypeVMMigrationTargetReserved, &events.VMMigrationTargetReserved{ID: v.ID,
		VMRef: events.VMRef{Namespace: v.Namespace, Name: v.Name, UID: r.UID}, SourceHost: r.Status.Host, TargetHost: target, Cluster: c.w.ClusterOf(target)})
}

// refuse answers a request as the scheduler does when no host can take
// the VM: vm.migrated with NoTarget, before any target is reserved, naming
// no source host.
func (c *vmController) refuse(v *events.VMMigrateRequested) {
	r := c.vm(v.Namespace, v.Name)
	c.w.Send("podvisor/scheduler", events.TypeVMMigrated, &events.VMMigrated{ID: v.ID, VMRef: events.VMRef{Namespace: v.Namespace, Name: v.Name, UID: r.UID},
		SourceHost: "unknown", Reason: ReasonNoTarget, Message: "no target host for VM " + r.Key() + ": 0/2 hosts fit: 1 cordoned, 1 insufficient memory"})
}

// finish relocates an admitted move and announces its outcome as the
// controller would.
func (c *vmController) finish(v *events.VMMigrationAdmitted) {
	c.mu.Lock()
	c.inFlight--
	c.mu.Unlock()
	c.answer(v.ID, v.Namespace, v.Name, v.TargetHost)
}

// answer announces the outcome of a move (to target) as the controller
// would.
func (c *vmController) answer(id, ns, name, target string) {
	c.mu.Lock()
	fail := c.fail
	c.mu.Unlock()
	r := c.vm(ns, name)
	out := &events.VMMigrated{ID: id, VMRef: events.VMRef{Namespace: ns, Name: name, UID: r.UID}, SourceHost: r.Status.Host}
	if fail {
		out.Reason, out.Message = "RelocateFailed", "vCenter refused the relocation"
	} else {
		c.moveTo(ns, name, target)
		out.TargetHost = target
	}
	c.w.Send("podvisor/provisioner", events.TypeVMMigrated, out)
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

	w.Send("podvisor/cli", events.TypeHostDrainRequested, &events.HostDrainRequested{Name: h[0]})
	w.Eventually("the drain's move of vm1 asked for and recorded", func() bool {
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
	c.answer(held.ID, held.Namespace, held.Name, h[1]) // vm.migrated: RelocateFailed, with no migration service running

	w.start(cfg)
	d := w.waitDrained(h[0])
	if d.MigratedVMs != 1 || d.Migrated != 0 || len(d.Unmovable) != 0 {
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
// holds its room from its admission to vm.migrated), and all three move.
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

	w.Send("podvisor/cli", events.TypeHostDrainRequested, &events.HostDrainRequested{Name: h[0]})
	d := w.waitDrained(h[0])
	if d.MigratedVMs != 3 || d.Migrated != 0 || len(d.Unmovable) != 0 {
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

// TestVMMigrationsAreHeldToTheLimitsOnSourceAndTarget: `podvisor migrate
// vm` moves wait in the migration queue like pods' migrations, counted
// against the source host, the source cluster and the target cluster. With
// one migration per cluster, a VM moving from cluster 0 into cluster 1
// holds cluster 1: a second VM's move within cluster 1 stays Queued (its
// record says which limit) and is admitted, and relocated, only once the
// first has migrated; a move cancelled while queued is ended with
// vm.migrated (the scheduler frees its target) and never admitted.
func TestVMMigrationsAreHeldToTheLimitsOnSourceAndTarget(t *testing.T) {
	w := newWorld(t, 2, 2)
	c0, c1 := w.clusterHosts(0), w.clusterHosts(1)
	c := newVMController(w, c1[0])
	c.holdAdmitted = true
	c.putVM("team-a", "a", "u-a", c0[0])
	c.putVM("team-a", "b", "u-b", c1[1])
	c.putVM("team-a", "x", "u-x", c1[1])
	cfg := testConfig()
	cfg.Limits = Limits{PerSourceHost: 1, PerCluster: 1}
	w.start(cfg)

	// As the CLI asks (podvisor migrate vm NAME --to HOST).
	move := func(id, name, to string) {
		w.Send("podvisor/cli", events.TypeVMMigrateRequested, &events.VMMigrateRequested{ID: id, Namespace: "team-a", Name: name, TargetHost: to})
	}
	admitted := func() []string {
		c.mu.Lock()
		defer c.mu.Unlock()
		var ids []string
		for _, a := range c.admitted {
			ids = append(ids, a.ID)
		}
		return ids
	}
	move("m-a", "a", c1[0])
	w.Eventually("m-a admitted", func() bool { return slices.Equal(admitted(), []string{"m-a"}) })
	move("m-b", "b", c1[0])
	move("m-x", "x", c1[0])
	w.Eventually("m-b and m-x queued behind m-a's room in cluster 1", func() bool {
		b, _ := w.svc.store.migration(context.Background(), "m-b")
		x, _ := w.svc.store.migration(context.Background(), "m-x")
		return b != nil && x != nil && b.Phase == events.PhaseQueued && x.Phase == events.PhaseQueued &&
			strings.Contains(b.Message, "limit 1 per cluster") && strings.Contains(b.Message, w.ClusterOf(c1[0]))
	})
	if r := w.migration("m-a"); r.Kind != events.MigrationKindVM || r.Phase != events.PhaseRelocating ||
		r.SourceCluster != w.ClusterOf(c0[0]) || r.TargetCluster != w.ClusterOf(c1[0]) {
		t.Errorf("m-a's record = %+v, want a VM move Relocating from cluster 0 into cluster 1", r)
	}

	// A queued move cancelled: ended with vm.migrated, never admitted.
	w.Send("podvisor/cli", events.TypeMigrationCancelRequested, &events.MigrationCancelRequested{MigrationRef: events.MigrationRef{ID: "m-x", Namespace: "team-a", Pod: "x"}})
	w.Eventually("m-x cancelled", func() bool { return w.migrationPhase("m-x") == events.MigrationPhaseCancelled })
	ended := testenv.Distinct[events.VMMigrated](w.Env, func(v *events.VMMigrated) bool { return v.ID == "m-x" })
	if len(ended) != 1 || ended[0].Reason != "Cancelled" {
		t.Errorf("vm.migrated of m-x = %+v, want one with reason Cancelled", ended)
	}

	// Nothing else is admitted while m-a holds the room.
	if got := admitted(); !slices.Equal(got, []string{"m-a"}) {
		t.Fatalf("admitted %v while m-a relocates, want m-a only", got)
	}
	c.mu.Lock()
	a := c.admitted[0]
	c.holdAdmitted = false
	c.mu.Unlock()
	c.finish(a)
	w.Eventually("m-b admitted and migrated after m-a", func() bool {
		return w.migrationPhase("m-a") == events.MigrationPhaseCompleted && w.migrationPhase("m-b") == events.MigrationPhaseCompleted
	})
	if got := c.vm("team-a", "b").Status.Host; got != c1[0] {
		t.Errorf("b on %s, want %s", got, c1[0])
	}
	if got := admitted(); !slices.Equal(got, []string{"m-a"}) || w.migrationPhase("m-x") != events.MigrationPhaseCancelled {
		t.Errorf("held admissions %v, m-x %s: the cancelled move was admitted", got, w.migrationPhase("m-x"))
	}
}

// TestDrainListsAVMNoHostCanTakeAtOnce: the scheduler finds no target for
// a drained host's VM. The drain ends at once, as for a pod, with the VM
// unmovable for NoTarget and the scheduler's message naming the VM; the VM
// is not evicted (no host would take it again) and the host stays out of
// maintenance. (The refusal names no source host, so the outcome never
// reached the drain record before: the drain waited vmLeaveTimeout, two
// minutes, and listed the VM as VMStillOnHost among "pods or VMs".)
func TestDrainListsAVMNoHostCanTakeAtOnce(t *testing.T) {
	w := newWorld(t, 1, 2)
	h := w.clusterHosts(0)
	c := newVMController(w, h[1])
	c.noTarget = true
	c.putVM("team-a", "vm1", "u-vm1", h[0])
	w.start(testConfig())

	start := time.Now()
	w.Send("podvisor/cli", events.TypeHostDrainRequested, &events.HostDrainRequested{Name: h[0]})
	s := w.WaitSeen(15*time.Second, "host.drained of "+h[0]+" well before vmLeaveTimeout", func(s testenv.Seen) bool {
		d, ok := s.Payload.(*events.HostDrained)
		return ok && d.Name == h[0]
	})
	t.Logf("drain ended after %s", time.Since(start).Round(time.Millisecond))
	d := s.Payload.(*events.HostDrained)
	if d.Migrated != 0 || d.MigratedVMs != 0 || len(d.Unmovable) != 1 {
		t.Fatalf("drained = %+v, want nothing moved and vm1 unmovable", d)
	}
	u := d.Unmovable[0]
	if u.Name != "vm1" || u.UID != "u-vm1" || u.Reason != ReasonNoTarget || !strings.Contains(u.Message, "VM team-a/vm1") {
		t.Errorf("unmovable = %+v, want vm1 with NoTarget and the scheduler's message naming the VM", u)
	}
	rec := w.drainRecord(h[0])
	if rec.Phase != events.DrainPhaseIncomplete || !strings.HasPrefix(rec.Message, "1 VM could not move") || strings.Contains(rec.Message, "pod") {
		t.Errorf("drain record = %s %q, want Incomplete saying 1 VM could not move", rec.Phase, rec.Message)
	}
	if len(rec.VMs) != 1 || rec.VMs[0].Result != ReasonNoTarget || !rec.VMs[0].EvictedAt.IsZero() {
		t.Errorf("drain record's moves = %+v, want vm1 ended NoTarget, never evicted", rec.VMs)
	}
	if ev := testenv.Distinct[events.VMEvicted](w.Env, nil); len(ev) != 0 {
		t.Errorf("vm.evicted = %+v, want none: no host would take the VM again", ev)
	}
	if got := c.vm("team-a", "vm1").Status.Host; got != h[0] {
		t.Errorf("vm1 on %s, want it still on %s", got, h[0])
	}
	if host, err := w.vm.Host(t.Context(), h[0]); err != nil || host.Maintenance {
		t.Errorf("host entered maintenance mode with a VM still on it (%v)", err)
	}
}
