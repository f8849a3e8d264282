package scheduler_test

import (
	"context"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler"
	"github.com/podvisor/podvisor/services/scheduler/ledger"
	"github.com/podvisor/podvisor/shared/testenv"
)

// roomy is a capacity no test pod exceeds.
var roomy = ledger.Capacity{CPUMilli: 1 << 20, MemoryBytes: 1 << 40}

// strayAllocation writes a pod's allocation on host as a scheduler replica
// does in the first step of a placement (reserve), and waits until the
// scheduler under test has folded it in.
func (e *env) strayAllocation(host, name string) {
	e.T.Helper()
	a := events.Allocation{Kind: events.AllocationPod, Namespace: "default", Name: name, UID: "uid-" + name,
		CPUMilli: 100, MemoryBytes: 256 << 20, ReservedAt: time.Now()}
	if _, err := e.led.Reserve(e.T.Context(), host, roomy, []events.Allocation{a}); err != nil {
		e.T.Fatal(err)
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
	host := e.HostNames("")[1]
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
	winner, loser := e.HostNames("")[0], e.HostNames("")[1]
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
	if n := len(e.ScheduledAll(acc.ObjectKey())); n != 1 {
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
	hosts := e.HostNames("")
	placed := e.placedRecord
	alloc := func(rec *events.PodRecord, host, migration string) { e.hold(rec, host, migration, time.Now()) }

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

// The 11:25 full run's end state: two migration reservations (uid@id) held
// on hosts after their migrations had ended, one of them a request the
// scheduler handled again after its migration completed. The ledger sweep
// frees the reservation of a migration whose record says it ended, or that
// has had no record for long; it keeps those of migrations in flight, of
// migrations just requested, and the reservation migration.completed is
// about to promote.
func TestSweepReleasesReservationsOfEndedMigrations(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 3, cfg: func(c *scheduler.Config) {
		c.PendingRescan = 200 * time.Millisecond
	}})
	h := e.HostNames("")
	now, long := time.Now(), time.Now().Add(-3*time.Minute)
	cases := []struct {
		pod, phase, host string // the pod's record
		on               string // the host of the migration's reservation
		at               time.Time
		migration        string // the migration record's phase ("": none); its source h[0], its target to
		to               string
		released         bool
	}{
		{"late", events.PodPhaseRunning, h[1], h[0], now, events.MigrationPhaseCompleted, h[1], true}, // completed h0 → h1, reserved again on h0
		{"failed", events.PodPhaseRunning, h[0], h[2], now, events.MigrationPhaseFailed, h[2], true},
		{"dup", events.PodPhaseRunning, h[1], h[1], now, events.MigrationPhaseCompleted, h[1], true}, // promoted, and a second reservation on the target
		{"old", events.PodPhaseRunning, h[0], h[2], long, "", "", true},
		{"promoting", events.PodPhaseMigrating, h[0], h[2], now, events.MigrationPhaseCompleted, h[2], false}, // migration.completed not handled yet
		{"queued", events.PodPhaseRunning, h[0], h[1], long, events.PhaseQueued, h[1], false},
		{"fresh", events.PodPhaseRunning, h[0], h[1], now, "", "", false}, // reserved before its request was recorded
	}
	for _, c := range cases {
		rec := e.placedRecord(c.pod, c.phase, c.host)
		e.hold(rec, c.host, "", now)
		if _, err := e.led.Claim(t.Context(), rec.UID, c.host); err != nil {
			t.Fatal(err)
		}
		e.hold(rec, c.on, "m-"+c.pod, c.at)
		if c.migration != "" {
			testenv.Put(e.Env, events.BucketMigrations, events.MigrationRecordKey("m-"+c.pod), &events.MigrationRecord{
				ID: "m-" + c.pod, Namespace: "default", Pod: rec.Name, UID: rec.UID, SourceHost: h[0], TargetHost: c.to, Phase: c.migration})
		}
	}

	holds := func(host, key string) bool { _, ok := e.allocations(host)[key]; return ok }
	e.EventuallyWithin("the ended migrations' reservations released", 15*time.Second, func() bool {
		for _, c := range cases {
			if c.released && holds(c.on, "uid-"+c.pod+"@m-"+c.pod) {
				return false
			}
		}
		return true
	})
	for _, c := range cases {
		if !holds(c.host, "uid-"+c.pod) {
			t.Errorf("%s: its own allocation on %s was released", c.pod, c.host)
		}
		if !c.released && !holds(c.on, "uid-"+c.pod+"@m-"+c.pod) {
			t.Errorf("%s: the reservation on %s was released", c.pod, c.on)
		}
	}
}

// placedRecord writes the provisioner's record of a pod (100m, 256Mi) in
// phase on host.
func (e *env) placedRecord(name, phase, host string) *events.PodRecord {
	p := testPod(name, "100m", "256Mi")
	rec := &events.PodRecord{UID: "uid-" + name, Namespace: "default", Name: name, Pod: *p, Size: events.SizePodVM(p),
		Networks: events.PodNetworks(p), Phase: phase, Host: host, RequestID: "req-" + name}
	e.PutPodRecord(rec)
	return rec
}

// hold reserves the pod's room on host, reserved at at: its own
// allocation, or a migration's reservation when migration names one.
func (e *env) hold(rec *events.PodRecord, host, migration string, at time.Time) {
	e.T.Helper()
	a := events.Allocation{Kind: events.AllocationPod, Namespace: "default", Name: rec.Name, UID: rec.UID,
		CPUMilli: 100, MemoryBytes: 256 << 20, ReservedAt: at}
	if migration != "" {
		a.Kind, a.MigrationID = events.AllocationMigration, migration
	}
	if _, err := e.led.Reserve(context.Background(), host, roomy, []events.Allocation{a}); err != nil {
		e.T.Fatal(err)
	}
}

// The provisioner's drift repair asks again for the facts of a pod
// Scheduled too long without them by announcing pod.accepted again, under
// a new id. The scheduler, any replica of it, answers with a new
// pod.scheduled (its id derived from the new pod.accepted's, so the image
// cache and network-config answer it again) naming the host the pod is
// bound to, and the ledger still holds the pod there only.
func TestAcceptedAgainIsAnsweredWithTheBoundHost(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 3})
	acc := e.accept(testPod("asked", "100m", "256Mi"))
	host := e.waitScheduled(acc.ObjectKey()).Host
	rec := testenv.PendingRecord(acc)
	rec.Phase, rec.Host = events.PodPhaseScheduled, host
	e.PutPodRecord(rec)

	// The ask reaches a replica that did not place the pod.
	e.stop()
	e.stop = e.startScheduler()
	e.Publish(acc)
	var all []*events.PodScheduled
	e.EventuallyWithin("pod.scheduled again", 10*time.Second, func() bool {
		all = testenv.Distinct(e.Env, func(s *events.PodScheduled) bool { return s.UID == acc.UID })
		return len(all) == 2
	})
	if all[1].Host != host {
		t.Fatalf("asked again: scheduled on %s, the pod is bound to %s", all[1].Host, host)
	}
	if b, ok, err := e.led.GetBinding(t.Context(), acc.UID); err != nil || !ok || b.Host != host {
		t.Fatalf("binding after the ask: %+v (found %v, %v), want %s", b, ok, err, host)
	}
	for _, h := range e.HostNames("") {
		if _, held := e.allocations(h)[acc.UID]; held != (h == host) {
			t.Errorf("allocation of the pod on %s: %v", h, held)
		}
	}
}

