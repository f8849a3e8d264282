package scheduler_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/vmware/govmomi/simulator"
	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler"
	"github.com/podvisor/podvisor/shared/testenv"
)

func withNetworks(n string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Annotations = map[string]string{events.AnnotationNetworks: n}
	}
}

func onHost(h string) func(*corev1.Pod) {
	return func(p *corev1.Pod) { p.Spec.NodeSelector = map[string]string{"podvisor.io/host": h} }
}

func (e *env) clusterHosts(cluster string) []string {
	var out []string
	for _, h := range e.DC.Hosts() {
		if h.Cluster == cluster {
			out = append(out, h.Name)
		}
	}
	return out
}

func (e *env) waitScheduled(key string) *events.PodScheduled {
	e.T.Helper()
	var s *events.PodScheduled
	e.EventuallyWithin("pod.scheduled of "+key, 10*time.Second, func() bool { s = e.Scheduled(key); return s != nil })
	return s
}

func (e *env) waitUnschedulable(key string) *events.PodUnschedulable {
	e.T.Helper()
	var u *events.PodUnschedulable
	e.EventuallyWithin("pod.unschedulable of "+key, 10*time.Second, func() bool { u = e.Unschedulable(key); return u != nil })
	return u
}

func (e *env) allocations(host string) map[string]events.Allocation {
	e.T.Helper()
	entry, err := e.led.Get(context.Background(), host)
	if err != nil {
		e.T.Fatal(err)
	}
	return entry.Allocations
}

// Migration placement: a target without the pod's network is refused
// naming the network; without a target one is chosen (never the source)
// and reserved; completion moves the allocation; failure releases it.
func TestMigrationPlacement(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 2, hostsPerCluster: 2})
	c1, c2 := e.clusterHosts("cluster-1"), e.clusterHosts("cluster-2")
	e.PutNetwork("frontend", c1[:1], c1) // realized on one host, in scope on cluster-1
	acc := e.accept(testPod("web", "1", "2Gi", withNetworks("default,frontend")))
	s := e.waitScheduled(acc.ObjectKey())
	if s.Cluster != "cluster-1" {
		t.Fatalf("pod on frontend placed in %s, frontend is only in cluster-1", s.Cluster)
	}
	if s.Host != c1[0] {
		t.Errorf("placed on %s, want %s where frontend is already realized", s.Host, c1[0])
	}
	source := s.Host
	e.EventuallyWithin("host record lists realized networks", 5*time.Second, func() bool {
		r := e.hostRecords()[c1[0]]
		return strings.Join(r.PodNetworks, ",") == "default,frontend"
	})
	rec := &events.PodRecord{UID: acc.UID, Namespace: "default", Name: "web", Pod: acc.Pod, Size: acc.Size,
		Networks: acc.Networks, Phase: events.PodPhaseRunning, Host: source, RequestID: "req-web"}
	e.PutPodRecord(rec)

	request := func(id, target string) (string, any) {
		t.Helper()
		e.PublishAs("podvisor/cli", events.TypeMigrationRequested, acc.ObjectKey(), &events.MigrationRequested{MigrationRef: events.MigrationRef{ID: id, Namespace: "default", Pod: "web"}, TargetHost: target})
		var got any
		var typ string
		e.EventuallyWithin("answer to migration "+id, 10*time.Second, func() bool {
			ev, ok := e.MigrationAnswer(id)
			if ok {
				typ = ev.Type()
				got, _ = events.Decode(ev.Type(), ev.Data())
			}
			return ok
		})
		return typ, got
	}

	typ, got := request("m1", c2[0])
	rej, ok := got.(*events.MigrationRejected)
	if typ != events.TypeMigrationRejected || !ok || rej.Reason != "NetworkNotOnHost" || !strings.Contains(rej.Message, "frontend") {
		t.Fatalf("to cluster-2: %s %+v, want a rejection naming frontend", typ, got)
	}
	if _, got = request("m0", source); got.(*events.MigrationRejected).Reason != scheduler.ReasonSameHost {
		t.Errorf("to the source itself: %+v", got)
	}

	typ, got = request("m2", "")
	res, ok := got.(*events.MigrationTargetReserved)
	if !ok || res.TargetHost != c1[1] || res.SourceHost != source || res.UID != acc.UID || res.TargetPool == "" {
		t.Fatalf("no target given: %s %+v, want reserved on %s", typ, got, c1[1])
	}
	if a, ok := e.allocations(c1[1])[acc.UID+"@m2"]; !ok || a.Kind != events.AllocationMigration {
		t.Fatalf("target ledger: %v", e.allocations(c1[1]))
	}
	if _, ok := e.allocations(source)[acc.UID]; !ok {
		t.Fatal("the source allocation went away before the migration completed")
	}

	e.PublishAs("podvisor/migration", events.TypeMigrationCompleted, acc.ObjectKey(), &events.MigrationCompleted{MigrationRef: events.MigrationRef{ID: "m2", Namespace: "default", Pod: "web"},
		MigrationMove: events.MigrationMove{UID: acc.UID, SourceHost: source, TargetHost: c1[1], TargetCluster: "cluster-1"}})
	e.EventuallyWithin("allocation moved", 10*time.Second, func() bool {
		a, onTarget := e.allocations(c1[1])[acc.UID]
		_, onSource := e.allocations(source)[acc.UID]
		return onTarget && a.Kind == events.AllocationPod && !onSource
	})

	rec.Host = c1[1]
	e.PutPodRecord(rec)
	if _, got = request("m3", ""); got.(*events.MigrationTargetReserved).TargetHost != source {
		t.Fatalf("m3: %+v", got)
	}
	e.PublishAs("podvisor/migration", events.TypeMigrationFailed, acc.ObjectKey(), &events.MigrationFailed{MigrationRef: events.MigrationRef{ID: "m3", Namespace: "default", Pod: "web"},
		UID: acc.UID, SourceHost: c1[1], TargetHost: source, Reason: "RelocateFailed", Message: "injected"})
	e.EventuallyWithin("reservation released", 10*time.Second, func() bool { return len(e.allocations(source)) == 0 })
}

