package scheduler_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler"
	"github.com/podvisor/podvisor/services/scheduler/ledger"
	"github.com/podvisor/podvisor/shared/testenv"
)

// A scheduler that restarts keeps the cordons it knew and finds the pods
// that were waiting for a host in the provisioner's records: after the
// restart, uncordoning the host places the waiting pod.
func TestRestartKeepsCordonsAndPendingPods(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 2})
	host := e.HostNames("")[0]
	e.PublishAs("podvisor/migration", events.TypeHostCordoned, host, &events.HostCordoned{Name: host, Reason: "Drain"})
	e.EventuallyWithin("record Cordoned", 5*time.Second, func() bool { r := e.hostRecords()[host]; return r.Cordoned })
	acc := e.accept(testPod("waiting", "1", "1Gi", onHost(host)))
	if u := e.waitUnschedulable(acc.ObjectKey()); u.Reasons["HostCordoned"] != 1 {
		t.Fatalf("%+v", u)
	}

	e.stop()
	e.stop = e.startScheduler()
	// Still cordoned after the restart: a new pod for that host waits too.
	other := e.accept(testPod("waiting-2", "1", "1Gi", onHost(host)))
	if u := e.waitUnschedulable(other.ObjectKey()); u.Reasons["HostCordoned"] != 1 {
		t.Fatalf("after restart: %+v", u)
	}
	e.PublishAs("podvisor/migration", events.TypeHostUncordoned, host, &events.HostUncordoned{Name: host})
	for _, k := range []string{acc.ObjectKey(), other.ObjectKey()} {
		if s := e.waitScheduled(k); s.Host != host {
			t.Errorf("%s placed on %s", k, s.Host)
		}
	}
	if facts := e.Events.CountAbout(events.TypeHostDiscovered, host); facts != 1 {
		t.Errorf("host.discovered published %d times over a restart, want 1", facts)
	}
}

// Two scheduler instances share the durable consumer (as two replicas
// would) and the ledger: an overfull burst of pods never overcommits a host,
// and no pod is placed on two hosts (the second instance also finds every
// pod still Pending in the records at start and retries them, racing the
// first; the pod bindings keep one placement).
func TestTwoSchedulersNeverOvercommit(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 3})
	e.startScheduler()
	var keys []string
	for i := 0; i < 150; i++ {
		keys = append(keys, e.accept(testPod(fmt.Sprintf("burst-%03d", i), "2", "16Gi")).ObjectKey())
	}
	e.EventuallyWithin("every pod placed or refused", 30*time.Second, func() bool { return e.Decided(keys) == len(keys) })
	recs := e.hostRecords()
	placed, ledgerPods := 0, 0
	check := func() {
		placed, ledgerPods = 0, 0
		for _, k := range keys {
			if e.Scheduled(k) != nil {
				placed++
			}
		}
		for name, r := range recs {
			entry, err := e.led.Get(t.Context(), name)
			if err != nil {
				t.Fatal(err)
			}
			cpu, mem, n := entry.Totals()
			ledgerPods += n
			if cpu > r.CPUCapacityMilli || mem > r.MemoryCapacityBytes {
				t.Fatalf("%s overcommitted: %dm/%dm, %d/%d GiB", name, cpu, r.CPUCapacityMilli, mem>>30, r.MemoryCapacityBytes>>30)
			}
		}
	}
	// A pod that lost races may be announced unschedulable and placed by
	// its retry shortly after: wait until every reservation is announced.
	deadline := time.Now().Add(10 * time.Second)
	for check(); placed != ledgerPods && time.Now().Before(deadline); check() {
		time.Sleep(50 * time.Millisecond)
	}
	if placed != ledgerPods {
		t.Errorf("%d pods announced, the ledger holds %d", placed, ledgerPods)
	}
	where := map[string][]string{}
	for name := range recs {
		entry, _ := e.led.Get(t.Context(), name)
		for k, a := range entry.Allocations {
			where[a.Name] = append(where[a.Name], name+":"+k+":"+a.ReservedAt.Format("15:04:05.000"))
		}
	}
	for n, hs := range where {
		if len(hs) > 1 {
			t.Errorf("%s reserved on %d hosts: %v", n, len(hs), hs)
		}
	}

	if placed == len(keys) {
		t.Fatalf("all %d pods placed: the burst was not overfull", placed)
	}
	t.Logf("%d of %d pods placed by two schedulers", placed, len(keys))
}

