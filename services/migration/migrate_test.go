package migration

import (
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/simulator"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// TestMigrateToNamedHost: with --to, the pod VM lands on that host (vCenter
// agrees), progress goes Queued → Prechecking → Relocating → Finalizing,
// and the record ends Completed.
func TestMigrateToNamedHost(t *testing.T) {
	w, hosts := runningWorld(t, 2, 3)
	p := w.runPod("web", hosts[0])

	w.migrate("m-to", p, hosts[2])
	c := w.wantEnd("m-to", events.TypeMigrationCompleted).(*events.MigrationCompleted)
	if c.SourceHost != hosts[0] || c.TargetHost != hosts[2] || c.UID != p.uid {
		t.Errorf("completed = %+v, want %s → %s for %s", c, hosts[0], hosts[2], p.uid)
	}
	if got, _ := w.vmHost(p.vm); got != hosts[2] {
		t.Errorf("vCenter has the VM on %s, want %s", got, hosts[2])
	}
	var phases []string
	for _, pr := range testenv.Distinct[events.MigrationProgress](w.Env, nil) {
		// Relocating repeats with each progress step vCenter reports.
		if pr.ID == "m-to" && (len(phases) == 0 || phases[len(phases)-1] != pr.Phase) {
			phases = append(phases, pr.Phase)
		}
	}
	want := []string{events.PhaseQueued, events.PhasePrechecking, events.PhaseRelocating, events.PhaseFinalizing}
	if strings.Join(phases, ",") != strings.Join(want, ",") {
		t.Errorf("progress phases %v, want %v", phases, want)
	}
	// The event goes out before the record is final.
	w.Eventually("the record is final", func() bool { return w.migrationPhase("m-to") == events.MigrationPhaseCompleted })
	r := w.migration("m-to")
	if r.VMRef != p.vm.Value {
		t.Errorf("record vmRef %q, want %s", r.VMRef, p.vm.Value)
	}
	if r.Phase != events.MigrationPhaseCompleted || r.Percent != 100 || r.EndedAt.IsZero() || r.StartedAt.IsZero() {
		t.Errorf("record = %+v, want Completed at 100%% with start and end times", r)
	}
	if r.SourceCluster != w.ClusterOf(hosts[0]) || r.TargetCluster != w.ClusterOf(hosts[2]) {
		t.Errorf("record clusters %s → %s", r.SourceCluster, r.TargetCluster)
	}
}

// TestMigrateWithoutTargetAndAcrossClusters: without --to the scheduler's
// pick is used; a move to another cluster lands in that cluster's resource
// pool.
func TestMigrateWithoutTargetAndAcrossClusters(t *testing.T) {
	w, a := runningWorld(t, 2, 3)
	b := w.clusterHosts(1)
	p := w.runPod("api", a[0])

	w.migrate("m-pick", p, "")
	w.wantEnd("m-pick", events.TypeMigrationCompleted)
	picked, _ := w.vmHost(p.vm)
	if picked == a[0] || w.ClusterOf(picked) != w.ClusterOf(a[0]) {
		t.Fatalf("VM on %s after a move without target, want another host of %s", picked, w.ClusterOf(a[0]))
	}

	w.migrate("m-cross", p, b[1])
	w.wantEnd("m-cross", events.TypeMigrationCompleted)
	host, pool := w.vmHost(p.vm)
	if host != b[1] {
		t.Errorf("VM on %s, want %s", host, b[1])
	}
	if want := w.DC.Clusters()[1].ResourcePool; pool != want {
		t.Errorf("VM in pool %s, want %s (cluster-2's)", pool.Value, want.Value)
	}
	w.Eventually("the provisioner's record follows", func() bool { return w.podRecord("api").Host == b[1] })
}

// TestTargetLackingNetworkIsRefused: a pod on "backend" (cluster-1 only)
// cannot move to a cluster-2 host; the failure names the network and the VM
// stays where it was.
func TestTargetLackingNetworkIsRefused(t *testing.T) {
	w, a := runningWorld(t, 2, 2)
	b := w.clusterHosts(1)
	p := w.runPod("db", a[0], "default", "backend")

	w.migrate("m-net", p, b[0])
	f := w.waitFailed("m-net")
	if f.Reason != ReasonNetworkMissingOnTarget || !strings.Contains(f.Message, "backend") || !strings.Contains(f.Message, b[0]) {
		t.Errorf("failed = %s: %s; want %s naming backend and %s", f.Reason, f.Message, ReasonNetworkMissingOnTarget, b[0])
	}
	if f.TargetHost != b[0] {
		t.Errorf("failed.targetHost = %q, want %s (so the scheduler releases it)", f.TargetHost, b[0])
	}
	if got, _ := w.vmHost(p.vm); got != a[0] {
		t.Errorf("VM moved to %s despite the refusal", got)
	}
	w.Eventually("the record is final", func() bool { return w.migrationPhase("m-net") == events.MigrationPhaseFailed })
	r := w.migration("m-net")
	if r.Phase != events.MigrationPhaseFailed || r.Reason != ReasonNetworkMissingOnTarget {
		t.Errorf("record %s/%s, want Failed/%s", r.Phase, r.Reason, ReasonNetworkMissingOnTarget)
	}
	// The same pod moves within cluster-1, where backend exists.
	w.migrate("m-net-ok", p, a[1])
	w.wantEnd("m-net-ok", events.TypeMigrationCompleted)
}

// A record whose VM reference names another pod's VM (a vCenter rebuilt
// from nothing numbers its VMs again) has no VM to move: the migration is
// refused and the other pod's VM stays where it is.
func TestAReferenceToAnotherPodsVMIsNotMoved(t *testing.T) {
	w, hosts := runningWorld(t, 1, 2)
	other := w.runPod("other", hosts[0])
	p := w.runPod("moved", hosts[0])
	r := w.podRecord("moved")
	r.VMRef = other.vm.Value
	w.PutPodRecord(r)

	w.migrate("m-ref", p, hosts[1])
	if f := w.waitFailed("m-ref"); f.Reason != ReasonVMNotFound {
		t.Errorf("failed = %s: %s; want %s", f.Reason, f.Message, ReasonVMNotFound)
	}
	if got, _ := w.vmHost(other.vm); got != hosts[0] {
		t.Errorf("the other pod's VM moved to %s", got)
	}
}

// TestTargetNotConnectedOrInMaintenanceIsRefused: the simulator would
// relocate onto a dead host; the service does not.
func TestTargetNotConnectedOrInMaintenanceIsRefused(t *testing.T) {
	w, h := runningWorld(t, 1, 4)
	p := w.runPod("cache", h[0])
	ctx := t.Context()
	if err := w.DC.FailHost(ctx, h[1]); err != nil {
		t.Fatal(err)
	}
	if err := w.DC.SetMaintenance(ctx, h[2], true); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]struct{ host, reason string }{
		"m-dead":  {h[1], ReasonTargetNotConnected},
		"m-maint": {h[2], ReasonTargetInMaintenance},
	} {
		w.migrate(id, p, want.host)
		typ, payload := w.waitEnd(id)
		f, ok := payload.(*events.MigrationFailed)
		if typ != events.TypeMigrationFailed || !ok || f.Reason != want.reason {
			t.Errorf("%s: ended with %s %+v, want failed %s", id, typ, payload, want.reason)
		}
		// The final event goes out before the record is final; the next
		// migration of the pod is refused until it is (AlreadyMigrating).
		w.Eventually(id+"'s record is final", func() bool { return events.MigrationPhaseFinal(w.migrationPhase(id)) })
	}
	if got, _ := w.vmHost(p.vm); got != h[0] {
		t.Errorf("VM moved to %s", got)
	}
}

