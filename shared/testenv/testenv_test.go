package testenv_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/testenv"
)

// cordoner is a small service on the bus: a lost host is cordoned; a host
// named "bad" is refused.
func cordoner(e *testenv.Env) func(context.Context) error {
	out := e.Bus.Emitter("podvisor/scheduler")
	r := bus.NewRouter("cordoner", testenv.Logger())
	bus.Handle(r, func(ctx context.Context, m *bus.Message, p *events.HostLost) error {
		if p.Name == "bad" {
			return bus.Permanent(errors.New("host bad is refused"))
		}
		return out.Emit(ctx, &m.Event, &events.HostCordoned{Name: p.Name, Reason: "Lost"})
	})
	return func(ctx context.Context) error { return r.Run(ctx, e.Bus, bus.ConsumerConfig{}, nil) }
}

func TestEnvWaitsOnFacts(t *testing.T) {
	e := testenv.Start(t)
	e.Run("cordoner", cordoner(e))
	e.Publish(&events.HostLost{Name: "esx-1", Cluster: "c1", Reason: "NotResponding"})
	c := testenv.Wait(e, func(p *events.HostCordoned) bool { return p.Name == "esx-1" })
	if c.Reason != "Lost" {
		t.Errorf("cordoned %+v, want reason Lost", c)
	}
	// The refusal is handled (the ack floor passes it) before "nothing was
	// cordoned" is asserted, and it is dead-lettered with its reason.
	seq := e.PublishHandled("cordoner", &events.HostLost{Name: "bad", Cluster: "c1", Reason: "NotResponding"})
	if n := len(testenv.All(e, func(p *events.HostCordoned) bool { return p.Name == "bad" })); n != 0 {
		t.Errorf("%d host.cordoned for a refused host, want 0", n)
	}
	if dl := e.WaitDeadLetter("cordoner", "refused"); dl.StreamSeq != seq {
		t.Errorf("dead letter of sequence %d, want %d", dl.StreamSeq, seq)
	}
	if n := testenv.CountIDs(e, func(*events.HostCordoned) bool { return true }); n != 1 {
		t.Errorf("%d distinct host.cordoned, want 1", n)
	}
}

func TestEnvRecordsAndParts(t *testing.T) {
	e := testenv.Start(t, testenv.Datacenter(sim.Config{Clusters: 1, HostsPerCluster: 2}), testenv.Redis())
	if len(e.DC.Hosts()) != 2 {
		t.Errorf("datacenter has %d hosts, want 2", len(e.DC.Hosts()))
	}
	if err := e.Redis.Ping(context.Background()).Err(); err != nil {
		t.Errorf("redis: %v", err)
	}
	rec := &events.HostRecord{HostInfo: events.HostInfo{Name: "esx-1", Cluster: "c1"}}
	testenv.Put(e, events.BucketHosts, events.HostRecordKey("esx-1"), rec)
	if got := testenv.Get[events.HostRecord](e, events.BucketHosts, events.HostRecordKey("esx-1")); got == nil || got.Name != "esx-1" {
		t.Errorf("Get = %+v, want esx-1's record", got)
	}
	if got := testenv.Get[events.HostRecord](e, events.BucketHosts, "nope"); got != nil {
		t.Errorf("Get of a missing key = %+v, want nil", got)
	}
	if all := testenv.List[events.HostRecord](e, events.BucketHosts); len(all) != 1 {
		t.Errorf("List = %v, want one record", all)
	}
}

// The recorder does not listen on request subjects: a request nobody
// serves is told so at once, as in a deployment, rather than waiting for a
// listener that never answers.
func TestRecorderLeavesRequestsAlone(t *testing.T) {
	e := testenv.Start(t)
	_, err := e.Bus.Conn().Request(events.SubjectQueryNetworkAvailable, []byte(`{}`), 5*time.Second)
	if !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("request with only the recorder listening: %v, want %v", err, nats.ErrNoResponders)
	}
	// Events of every stream are still recorded, in the order published.
	e.Publish(&events.HostLost{Name: "esx-1", Cluster: "c1", Reason: "NotResponding"})
	e.Publish(&events.HostCordoned{Name: "esx-1", Reason: "Lost"})
	testenv.Wait(e, func(p *events.HostCordoned) bool { return p.Name == "esx-1" })
	seen := e.Events.Seen()
	if len(seen) != 2 || seen[0].Event.Type() != events.TypeHostLost || seen[1].Event.Type() != events.TypeHostCordoned {
		t.Errorf("recorded %s, want host.lost then host.cordoned", e.Events.Summary())
	}
}