// Two instances racing for the same pods on the same host (one host: every
// placement lands there; every pod.accepted twice) share the pod's binding
// and its allocation key: every announced pod stays in the ledger, and both
// stop cleanly. (This reproduced a shutdown hang, about one run in eight: a
// handler that queued its pod after the scheduling loop had stopped waited
// for an answer until the bus's drain timeout.)
func TestTwoSchedulersOnOneHostKeepEveryAllocation(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 1})
	e.stop()
	var keys []string
	for i := 0; i < 80; i++ {
		acc := e.accept(testPod(fmt.Sprintf("same-%03d", i), "100m", "256Mi"))
		// A second pod.accepted of the pod (a replay under another id),
		// so that the two instances often hold the same pod at once.
		e.PublishAs("podvisor/provisioner", events.TypePodAccepted, acc.ObjectKey(), acc)
		keys = append(keys, acc.ObjectKey())
	}
	// Both start on the same backlog: each retries every pod still Pending
	// in the records and takes its share of the queued events.
	e.startScheduler()
	e.stop = e.startScheduler()
	e.EventuallyWithin("every pod placed", 30*time.Second, func() bool { return e.Decided(keys) == len(keys) })
	host := e.HostNames("")[0]
	missing := func() []string {
		entry, err := e.led.Get(t.Context(), host)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, k := range keys {
			if s := e.Scheduled(k); s != nil {
				if _, ok := entry.Allocations[s.UID]; !ok {
					out = append(out, k)
				}
			}
		}
		return out
	}
	deadline := time.Now().Add(5 * time.Second)
	m := missing()
	for len(m) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		m = missing()
	}
	if len(m) > 0 {
		t.Fatalf("%d announced pods have no allocation in the ledger: %v", len(m), m)
	}
}

// A replica that placed a waiting pod from its memory and died before it
// published pod.scheduled leaves the pod held in the ledger (allocation and
// binding) while its record shows no host, and nothing redelivers the
// pod.accepted acknowledged long before. The pending rescan of a live
// replica finds it so on two passes and publishes the placement, on the
// host it is held on; a pod whose pod.scheduled is only late gets the same
// answer. A pod sent back by an eviction is left to its pod.evicted
// handler: the room it holds may be on the host it was evicted from.
func TestAPlacementThatWasNeverPublishedIsPublishedByTheRescan(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 3, cfg: func(c *scheduler.Config) {
		c.PendingRescan = 200 * time.Millisecond
	}})
	hosts := e.HostNames("")
	// Evicted from its lost host, whose pod.evicted handler (which frees
	// that room) has not run yet: never sent back there.
	evicted := e.holdWithoutHost("evicted", "HostLost", hosts[0])
	stranded := e.holdWithoutHost("stranded", "Unschedulable", hosts[1])
	if s := e.waitScheduled(stranded.ObjectKey()); s.Host != hosts[1] {
		t.Fatalf("pod.scheduled names %s, want %s where it is held", s.Host, hosts[1])
	}
	// A pod stranded later is published two passes or more after the
	// first: by then the evicted pod would have been too.
	later := e.holdWithoutHost("later", "", hosts[2])
	if s := e.waitScheduled(later.ObjectKey()); s.Host != hosts[2] {
		t.Fatalf("pod.scheduled names %s, want %s where it is held", s.Host, hosts[2])
	}
	if s := e.Scheduled(evicted.ObjectKey()); s != nil {
		t.Errorf("the evicted pod was sent back to %s, the host it was evicted from", s.Host)
	}
}

// holdWithoutHost writes a pod's record waiting for a host (reason) while
// the ledger holds it on host (reservation and claim): a dead replica's
// writes.
func (e *env) holdWithoutHost(name, reason, host string) *events.PodAccepted {
	e.T.Helper()
	acc := testenv.Accepted(testPod(name, "100m", "64Mi"))
	e.PutPodRecord(&events.PodRecord{UID: acc.UID, Namespace: "default", Name: name, Pod: acc.Pod, Size: acc.Size, Networks: acc.Networks,
		Phase: events.PodPhasePending, RequestID: "req-" + name, Reason: reason, Message: reason})
	e.holdBound(host, name, acc.UID, acc.Size.CPUMilli, acc.Size.MemoryMiB<<20)
	return acc
}

