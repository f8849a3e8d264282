package migration

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

func (w *world) drainRecord(host string) *events.DrainRecord {
	w.T.Helper()
	d, _, err := w.svc.store.drain(context.Background(), host)
	if err != nil {
		w.T.Fatalf("drain record %s: %v", host, err)
	}
	return d
}

func (w *world) waitDrained(host string) *events.HostDrained {
	w.T.Helper()
	s := w.WaitSeen(30*time.Second, "host.drained of "+host, func(s testenv.Seen) bool {
		d, ok := s.Payload.(*events.HostDrained)
		return ok && d.Name == host
	})
	return s.Payload.(*events.HostDrained)
}

// TestDrainHostWithTenPods: the host is cordoned, its ten pods move to other
// hosts within the per-host limit, it enters maintenance mode (vCenter says
// so), host.drained counts ten; uncordon takes it out of maintenance.
func TestDrainHostWithTenPods(t *testing.T) {
	w := newWorld(t, 1, 4)
	w.relocateDelay(20 * time.Millisecond)
	w.start(testConfig())
	h := w.clusterHosts(0)
	pods := w.runPods("d", 10, h[0])
	other := w.runPod("bystander", h[1])

	w.Send("podvisor/cli", events.TypeHostDrainRequested, &events.HostDrainRequested{Name: h[0]})
	d := w.waitDrained(h[0])
	if d.Migrated != 10 || len(d.Unmovable) != 0 {
		t.Fatalf("drained = %+v, want 10 migrated, none unmovable", d)
	}
	cordoned := testenv.Distinct[events.HostCordoned](w.Env, nil)
	if len(cordoned) != 1 || cordoned[0].Name != h[0] || cordoned[0].Reason != "Drain" {
		t.Errorf("cordoned = %+v, want one for %s with reason Drain", cordoned, h[0])
	}
	for _, p := range pods {
		if got, _ := w.vmHost(p.vm); got == h[0] {
			t.Errorf("%s still on the drained host", p.name)
		}
	}
	if got, _ := w.vmHost(other.vm); got != h[1] {
		t.Errorf("a pod of another host moved to %s", got)
	}
	host, err := w.vm.Host(t.Context(), h[0])
	if err != nil || !host.Maintenance {
		t.Fatalf("host %s maintenance = %v (%v), want true", h[0], host != nil && host.Maintenance, err)
	}
	rec := w.drainRecord(h[0])
	if rec.Phase != events.DrainPhaseDrained || rec.Migrated != 10 || len(rec.Migrations) != 10 {
		t.Errorf("drain record = %+v", rec)
	}
	for _, id := range rec.Migrations {
		if m := w.migration(id); m.Drain != h[0] || m.SourceHost != h[0] {
			t.Errorf("migration %s: drain %q from %q", id, m.Drain, m.SourceHost)
		}
	}
	// One migration per pod, no more.
	if n := len(testenv.Distinct[events.MigrationRequested](w.Env, nil)); n != 10 {
		t.Errorf("%d migrations requested, want 10", n)
	}

	w.Send("podvisor/cli", events.TypeHostUncordonRequested, &events.HostUncordonRequested{Name: h[0]})
	w.Eventually("the host leaves maintenance mode", func() bool {
		host, err := w.vm.Host(t.Context(), h[0])
		return err == nil && !host.Maintenance
	})
	w.Eventually("the drain record says Uncordoned", func() bool { return w.drainRecord(h[0]).Phase == events.DrainPhaseUncordoned })
	w.Eventually("host.uncordoned announced", func() bool {
		u := testenv.Distinct[events.HostUncordoned](w.Env, nil)
		return len(u) == 1 && u[0].Name == h[0]
	})

	// A client asks for a cordon; migration announces it.
	w.Send("podvisor/cli", events.TypeHostCordonRequested, &events.HostCordonRequested{Name: h[1]})
	w.Eventually("host.cordoned for the request", func() bool {
		for _, c := range testenv.Distinct[events.HostCordoned](w.Env, nil) {
			if c.Name == h[1] && c.Reason == "Manual" {
				return true
			}
		}
		return false
	})
}

