package scheduler_test

import (
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler"
	"github.com/podvisor/podvisor/services/scheduler/ledger"
)

// roomy is a capacity no test pod exceeds.
var roomy = ledger.Capacity{CPUMilli: 1 << 20, MemoryBytes: 1 << 40}

// strayAllocation writes a pod's allocation on host as a scheduler replica
// does in the first step of a placement (reserve), and waits until the
// scheduler under test has folded it in.
func (e *env) strayAllocation(host, name string) {
	e.t.Helper()
	a := events.Allocation{Kind: events.AllocationPod, Namespace: "default", Name: name, UID: "uid-" + name,
		CPUMilli: 100, MemoryBytes: 256 << 20, ReservedAt: time.Now()}
	if _, err := e.led.Reserve(e.t.Context(), host, roomy, []events.Allocation{a}); err != nil {
		e.t.Fatal(err)
	}
	e.EventuallyWithin("the allocation on "+host+" seen by the scheduler", 5*time.Second, func() bool {
		return e.hostRecords()[host].Pods == 1
	})
}

// A scheduler replica that reserved a pod's room and died (or lost its
// claim's reply while a NATS node restarted) before claiming leaves an
// allocation with no binding. The redelivered pod.accepted is answered
// with that host, and the answer is a placement: the pod is bound there,
// so that its deletion and every other replica agree where it is.
func TestReplayOfAnUnclaimedReservationClaimsIt(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 2})
	host := e.hostNames()[1]
	e.strayAllocation(host, "unclaimed")

	acc := e.accept(testPod("unclaimed", "100m", "256Mi"))
	if s := e.waitScheduled(acc.ObjectKey()); s.Host != host {
		t.Fatalf("pod scheduled on %s, its reservation is on %s", s.Host, host)
	}
	b, ok, err := e.led.GetBinding(t.Context(), acc.UID)
	if err != nil {
		t.Fatal(err)
	}
	if !ok || b.Host != host {
		t.Fatalf("binding after the replay: %+v (found %v), want %s", b, ok, host)
	}
}

// Two replicas placed one pod on two hosts; the winner's claim bound it to
// its host, and the loser's reservation is still there (its release has
// not landed, or its claim is still under way). A replay of the pod that
// finds the loser's allocation first is answered with the bound host and
// frees the loser's room: answering with the loser's host sent pod.scheduled
// for two hosts, the VM went to one, and the release then left the ledger
// holding the pod only on the host without its VM.
func TestReplayOfALosingReservationAnswersTheBoundHost(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 2})
	winner, loser := e.hostNames()[0], e.hostNames()[1]
	e.strayAllocation(winner, "twice")
	if b, err := e.led.Claim(t.Context(), "uid-twice", winner); err != nil || b.Host != winner {
		t.Fatalf("claim on %s: %+v, %v", winner, b, err)
	}
	e.strayAllocation(loser, "twice") // folded last: the one the scheduler finds

	acc := e.accept(testPod("twice", "100m", "256Mi"))
	if s := e.waitScheduled(acc.ObjectKey()); s.Host != winner {
		t.Fatalf("pod scheduled on %s, it is bound to %s", s.Host, winner)
	}
	if _, held := e.allocations(loser)[acc.UID]; held {
		t.Fatalf("the losing reservation on %s is still held", loser)
	}
	if _, held := e.allocations(winner)[acc.UID]; !held {
		t.Fatalf("the pod's allocation on %s went", winner)
	}
	if n := len(e.obs.scheduledAll(acc.ObjectKey())); n != 1 {
		t.Fatalf("%d pod.scheduled for the pod", n)
	}
}

// The end state of the fault run that failed: a pod Running on one host
// (its record, and its VM) while the ledger held it only on another, for
// good. Another pod is held on its host and on a second one (a losing
// replica's reservation whose release never landed). The ledger sweep
// holds each pod on its record's host only; a pod migrating (its
// reservation on the target beside its room on the source) is left alone.
func TestSweepHoldsEachPlacedPodOnItsRecordsHost(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 3, cfg: func(c *scheduler.Config) {
		c.PendingRescan = 200 * time.Millisecond
	}})
	hosts := e.hostNames()
	placed := func(name, phase, host string) *events.PodRecord {
		p := testPod(name, "100m", "256Mi")
		rec := &events.PodRecord{UID: "uid-" + name, Namespace: "default", Name: name, Pod: *p, Size: events.SizePodVM(p),
			Networks: events.PodNetworks(p), Phase: phase, Host: host, RequestID: "req-" + name}
		e.PutPodRecord(rec)
		return rec
	}
	alloc := func(rec *events.PodRecord, host, migration string) {
		a := events.Allocation{Kind: events.AllocationPod, Namespace: "default", Name: rec.Name, UID: rec.UID,
			CPUMilli: 100, MemoryBytes: 256 << 20, ReservedAt: time.Now()}
		if migration != "" {
			a.Kind, a.MigrationID = events.AllocationMigration, migration
		}
		if _, err := e.led.Reserve(t.Context(), host, roomy, []events.Allocation{a}); err != nil {
			t.Fatal(err)
		}
	}

	moved := placed("moved", events.PodPhaseRunning, hosts[0])
	alloc(moved, hosts[1], "")
	if _, err := e.led.Claim(t.Context(), moved.UID, hosts[1]); err != nil {
		t.Fatal(err)
	}
	twice := placed("twice", events.PodPhaseRunning, hosts[0])
	alloc(twice, hosts[0], "")
	alloc(twice, hosts[2], "")
	migrating := placed("migrating", events.PodPhaseMigrating, hosts[1])
	alloc(migrating, hosts[1], "")
	alloc(migrating, hosts[2], "m-1")

	holds := func(host, key string) bool { _, ok := e.allocations(host)[key]; return ok }
	e.EventuallyWithin("each placed pod held on its record's host only", 10*time.Second, func() bool {
		return holds(hosts[0], moved.UID) && !holds(hosts[1], moved.UID) && holds(hosts[0], twice.UID) && !holds(hosts[2], twice.UID)
	})
	if b, ok, err := e.led.GetBinding(t.Context(), moved.UID); err != nil || !ok || b.Host != hosts[0] {
		t.Fatalf("binding of the moved pod: %+v (found %v, %v), want %s", b, ok, err, hosts[0])
	}
	if a := e.allocations(hosts[0])[moved.UID]; a.MemoryBytes != moved.Size.MemoryMiB<<20 && a.MemoryBytes != moved.Size.MemoryBytes {
		t.Fatalf("the moved pod is held at %d bytes, its VM has %+v", a.MemoryBytes, moved.Size)
	}
	if !holds(hosts[1], migrating.UID) || !holds(hosts[2], migrating.UID+"@m-1") {
		t.Fatal("the migrating pod's room on its source or its reservation on the target went")
	}
}