// holdBound writes what a scheduler placing a pod or VM on host writes: its
// reservation there (whatever room is left) and its binding.
func (e *env) holdBound(host, name, uid string, cpuMilli, memoryBytes int64) {
	e.T.Helper()
	alloc := events.Allocation{Kind: events.AllocationPod, Namespace: "default", Name: name, UID: uid,
		CPUMilli: cpuMilli, MemoryBytes: memoryBytes, ReservedAt: time.Now()}
	if _, err := e.led.Reserve(e.T.Context(), host, ledger.Capacity{CPUMilli: 1 << 20, MemoryBytes: 1 << 40}, []events.Allocation{alloc}); err != nil {
		e.T.Fatal(err)
	}
	if _, err := e.led.Claim(e.T.Context(), uid, host); err != nil {
		e.T.Fatal(err)
	}
}

// A pod placed twice under the rescan's stand-in cause (one per placement
// generation) is told of both hosts: the placement on the first was
// published, that host refused the pod's network and the pod.network.failed
// that would place it again was lost, so the rescan places it again. The
// second pod.scheduled names another host and must not be taken by
// JetStream's de-duplication for a replay of the first.
func TestASecondPlacementUnderTheRescansCauseIsPublished(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 3, cfg: func(c *scheduler.Config) {
		c.PendingRescan = 200 * time.Millisecond
	}})
	first := e.HostNames("")[0]
	acc := e.holdWithoutHost("refused", "", first)
	placedOn := func(what string, onFirst bool) {
		e.WaitSeen(10*time.Second, what, func(s testenv.Seen) bool {
			p, ok := s.Payload.(*events.PodScheduled)
			return ok && p.UID == acc.UID && (p.Host == first) == onFirst
		})
	}
	placedOn("pod.scheduled naming the host the pod is held on", true)
	rec := &events.PodRecord{UID: acc.UID, Namespace: "default", Name: "refused", Pod: acc.Pod, Size: acc.Size, Networks: acc.Networks,
		Phase: events.PodPhasePending, RequestID: "req-refused", Reason: "NetworkRefused", Message: "refused"}
	rec.AddNetworkRefusals([]events.HostRefusal{{Host: first, Network: "default", Reason: "NotRealizedOnHost", Message: "not realized"}})
	e.PutPodRecord(rec)
	// The recorder's view keeps one event per id, as JetStream's
	// de-duplication window does: a second placement published under the
	// first's id is never seen.
	placedOn("pod.scheduled naming another host", false)
}

// A pod sent back by an eviction whose handler found no host is held in
// that replica's memory, and its record may keep the eviction's reason
// (the provisioner took the pod.unschedulable, folded before the eviction,
// for stale). When that replica is gone, another's periodic rescan places
// it, not only a start-up one.
func TestAnEvictedPodHeldNowhereIsPlacedByThePeriodicRescan(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 2, cfg: func(c *scheduler.Config) {
		c.PendingRescan = 200 * time.Millisecond
	}})
	// A handled pod.accepted: the consumer runs, so the start-up rescan
	// (before it) is over.
	e.waitScheduled(e.accept(testPod("probe", "100m", "64Mi")).ObjectKey())
	acc := testenv.Accepted(testPod("evicted", "100m", "64Mi"))
	e.PutPodRecord(&events.PodRecord{UID: acc.UID, Namespace: "default", Name: "evicted", Pod: acc.Pod, Size: acc.Size, Networks: acc.Networks,
		Phase: events.PodPhasePending, RequestID: "req-evicted", Reason: "HostLost", Message: "host esx-9 lost"})
	e.waitScheduled(acc.ObjectKey())
}