// A lost host is announced, excluded, and schedulable again once it
// recovers; a cordon does the same for a healthy host. Pending pods are
// placed again without further input.
// Host state is seen both through the vCenter watch (the default) and by
// polling (InventoryPoll, what `podvisor up` uses on the simulator).
func TestHostLostCordonedRecovered(t *testing.T) {
	for _, mode := range []struct {
		name string
		poll time.Duration
	}{{"watch", 0}, {"poll", 200 * time.Millisecond}} {
		t.Run(mode.name, func(t *testing.T) {
			testHostLostCordonedRecovered(t, func(c *scheduler.Config) { c.InventoryPoll = mode.poll })
		})
	}
}

func testHostLostCordonedRecovered(t *testing.T, cfg func(*scheduler.Config)) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 3, cfg: cfg})
	host := e.HostNames("")[0]
	ctx := context.Background()
	if err := e.DC.FailHost(ctx, host); err != nil {
		t.Fatal(err)
	}
	e.EventuallyWithin("host.lost", 10*time.Second, func() bool { return e.Events.CountAbout(events.TypeHostLost, host) == 1 })
	e.EventuallyWithin("record Lost", 5*time.Second, func() bool { r := e.hostRecords()[host]; return r.State() == events.HostStateLost })

	pinned := e.accept(testPod("pinned", "1", "1Gi", onHost(host)))
	u := e.waitUnschedulable(pinned.ObjectKey())
	if u.Reasons["HostNotConnected"] != 1 || !strings.Contains(u.Message, "1 host not connected") {
		t.Fatalf("pinned to a lost host: %+v", u)
	}
	if err := e.DC.RecoverHost(ctx, host); err != nil {
		t.Fatal(err)
	}
	e.EventuallyWithin("host.recovered", 10*time.Second, func() bool { return e.Events.CountAbout(events.TypeHostRecovered, host) == 1 })
	if s := e.waitScheduled(pinned.ObjectKey()); s.Host != host {
		t.Fatalf("placed on %s", s.Host)
	}

	// Cordon: no new pods; uncordon: the waiting pod goes there.
	e.PublishAs("podvisor/migration", events.TypeHostCordoned, host, &events.HostCordoned{Name: host, Reason: "Drain"})
	e.EventuallyWithin("record Cordoned", 5*time.Second, func() bool { r := e.hostRecords()[host]; return r.State() == events.HostStateCordoned })
	second := e.accept(testPod("pinned-2", "1", "1Gi", onHost(host)))
	if u := e.waitUnschedulable(second.ObjectKey()); u.Reasons["HostCordoned"] != 1 {
		t.Fatalf("pinned to a cordoned host: %+v", u)
	}
	e.PublishAs("podvisor/migration", events.TypeHostUncordoned, host, &events.HostUncordoned{Name: host})
	if s := e.waitScheduled(second.ObjectKey()); s.Host != host {
		t.Fatalf("placed on %s", s.Host)
	}
	e.EventuallyWithin("host record counts both pods", 5*time.Second, func() bool {
		r := e.hostRecords()[host]
		return r.Pods == 2 && r.AllocatedMemoryBytes == 2*int64(events.SizePodVM(second.Pod.DeepCopy()).MemoryMiB)<<20
	})
}