// TestSchedulerRefusalAndSilence: the scheduler's refusal is recorded with
// its reason; a request it never answers fails with NoReservation and frees
// the pod for the next request.
func TestSchedulerRefusalAndSilence(t *testing.T) {
	w := newWorld(t, 1, 2)
	cfg := testConfig()
	cfg.ReservationTimeout = 300 * time.Millisecond
	w.start(cfg)
	h := w.clusterHosts(0)
	p := w.runPod("quiet", h[0])

	w.migrate("ghost-1", pod{ns: "default", name: "ghost"}, "")
	w.wantEnd("ghost-1", events.TypeMigrationRejected)
	w.Eventually("the refusal is recorded", func() bool { return w.migrationPhase("ghost-1") == events.MigrationPhaseRejected })
	if r := w.migration("ghost-1"); r.Reason != "NotFound" || !strings.Contains(r.Message, "ghost") {
		t.Errorf("record %s: %s, want the scheduler's NotFound", r.Reason, r.Message)
	}

	w.sched.silence("unanswered")
	w.migrate("unanswered", p, h[1])
	if f := w.waitFailed("unanswered"); f.Reason != ReasonNoReservation {
		t.Fatalf("unanswered failed with %s (%s), want %s", f.Reason, f.Message, ReasonNoReservation)
	}
	w.migrate("answered", p, h[1])
	w.wantEnd("answered", events.TypeMigrationCompleted) // else the pod was not freed
}

// TestPrecheckFailingUntilAttemptsRunOut: prechecks that cannot run
// (vCenter not answering) are tried MaxAttempts times, as a delivery would
// be, and then the migration fails with PrecheckFailed and a message that
// says so.
func TestPrecheckFailingUntilAttemptsRunOut(t *testing.T) {
	w := newWorld(t, 1, 2)
	cfg := testConfig()
	cfg.MaxAttempts = 3
	w.start(cfg)
	hosts := w.clusterHosts(0)
	p := w.runPod("stuck", hosts[0])
	simtest.Fault(t, w.DC, simulator.FaultInjectionRule{MethodName: "RetrievePropertiesEx", ObjectType: "PropertyCollector",
		Probability: 1, FaultType: simulator.FaultTypeTimeout})
	w.migrate("m-stuck", p, hosts[1])
	f := w.waitFailed("m-stuck")
	if f.TargetHost != hosts[1] {
		t.Fatalf("migration.failed = %+v, want target %s", f, hosts[1])
	}
	if f.Reason != ReasonPrecheckFailed || !strings.Contains(f.Message, "gave up after 3 attempts") || !strings.Contains(f.Message, "Fault injected") {
		t.Errorf("migration.failed = %+v; want PrecheckFailed naming vCenter's fault, after 3 attempts", f)
	}
	w.Eventually("the record is final", func() bool { return w.migrationPhase("m-stuck") == events.MigrationPhaseFailed })
}

// waitFailed waits for the end of migration id, which must be a
// migration.failed: it fails the test otherwise.
func (w *world) waitFailed(id string) *events.MigrationFailed {
	w.T.Helper()
	typ, payload := w.waitEnd(id)
	f, ok := payload.(*events.MigrationFailed)
	if typ != events.TypeMigrationFailed || !ok {
		w.T.Fatalf("migration %s ended with %s %+v, want migration.failed", id, typ, payload)
	}
	return f
}