// An evicted pod placed again, whose pod.scheduled the provisioner took for
// stale (it came before the eviction was folded), is held on its new host
// with no host on its record: the rescan publishes that placement again.
// One held on the host it was evicted from is the pod.evicted handler's.
func TestAnEvictedPodHeldOnItsNewHostIsPublishedByTheRescan(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 3, cfg: func(c *scheduler.Config) {
		c.PendingRescan = 200 * time.Millisecond
	}})
	hosts := e.HostNames("")
	evicted := func(name, held string) *events.PodAccepted {
		acc := e.holdWithoutHost(name, "HostLost", held)
		e.PutPodRecord(&events.PodRecord{UID: acc.UID, Namespace: "default", Name: name, Pod: acc.Pod, Size: acc.Size, Networks: acc.Networks,
			Phase: events.PodPhasePending, RequestID: "req-" + name, Reason: "HostLost", Message: "evicted from " + hosts[0], EvictedFrom: hosts[0]})
		return acc
	}
	// Written while no scheduler runs, as a dead replica's and the
	// provisioner's writes would stand when the next one looks.
	e.stop()
	moved := evicted("moved", hosts[1])
	left := evicted("left", hosts[0])
	e.stop = e.startScheduler()
	if s := e.waitScheduled(moved.ObjectKey()); s.Host != hosts[1] {
		t.Fatalf("pod.scheduled names %s, want %s where it is held", s.Host, hosts[1])
	}
	// Later than the moved pod's by two passes or more.
	later := e.holdWithoutHost("later", "", hosts[2])
	e.waitScheduled(later.ObjectKey())
	if s := e.Scheduled(left.ObjectKey()); s != nil {
		t.Errorf("the pod held on the host it was evicted from was sent back to %s", s.Host)
	}
}

// Native VMs wait for a host in the memory of a replica as pods do: a VM
// whose record says Unschedulable (never placed, or evicted from a lost
// host), or that is held in the ledger without a placement on its record,
// is placed by a live replica's rescan when the replica that held it is
// gone.
func TestNativeVMsHeldByADeadReplicaArePlacedByTheRescan(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 3, cfg: func(c *scheduler.Config) {
		c.PendingRescan = 200 * time.Millisecond
	}})
	host := e.HostNames("")[2]
	size := events.VMSize{CPUs: 1, MemoryMiB: 512}
	waiting, held := e.waitingVM("waiting", 1, size), e.waitingVM("held", 1, size)
	// Evicted from a lost host: placed before (generation 1), no host now.
	evicted := e.waitingVM("evicted", 1, size, func(r *events.VMRecord) {
		r.ScheduledGeneration, r.Status.Phase = 1, events.VMPhasePending
	})
	e.holdBound(host, "held", held.UID, size.CPUMilli(), size.MemoryBytes())
	placed := e.vmScheduled
	e.EventuallyWithin("the three VMs placed", 10*time.Second, func() bool {
		return placed(waiting.UID) != nil && placed(held.UID) != nil && placed(evicted.UID) != nil
	})
	if s := placed(held.UID); s.Host != host || s.Generation != 1 {
		t.Errorf("held VM: vm.scheduled on %s for generation %d, want %s and 1", s.Host, s.Generation, host)
	}
	if s := placed(waiting.UID); s.Generation != 1 {
		t.Errorf("waiting VM: vm.scheduled for generation %d, want 1", s.Generation)
	}
}

// A VM placed twice under the rescan's stand-in cause of one generation
// (placed by a replica's rescan, its room lost since, and taken by the
// next replica's rescan again) is told of the second host too: its
// vm.scheduled must not share the first one's id.
func TestASecondVMPlacementUnderTheRescansCauseIsPublished(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 2, cfg: func(c *scheduler.Config) {
		c.PendingRescan = 200 * time.Millisecond
	}})
	vm := e.waitingVM("twice", 1, events.VMSize{CPUs: 1, MemoryMiB: 512})
	first := e.WaitSeen(10*time.Second, "the rescan's first placement", func(s testenv.Seen) bool {
		p, ok := s.Payload.(*events.VMScheduled)
		return ok && p.UID == vm.UID
	}).Payload.(*events.VMScheduled).Host
	// The replica dies; its room on the first host is gone and that host is
	// full now.
	e.stop()
	if _, _, err := e.led.Release(e.T.Context(), first, vm.UID); err != nil {
		t.Fatal(err)
	}
	if err := e.led.Unbind(e.T.Context(), vm.UID, 0); err != nil {
		t.Fatal(err)
	}
	e.holdBound(first, "filler", "uid-filler", 1<<19, 1<<39)
	e.stop = e.startScheduler()
	e.WaitSeen(10*time.Second, "vm.scheduled naming the other host", func(s testenv.Seen) bool {
		p, ok := s.Payload.(*events.VMScheduled)
		return ok && p.UID == vm.UID && p.Host != first
	})
}