// A stand-in follows the bus once per event id, even when an event is
// published twice; Distinct and WaitSeen read it the same way; Accept
// writes the record before it announces the pod.
func TestFollowDistinctAndAccept(t *testing.T) {
	e := testenv.Start(t)
	var mu sync.Mutex
	var followed []string
	e.Follow(func(s testenv.Seen) {
		mu.Lock()
		followed = append(followed, s.Event.Type())
		mu.Unlock()
		if _, ok := s.Payload.(*events.HostLost); ok {
			if _, err := e.TryPublish("podvisor/scheduler", events.TypeHostCordoned, "esx-1", &events.HostCordoned{Name: "esx-1", Reason: "Lost"}); err != nil {
				t.Errorf("publish from the stand-in: %v", err)
			}
		}
	})
	ev, err := bus.NewEvent("podvisor/inventory", events.TypeHostLost, "esx-1", &events.HostLost{Name: "esx-1", Cluster: "c1", Reason: "NotResponding"})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := e.Bus.Publish(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	s := e.WaitSeen(5*time.Second, "host.cordoned", func(s testenv.Seen) bool { return s.Event.Type() == events.TypeHostCordoned })
	if p := s.Payload.(*events.HostCordoned); p.Name != "esx-1" {
		t.Errorf("cordoned %+v", p)
	}
	e.Eventually("both followed", func() bool { mu.Lock(); defer mu.Unlock(); return len(followed) == 2 })
	// The second publication reaches the recorder in its own time: the
	// stand-in may answer the first before it arrives.
	e.Eventually("host.lost recorded twice (published twice)", func() bool { return e.Events.Count(events.TypeHostLost) == 2 })
	if n := len(testenv.Distinct(e, func(*events.HostLost) bool { return true })); n != 1 {
		t.Errorf("Distinct host.lost = %d, want 1", n)
	}

	pod := testenv.Pod("web", "registry.local/web:1")
	acc := testenv.Accepted(pod)
	if err := acc.Validate(); err != nil {
		t.Fatalf("Accepted is not a valid pod.accepted: %v", err)
	}
	e.Accept(acc)
	got := testenv.Wait(e, func(p *events.PodAccepted) bool { return p.Name == "web" })
	rec := testenv.Get[events.PodRecord](e, events.BucketPods, events.PodRecordKey("default", "web"))
	if rec == nil || rec.UID != got.UID || rec.Phase != events.PodPhasePending || got.UID != testenv.UID("web") {
		t.Errorf("record %+v for accepted %+v, want a Pending record of uid-web", rec, got)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{events.TypeHostLost, events.TypeHostCordoned}; len(followed) < 2 || followed[0] != want[0] || followed[1] != want[1] {
		t.Errorf("followed %v, want %v first", followed, want)
	}
}

// The scheduler's word as the recorder saw it: the latest placement, an
// unschedulable since it, and a migration's answer.
func TestDecisionIsTheLatestWord(t *testing.T) {
	e := testenv.Start(t)
	web := events.PodRef{Namespace: "default", Name: "web", UID: "uid-web"}
	key := events.PodKey("default", "web")
	e.Publish(&events.PodScheduled{PodRef: web, Host: "esx-1", Cluster: "c1"})
	e.Publish(&events.PodScheduled{PodRef: web, Host: "esx-2", Cluster: "c1"})
	e.Publish(&events.MigrationRejected{MigrationRef: events.MigrationRef{ID: "m1", Namespace: "default", Pod: "web"}, Reason: "NoTarget", Message: "none"})
	e.WaitFor("the three events", 10*time.Second, func(seen []testenv.Seen) bool { return len(seen) >= 3 })
	if s, u := e.Decision(key); s == nil || s.Host != "esx-2" || u != nil {
		t.Errorf("decision %+v %+v, want the placement on esx-2", s, u)
	}
	if n := len(e.ScheduledAll(key)); n != 2 {
		t.Errorf("%d placements, want 2", n)
	}
	if ev, ok := e.MigrationAnswer("m1"); !ok || ev.Type() != events.TypeMigrationRejected {
		t.Errorf("migration answer %v %v, want migration.rejected", ev.Type(), ok)
	}
	e.Publish(&events.PodUnschedulable{PodRef: web, Message: "0/2 hosts"})
	e.EventuallyWithin("unschedulable recorded", 10*time.Second, func() bool { return e.Unschedulable(key) != nil })
	if e.Scheduled(key) == nil || e.Decided([]string{key, events.PodKey("default", "other")}) != 1 {
		t.Errorf("after unschedulable: scheduled %v, decided %d; want the placement kept and one pod decided",
			e.Scheduled(key), e.Decided([]string{key, events.PodKey("default", "other")}))
	}
}