// TestDrainListsUnmovablePods: a pod whose network exists only on the
// drained host cannot move; the drain names it with the reason, and the
// host stays out of maintenance.
func TestDrainListsUnmovablePods(t *testing.T) {
	w, h := runningWorld(t, 1, 3)
	w.network("local", h[0])
	movable := w.runPod("movable", h[0])
	stuck := w.runPod("stuck", h[0], "local")

	w.Send("podvisor/cli", events.TypeHostDrainRequested, &events.HostDrainRequested{Name: h[0]})
	d := w.waitDrained(h[0])
	if d.Migrated != 1 || len(d.Unmovable) != 1 {
		t.Fatalf("drained = %+v, want 1 migrated and 1 unmovable", d)
	}
	u := d.Unmovable[0]
	if u.Name != "stuck" || u.UID != stuck.uid || u.Reason != ReasonNetworkMissingOnTarget {
		t.Errorf("unmovable = %+v, want stuck with %s", u, ReasonNetworkMissingOnTarget)
	}
	if got, _ := w.vmHost(movable.vm); got == h[0] {
		t.Error("the movable pod stayed")
	}
	if host, err := w.vm.Host(t.Context(), h[0]); err != nil || host.Maintenance {
		t.Errorf("host entered maintenance mode with a pod still on it (%v)", err)
	}
	if rec := w.drainRecord(h[0]); rec.Phase != events.DrainPhaseIncomplete || len(rec.Unmovable) != 1 {
		t.Errorf("drain record = %+v, want Incomplete with the unmovable pod", rec)
	}
}

// TestHostFailureRestartsPodsElsewhere: host.lost evicts the host's pods
// (the stand-in provisioner restarts them on other hosts), a migration to
// the lost host fails its prechecks; host.recovered removes the VMs left on the
// host without touching the pods' current VMs.
func TestHostFailureRestartsPodsElsewhere(t *testing.T) {
	w, h := runningWorld(t, 1, 4)
	pods := w.runPods("ha", 3, h[1])
	safe := w.runPod("safe", h[2])
	// A pod whose containers all completed: nothing runs to restart, and
	// running them again would do its work twice.
	done := w.runPod("done", h[1])
	rec := w.podRecord("done")
	rec.Phase = events.PodPhaseSucceeded
	w.PutPodRecord(rec)
	ctx := t.Context()

	if err := w.DC.FailHost(ctx, h[1]); err != nil {
		t.Fatal(err)
	}
	// The scheduler's inventory watch would publish this.
	w.Send("podvisor/scheduler", events.TypeHostLost, &events.HostLost{Name: h[1], Cluster: w.ClusterOf(h[1]), Reason: "NotResponding"})
	w.Eventually("every pod runs on another host", func() bool {
		for _, p := range pods {
			r := w.podRecord(p.name)
			if r.Phase != events.PodPhaseRunning || r.Host == h[1] {
				return false
			}
		}
		return true
	})
	evicted := testenv.Distinct[events.PodEvicted](w.Env, nil)
	if len(evicted) != 3 {
		t.Fatalf("%d evictions, want 3: %+v", len(evicted), evicted)
	}
	for _, e := range evicted {
		if e.Host != h[1] || e.Reason != ReasonHostLost {
			t.Errorf("evicted = %+v", e)
		}
	}
	if r := w.podRecord("safe"); r.Host != h[2] {
		t.Errorf("a pod of a healthy host was evicted: %+v", r)
	}
	if r := w.podRecord("done"); r.Phase != events.PodPhaseSucceeded || r.Host != h[1] || r.VMRef != done.vm.Value {
		t.Errorf("a pod that had completed was evicted: %+v", r)
	}
	// The old VMs are still registered on the dead host.
	for _, p := range pods {
		if !w.vmExists(p.vm) {
			t.Fatalf("%s's old VM vanished before the host came back", p.name)
		}
	}

	// A migration towards the dead host fails in its prechecks.
	w.migrate("to-dead", safe, h[1])
	if typ, payload := w.waitEnd("to-dead"); typ != events.TypeMigrationFailed {
		t.Errorf("migration to a lost host ended with %s %+v", typ, payload)
	}

	if err := w.DC.RecoverHost(ctx, h[1]); err != nil {
		t.Fatal(err)
	}
	w.Send("podvisor/scheduler", events.TypeHostRecovered, &events.HostRecovered{Name: h[1], Cluster: w.ClusterOf(h[1])})
	w.Eventually("the leftover VMs are removed", func() bool {
		for _, p := range pods {
			if w.vmExists(p.vm) {
				return false
			}
		}
		return true
	})
	for _, p := range pods {
		r := w.podRecord(p.name)
		if !w.vmExists(vmRef(r.VMRef)) {
			t.Errorf("%s's current VM %s was removed", p.name, r.VMRef)
		}
	}
	if !w.vmExists(safe.vm) {
		t.Error("a healthy pod's VM was removed")
	}
}