// waitingVM writes the provisioner's record of a VM of the given generation
// and size waiting for a host (Unschedulable), changed by mutate.
func (e *env) waitingVM(name string, gen int64, size events.VMSize, mutate ...func(*events.VMRecord)) *events.VMRecord {
	r := &events.VMRecord{Namespace: "default", Name: name, UID: "uid-" + name, Generation: gen, Size: size,
		Spec: events.VirtualMachineSpec{Networks: []string{"default"}}}
	r.SetCondition(events.VMConditionScheduled, events.ConditionFalse, "Unschedulable", "0/3 hosts are available", time.Now())
	for _, m := range mutate {
		m(r)
	}
	testenv.Put(e.Env, events.BucketVMs, events.VMRecordKey("default", name), r)
	return r
}

// runningVM accepts a VM of the given size, waits for its vm.scheduled and
// writes the provisioner's record of the VM running on the host it was
// placed on, changed by mutate. It returns the VM and its placement.
func (e *env) runningVM(name string, size events.VMSize, mutate ...func(*events.VMRecord)) (*events.VMAccepted, *events.VMScheduled) {
	e.T.Helper()
	acc := &events.VMAccepted{VMRef: events.VMRef{Namespace: "default", Name: name, UID: "uid-" + name}, Generation: 1,
		Spec: events.VirtualMachineSpec{ClassName: "small", ImageName: "ubuntu", PowerState: events.PowerStatePoweredOn, Networks: []string{"default"}},
		Size: size}
	e.PublishAs("podvisor/provisioner", events.TypeVMAccepted, acc.ObjectKey(), acc)
	var placed *events.VMScheduled
	e.EventuallyWithin("vm.scheduled", 10*time.Second, func() bool { placed = e.vmScheduled(acc.UID); return placed != nil })
	e.waitingVM(acc.Name, 1, acc.Size, func(r *events.VMRecord) {
		r.UID, r.Spec, r.Status.Conditions = acc.UID, acc.Spec, nil
		r.ScheduledGeneration, r.Status.Phase, r.Status.Host = 1, events.VMPhaseReady, placed.Host
		for _, m := range mutate {
			m(r)
		}
	})
	return acc, placed
}

// vmPlacements are the vm.scheduled of the VM uid, each event id once.
func (e *env) vmPlacements(uid string) []*events.VMScheduled {
	return testenv.Distinct(e.Env, func(s *events.VMScheduled) bool { return s.UID == uid })
}

// vmScheduled is the last vm.scheduled of the VM uid (nil if none).
func (e *env) vmScheduled(uid string) *events.VMScheduled {
	got := e.vmPlacements(uid)
	if len(got) == 0 {
		return nil
	}
	return got[len(got)-1]
}

