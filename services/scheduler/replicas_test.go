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

// Two scheduler replicas share the durable consumers, so a host.cordoned is
// handled by one of them and the pods that follow by either. The cordon is
// in the ledger, which both follow: every pod pinned to the cordoned host is
// refused HostCordoned whichever replica places it. When one replica stops,
// the pods it held waiting are taken up by the other's rescan of the
// Unschedulable records, and the uncordon (handled by the survivor) places
// them all.
func TestCordonThroughOneReplicaIsHonouredByTheOther(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 2, cfg: func(c *scheduler.Config) {
		c.PendingRescan = 200 * time.Millisecond
		c.RetryInitial, c.RetryMax = 5*time.Second, 10*time.Second // only kicks and rescans retry
	}})
	stopA := e.stop
	stopB := e.startScheduler()
	host := e.HostNames("")[0]
	e.PublishAs("podvisor/migration", events.TypeHostCordoned, host, &events.HostCordoned{Name: host, Reason: "Drain"})
	e.EventuallyWithin("cordon in the ledger", 5*time.Second, func() bool {
		entry, err := e.led.Get(t.Context(), host)
		return err == nil && entry.Cordoned
	})
	e.EventuallyWithin("cordon on the host record", 5*time.Second, func() bool { return e.hostRecords()[host].Cordoned })

	var pods []*events.PodAccepted
	for i := range 16 {
		acc := e.accept(testPod(fmt.Sprintf("pinned-%02d", i), "100m", "256Mi", onHost(host)))
		pods = append(pods, acc)
	}
	for _, acc := range pods {
		u := e.waitUnschedulable(acc.ObjectKey())
		if u.Reasons["HostCordoned"] != 1 {
			t.Fatalf("%s on a host cordoned through another replica: %+v", acc.ObjectKey(), u)
		}
		// As the provisioner does on pod.unschedulable.
		e.PutPodRecord(&events.PodRecord{UID: acc.UID, Namespace: acc.Namespace, Name: acc.Name, Pod: acc.Pod,
			Size: acc.Size, Networks: acc.Networks, Phase: events.PodPhasePending, RequestID: "req-" + acc.Name,
			Reason: "Unschedulable", Message: u.Message})
	}
	entry, err := e.led.Get(t.Context(), host)
	if err != nil {
		t.Fatal(err)
	}
	if len(entry.Allocations) != 0 {
		t.Fatalf("cordoned host holds %d allocations", len(entry.Allocations))
	}

	// Replica A stops: whatever it held waiting is taken up by B.
	stopA()
	e.stop = stopB
	e.PublishAs("podvisor/migration", events.TypeHostUncordoned, host, &events.HostUncordoned{Name: host})
	for _, acc := range pods {
		if s := e.waitScheduled(acc.ObjectKey()); s.Host != host {
			t.Errorf("%s placed on %s, want %s", acc.ObjectKey(), s.Host, host)
		}
	}
	e.EventuallyWithin("uncordon on the host record", 5*time.Second, func() bool { return !e.hostRecords()[host].Cordoned })
}

// A pod record the sweep cannot read may be the record of any allocation
// that seems to have none: while one is there the sweep frees no such
// allocation, and does the rest of its pass (a placed pod held on a host
// that is not its record's is moved back). Once the record reads, or is
// gone, the allocation without a record is freed.
func TestSweepFreesNothingForWantOfARecordWhileOneDoesNotDecode(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 2, cfg: func(c *scheduler.Config) {
		c.PendingRescan = 200 * time.Millisecond
	}})
	hosts := e.HostNames("")
	if _, err := e.KV(events.BucketPods).Put(t.Context(), "default.garbled", []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	ghost := &events.PodRecord{Namespace: "default", Name: "ghost", UID: "uid-ghost"}
	e.hold(ghost, hosts[0], "", time.Now().Add(-time.Minute))
	moved := e.placedRecord("moved", events.PodPhaseRunning, hosts[0])
	e.hold(moved, hosts[1], "", time.Now().Add(-time.Minute))
	holds := func(host, key string) bool { _, ok := e.allocations(host)[key]; return ok }
	e.EventuallyWithin("the placed pod held on its record's host", 10*time.Second, func() bool {
		return holds(hosts[0], moved.UID) && !holds(hosts[1], moved.UID)
	})
	if !holds(hosts[0], ghost.UID) {
		t.Fatal("an allocation without a record was freed while a record did not decode")
	}
	if err := e.KV(events.BucketPods).Delete(t.Context(), "default.garbled"); err != nil {
		t.Fatal(err)
	}
	e.EventuallyWithin("the allocation without a record freed", 10*time.Second, func() bool { return !holds(hosts[0], ghost.UID) })
}

// A pod deleted while another replica was placing it leaves an allocation
// nobody releases (pod.deleted found nothing to free); the rescan frees the
// allocations of pods that have no record once they are older than its
// grace, and leaves those of live pods alone.
func TestAllocationsOfPodsWithoutRecordsAreReleased(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 2, cfg: func(c *scheduler.Config) {
		c.PendingRescan = 200 * time.Millisecond
	}})
	host := e.HostNames("")[0]
	live := e.accept(testPod("live", "100m", "256Mi", onHost(host)))
	if s := e.waitScheduled(live.ObjectKey()); s.Host != host {
		t.Fatalf("live pod on %s", s.Host)
	}
	ghost := events.Allocation{Kind: events.AllocationPod, Namespace: "default", Name: "ghost", UID: "uid-ghost",
		CPUMilli: 100, MemoryBytes: 256 << 20, ReservedAt: time.Now().Add(-time.Minute)}
	// A native VM is placed in the same ledger; its record is in KV vms.
	vm := events.Allocation{Kind: events.AllocationPod, Namespace: "default", Name: "vm", UID: "uid-vm",
		CPUMilli: 1000, MemoryBytes: 1 << 30, ReservedAt: time.Now().Add(-time.Minute)}
	testenv.Put(e.Env, events.BucketVMs, events.VMRecordKey("default", "vm"), &events.VMRecord{Namespace: "default", Name: "vm", UID: vm.UID})
	if _, err := e.led.Reserve(t.Context(), host, ledger.Capacity{CPUMilli: 1 << 20, MemoryBytes: 1 << 40}, []events.Allocation{ghost, vm}); err != nil {
		t.Fatal(err)
	}
	e.EventuallyWithin("the ghost's allocation released", 10*time.Second, func() bool {
		_, held := e.allocations(host)["uid-ghost"]
		return !held
	})
	if _, held := e.allocations(host)[live.UID]; !held {
		t.Fatal("the live pod's allocation went too")
	}
	if _, held := e.allocations(host)[vm.UID]; !held {
		t.Fatal("the native VM's allocation went too")
	}
}