// An evicted pod's allocation on the lost host is released and the pod is
// placed again elsewhere.
func TestEvictionPlacesAgain(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 3})
	acc := e.accept(testPod("ha", "2", "4Gi"))
	first := e.waitScheduled(acc.ObjectKey())
	if err := e.DC.FailHost(context.Background(), first.Host); err != nil {
		t.Fatal(err)
	}
	e.EventuallyWithin("host.lost", 10*time.Second, func() bool { return e.Events.CountAbout(events.TypeHostLost, first.Host) == 1 })
	e.PublishAs("podvisor/migration", events.TypePodEvicted, acc.ObjectKey(), &events.PodEvicted{PodRef: events.PodRef{Namespace: "default", Name: "ha", UID: acc.UID},
		Host: first.Host, Reason: "HostLost"})
	var again *events.PodScheduled
	e.EventuallyWithin("placed again", 10*time.Second, func() bool {
		again = e.Scheduled(acc.ObjectKey())
		return again.Host != first.Host
	})
	if _, still := e.allocations(first.Host)[acc.UID]; still {
		t.Error("the lost host's ledger still holds the evicted pod")
	}
	if _, ok := e.allocations(again.Host)[acc.UID]; !ok {
		t.Error("the new host's ledger does not hold the pod")
	}
}

func TestConfigValidation(t *testing.T) {
	c := scheduler.DefaultConfig()
	c.Strategy, c.BatchSize, c.RetryMax, c.InventoryPoll = "pack", 0, time.Millisecond, time.Millisecond
	err := c.Validate()
	for _, want := range []string{`Strategy "pack": must be`, "BatchSize 0: must", "RetryMax 1ms: must be at least RetryInitial 1s", "InventoryPoll 1ms: must"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
	t.Setenv(scheduler.EnvStrategy, "binpack")
	t.Setenv(scheduler.EnvCPUOvercommit, "1.5")
	t.Setenv(scheduler.EnvResync, "soon")
	if _, err := scheduler.ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), scheduler.EnvResync) {
		t.Errorf("bad duration: %v", err)
	}
	t.Setenv(scheduler.EnvResync, "10s")
	t.Setenv(scheduler.EnvInventoryPoll, "2s")
	c, err = scheduler.ConfigFromEnv()
	if err != nil || c.Strategy != "binpack" || c.CPUOvercommit != 1.5 || c.ResyncInterval != 10*time.Second || c.InventoryPoll != 2*time.Second {
		t.Errorf("from env: %+v, %v", c, err)
	}
	if _, err := scheduler.New(scheduler.DefaultConfig(), scheduler.Deps{}); err == nil || !strings.Contains(err.Error(), "Deps.Bus") || !strings.Contains(err.Error(), "Deps.VSphere") {
		t.Errorf("missing deps: %v", err)
	}
}