// A VM held in the ledger by a dead replica without a placement on its
// record, and resized since (a new generation of another size), is placed
// at its new size: the host it is held on was checked for the old size
// only and has no room for the new one, so the VM goes to another host
// and the room held for the old size is freed.
func TestAResizedVMHeldByADeadReplicaIsPlacedAtItsNewSize(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 3, cfg: func(c *scheduler.Config) {
		c.PendingRescan = 200 * time.Millisecond
	}})
	host := e.HostNames("")[0]
	capMiB := e.hostRecords()[host].MemoryCapacityBytes >> 20
	// What the dead replica left is written while no scheduler runs: the
	// next one reads the whole ledger before its rescan, so it never takes
	// the resized VM for one placed nowhere on a host it thinks empty.
	e.stop()
	// A VM running on the host takes half its memory; the resized VM
	// needs more than the other half, and fits on an empty host.
	half := capMiB / 2 &^ 3
	e.waitingVM("running", 1, events.VMSize{CPUs: 1, MemoryMiB: half}, func(r *events.VMRecord) {
		r.Status.Conditions = nil
		r.ScheduledGeneration, r.Status.Phase, r.Status.Host = 1, events.VMPhaseReady, host
	})
	e.holdBound(host, "running", "uid-running", 1000, half<<20)
	old := events.VMSize{CPUs: 1, MemoryMiB: 512}
	resized := e.waitingVM("resized", 2, events.VMSize{CPUs: 2, MemoryMiB: capMiB - half + 512})
	e.holdBound(host, "resized", resized.UID, old.CPUMilli(), old.MemoryBytes())
	e.stop = e.startScheduler()

	var s *events.VMScheduled
	e.EventuallyWithin("vm.scheduled of the resized VM", 10*time.Second, func() bool { s = e.vmScheduled(resized.UID); return s != nil })
	if s.Host == host || s.Generation != 2 {
		t.Fatalf("vm.scheduled on %s for generation %d, want another host than %s (no room there for generation 2's size) and 2", s.Host, s.Generation, host)
	}
	if _, still := e.allocations(host)[resized.UID]; still {
		t.Errorf("%s still holds the room reserved for the old size", host)
	}
	if a := e.allocations(s.Host)[resized.UID]; a.CPUMilli != resized.Size.CPUMilli() || a.MemoryBytes != resized.Size.MemoryBytes() {
		t.Errorf("%s holds %dm, %d MiB for the VM, want its new size %dm, %d MiB", s.Host, a.CPUMilli, a.MemoryBytes>>20, resized.Size.CPUMilli(), resized.Size.MemoryMiB)
	}
}

// A placed native VM evicted from a lost host is placed again on another
// host, never back on the lost one, and its room on the lost host is freed
// (as for a pod: TestEvictionPlacesAgain). The eviction may reach the
// scheduler before its own view of vCenter shows the loss (the migration
// service detects it apart): the lost host is then still connected to the
// scheduler, emptier than the others, and only the eviction keeps the VM
// off it.
func TestAnEvictedVMIsPlacedAgainElsewhere(t *testing.T) {
	for _, c := range []struct {
		name     string
		lossSeen bool
	}{{"loss seen first", true}, {"eviction ahead of the loss", false}} {
		t.Run(c.name, func(t *testing.T) { testAnEvictedVMIsPlacedAgainElsewhere(t, c.lossSeen) })
	}
}

func testAnEvictedVMIsPlacedAgainElsewhere(t *testing.T, lossSeen bool) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 3})
	acc, first := e.runningVM("ha-vm", events.VMSize{CPUs: 2, MemoryMiB: 4096})
	// A pod on every other host: once the VM's room is freed, the lost
	// host is the least allocated.
	for _, h := range e.HostNames("") {
		if h != first.Host {
			e.waitScheduled(e.accept(testPod("on-"+h, "100m", "256Mi", onHost(h))).ObjectKey())
		}
	}
	if lossSeen {
		if err := e.DC.FailHost(t.Context(), first.Host); err != nil {
			t.Fatal(err)
		}
		e.EventuallyWithin("host.lost", 10*time.Second, func() bool { return e.Events.CountAbout(events.TypeHostLost, first.Host) == 1 })
	}
	e.PublishAs("podvisor/migration", events.TypeVMEvicted, acc.ObjectKey(), &events.VMEvicted{VMRef: acc.VMRef, Host: first.Host, Reason: "HostLost"})
	var again *events.VMScheduled
	e.EventuallyWithin("placed again", 10*time.Second, func() bool {
		all := e.vmPlacements(acc.UID)
		again = all[len(all)-1]
		return len(all) == 2
	})
	if again.Host == first.Host {
		t.Fatalf("placed again on %s, the host it was evicted from", again.Host)
	}
	if _, still := e.allocations(first.Host)[acc.UID]; still {
		t.Error("the lost host's ledger still holds the evicted VM")
	}
	if _, ok := e.allocations(again.Host)[acc.UID]; !ok {
		t.Error("the new host's ledger does not hold the VM")
	}
	if b, ok, err := e.led.GetBinding(t.Context(), acc.UID); err != nil || !ok || b.Host != again.Host {
		t.Errorf("binding %+v (found %v, %v), want it on %s", b, ok, err, again.Host)
	}
}