// TestDrainWaitsForPodsStillProvisioning: a pod being provisioned on the
// host when the drain starts is migrated in the next pass, once its VM is
// on (Starting: its containers need not have started).
func TestDrainWaitsForPodsStillProvisioning(t *testing.T) {
	w, h := runningWorld(t, 1, 3)
	w.runPod("ready", h[0])
	late := w.runPod("late", h[0])
	w.sched.update("late", func(r *events.PodRecord) { r.Phase = events.PodPhaseProvisioning })

	w.Send("podvisor/cli", events.TypeHostDrainRequested, &events.HostDrainRequested{Name: h[0]})
	w.Eventually("the first pass moved the running pod", func() bool {
		return len(testenv.Distinct[events.MigrationCompleted](w.Env, nil)) == 1
	})
	w.sched.update("late", func(r *events.PodRecord) { r.Phase = events.PodPhaseStarting })
	d := w.waitDrained(h[0])
	if d.Migrated != 2 || len(d.Unmovable) != 0 {
		t.Fatalf("drained = %+v, want both pods moved", d)
	}
	if got, _ := w.vmHost(late.vm); got == h[0] {
		t.Error("the late pod stayed on the drained host")
	}
	if r := w.drainRecord(h[0]); r.Round != 2 {
		t.Errorf("drain took %d passes, want 2", r.Round)
	}
}

// laggingDrainKV answers the first read of a drain record that stands in
// phase `phase` with "no such key", as a NATS node that has not applied
// the record's latest write would (see flakyKV).
type laggingDrainKV struct {
	jetstream.KeyValue
	phase  string
	mu     sync.Mutex
	missed bool
}

func (k *laggingDrainKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	e, err := k.KeyValue.Get(ctx, key)
	if err != nil {
		return e, err
	}
	var d events.DrainRecord
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.missed && json.Unmarshal(e.Value(), &d) == nil && d.Phase == k.phase {
		k.missed = true
		return nil, jetstream.ErrKeyNotFound
	}
	return e, nil
}

// TestDrainOutcomeMeetingALaggingReadIsRecorded: the write of a drain's
// outcome reads the record from a NATS node that has not applied the
// EnteringMaintenance write yet. updateDrain took "no such key" for
// "nothing to do" (and the drain for uncordoned meanwhile): no outcome,
// no host.drained, the record left EnteringMaintenance until the sweep
// resumed the drain. Now the read is made again and the outcome recorded
// and announced, with the sweep a minute away.
func TestDrainOutcomeMeetingALaggingReadIsRecorded(t *testing.T) {
	w := newWorld(t, 1, 3)
	cfg := testConfig()
	cfg.SweepInterval = time.Minute
	svc := w.newService(cfg)
	svc.store.drains = &laggingDrainKV{KeyValue: svc.store.drains, phase: events.DrainPhaseEnteringMaintenance}
	w.runService(svc)
	h := w.clusterHosts(0)
	p := w.runPod("lagdrain", h[0])
	w.Send("podvisor/cli", events.TypeHostDrainRequested, &events.HostDrainRequested{Name: h[0]})
	w.wantDrainedOnePod(h[0], p)
}

func vmRef(v string) types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VirtualMachine", Value: v}
}

func (w *world) vmExists(ref types.ManagedObjectReference) bool { return simtest.VMExists(w.vc, ref) }