// A pod whose network exists nowhere waits saying so (not blaming every
// host), and is placed
// as soon as network-config realizes the network (its read model changes
// and network.host.ready arrives), with no retry backoff in the way.
func TestNetworkReadyRetriesAtOnce(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 2, cfg: func(c *scheduler.Config) {
		c.RetryInitial, c.RetryMax = time.Minute, time.Minute // only a kick can place the pod in time
	}})
	acc := e.accept(testPod("db", "1", "1Gi", withNetworks("db")))
	u := e.waitUnschedulable(acc.ObjectKey())
	if u.Reasons["NetworkNotFound"] != 2 || u.Message != `0/2 hosts: 2 network "db" does not exist` {
		t.Fatalf("%+v", u)
	}
	host := e.HostNames("")[1]
	e.PutNetwork("db", []string{host}, []string{host})
	e.PublishAs("podvisor/netconfig", events.TypeNetworkHostReady, "db", &events.NetworkHostReady{Name: "db", Version: 1, Host: host, PortGroup: "pv-db"})
	if s := e.waitScheduled(acc.ObjectKey()); s.Host != host {
		t.Fatalf("placed on %s, db is only on %s", s.Host, host)
	}
}

// Polling the inventory does not rewrite host records that did not change:
// a record's UpdatedAt stays put across polls (the one that recorded the
// other host's loss is the fact that a poll ran), and moves when the host
// does.
func TestPollingLeavesUnchangedRecordsAlone(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 2,
		cfg: func(c *scheduler.Config) { c.InventoryPoll = 100 * time.Millisecond }})
	host, other := e.HostNames("")[0], e.HostNames("")[1]
	first := e.hostRecords()[host].UpdatedAt
	if err := e.DC.FailHost(context.Background(), other); err != nil {
		t.Fatal(err)
	}
	e.EventuallyWithin("the other host's record Lost", 5*time.Second, func() bool { r := e.hostRecords()[other]; return r.State() == events.HostStateLost })
	if now := e.hostRecords()[host].UpdatedAt; !now.Equal(first) {
		t.Fatalf("an unchanged host's record was rewritten (updatedAt %s → %s)", first, now)
	}
	if err := e.DC.FailHost(context.Background(), host); err != nil {
		t.Fatal(err)
	}
	e.EventuallyWithin("record Lost", 5*time.Second, func() bool { r := e.hostRecords()[host]; return r.State() == events.HostStateLost })
}

// A ledger update that leaves a host's totals as they were (here an entry
// written again unchanged) does not rewrite the host's record: every write
// is a message the server syncs to disk. A real change to another host,
// folded after it, is written.
func TestUnchangedTotalsLeaveTheRecordAlone(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 2})
	host, other := e.HostNames("")[0], e.HostNames("")[1]
	ctx := context.Background()
	first := e.hostRecords()[host].UpdatedAt
	if _, err := e.led.Mutate(ctx, host, func(*events.LedgerEntry) (bool, error) { return true, nil }); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.led.SetCordon(ctx, other, true); err != nil {
		t.Fatal(err)
	}
	e.EventuallyWithin("the other host's record Cordoned", 5*time.Second, func() bool {
		r := e.hostRecords()[other]
		return r.State() == events.HostStateCordoned
	})
	if now := e.hostRecords()[host].UpdatedAt; !now.Equal(first) {
		t.Fatalf("a host record whose facts did not change was rewritten (updatedAt %s → %s)", first, now)
	}
}

// Allocation totals wait for the record interval, but what vCenter says of
// a host is written at once: with an interval of an hour, every discovered
// host has its record, and a host that enters maintenance mode says so.
func TestHostStateIsWrittenWithoutWaitingForTheInterval(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 2, cfg: func(c *scheduler.Config) {
		c.HostRecordInterval = time.Hour
	}})
	names := e.HostNames("")
	e.EventuallyWithin("a record for every discovered host", 10*time.Second, func() bool {
		return len(e.hostRecords()) == len(names)
	})
	if err := e.DC.SetMaintenance(context.Background(), names[0], true); err != nil {
		t.Fatal(err)
	}
	e.EventuallyWithin(names[0]+"'s record in maintenance", 10*time.Second, func() bool {
		r := e.hostRecords()[names[0]]
		return r.Maintenance
	})
}