// A native VM holds room on its host like a pod and is counted apart: the
// host record says one pod and one VM, and the VM's ledger allocation says
// it is a VM (so that every replica, reading the ledger, counts it so).
func TestNativeVMsAreCountedApartFromPods(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 1})
	host := e.HostNames("")[0]
	acc, placed := e.runningVM("vm1", events.VMSize{CPUs: 1, MemoryMiB: 512})
	if placed.Host != host {
		t.Fatalf("VM placed on %s, the only host is %s", placed.Host, host)
	}
	pod := e.accept(testPod("web", "100m", "256Mi"))
	e.waitScheduled(pod.ObjectKey())
	e.EventuallyWithin("the host record counting one pod and one VM", 10*time.Second, func() bool {
		r := e.hostRecords()[host]
		return r.Pods == 1 && r.VMs == 1
	})
	entry, err := e.led.Get(t.Context(), host)
	if err != nil {
		t.Fatal(err)
	}
	var vm, pods int
	for _, a := range entry.Allocations {
		switch {
		case a.UID == acc.UID && a.VM:
			vm++
		case !a.VM:
			pods++
		}
	}
	if vm != 1 || pods != 1 {
		t.Fatalf("ledger of %s: %+v; want the VM's allocation marked VM and one pod's", host, entry.Allocations)
	}
}