// A migration request delivered again after its migration completed (the
// first delivery's answer lost) reserves nothing: the pod runs on the old
// target by then, so a placement would hold room on another host for a
// migration that is over (the 11:25 full run's two held reservations).
func TestRequestOfAnEndedMigrationReservesNothing(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 2})
	h := e.HostNames("")
	acc := e.accept(testPod("moved", "100m", "256Mi"))
	if s := e.waitScheduled(acc.ObjectKey()); s.Host != h[1] {
		h[0], h[1] = h[1], h[0] // h[1] is where it runs, h[0] where it came from
	}
	e.PutPodRecord(&events.PodRecord{UID: acc.UID, Namespace: "default", Name: "moved", Pod: acc.Pod, Size: acc.Size,
		Networks: acc.Networks, Phase: events.PodPhaseRunning, Host: h[1], RequestID: "req-moved"})
	testenv.Put(e.Env, events.BucketMigrations, events.MigrationRecordKey("m-done"), &events.MigrationRecord{
		ID: "m-done", Namespace: "default", Pod: "moved", UID: acc.UID, SourceHost: h[0], TargetHost: h[1], Phase: events.MigrationPhaseCompleted})
	seq := e.PublishAs("podvisor/cli", events.TypeMigrationRequested, acc.ObjectKey(), &events.MigrationRequested{MigrationRef: events.MigrationRef{ID: "m-done", Namespace: "default", Pod: "moved"}})
	e.WaitHandled(events.StreamMigrations, scheduler.Name+"-"+events.StreamMigrations, seq)
	if ev, ok := e.MigrationAnswer("m-done"); ok && ev.Type() == events.TypeMigrationTargetReserved {
		t.Errorf("a target was reserved for the ended migration: %s", ev.Data())
	}
	for _, host := range h {
		if _, held := e.allocations(host)[acc.UID+"@m-done"]; held {
			t.Errorf("room reserved on %s for the ended migration", host)
		}
	}
}

// Uncordon, then an immediate migrate: the migration service takes the
// host out of maintenance mode before it announces host.uncordoned, but the
// scheduler's view of vCenter comes from the update stream, which lags, so
// the request was rejected HostInMaintenance by a host vCenter already had
// out of it. A named target refused for its vCenter state is read from
// vCenter again before the refusal; one still in maintenance is refused.
func TestMigrationToAHostJustOutOfMaintenanceIsTaken(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 2})
	h := e.HostNames("")
	acc := e.accept(testPod("web", "100m", "256Mi"))
	source := e.waitScheduled(acc.ObjectKey()).Host
	target := h[0]
	if target == source {
		target = h[1]
	}
	rec := testenv.PendingRecord(acc)
	rec.Phase, rec.Host = events.PodPhaseRunning, source
	e.PutPodRecord(rec)
	if err := e.DC.SetMaintenance(t.Context(), target, true); err != nil {
		t.Fatal(err)
	}
	e.EventuallyWithin(target+"'s record in maintenance", 10*time.Second, func() bool { return e.hostRecords()[target].Maintenance })
	migrate := func(id string) event.Event {
		t.Helper()
		e.PublishAs("podvisor/cli", events.TypeMigrationRequested, acc.ObjectKey(), &events.MigrationRequested{
			MigrationRef: events.MigrationRef{ID: id, Namespace: "default", Pod: "web"}, TargetHost: target})
		var ev event.Event
		e.EventuallyWithin("an answer to "+id, 10*time.Second, func() bool {
			var ok bool
			ev, ok = e.MigrationAnswer(id)
			return ok
		})
		return ev
	}
	if ev := migrate("m-in"); ev.Type() != events.TypeMigrationRejected || !strings.Contains(string(ev.Data()), "HostInMaintenance") {
		t.Fatalf("migration to a host in maintenance: %s %s, want rejected HostInMaintenance", ev.Type(), ev.Data())
	}

	// vCenter takes the host out of maintenance; the update stream has not
	// said so yet (written under the simulator's lock, no update sent).
	m := e.DC.Model()
	c := *m.Service.Context
	c.Context = t.Context()
	for _, o := range m.Map().All("HostSystem") {
		if hs, ok := o.(*simulator.HostSystem); ok && hs.Name == target {
			m.Map().WithLock(&c, hs, func() { hs.Runtime.InMaintenanceMode = false })
		}
	}
	if ev := migrate("m-out"); ev.Type() != events.TypeMigrationTargetReserved {
		t.Fatalf("migration to a host just out of maintenance: %s %s, want the target reserved", ev.Type(), ev.Data())
	}
	if _, held := e.allocations(target)[acc.UID+"@m-out"]; !held {
		t.Errorf("no reservation on %s for m-out", target)
	}
}
