package provisioner

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/testenv"
)

// A pod.requested delivered again after its pod's delete (its handler died
// or stalled past AckWait, it was retried, or a durable started again from
// the stream's start) admits nothing: the delete, stored after it, outranks
// it. A request stored after the delete is a new pod, with a new uid.
func TestARequestDeliveredAgainAfterTheDeleteAdmitsNothing(t *testing.T) {
	e, svc, host := startOnFirstHost(t)
	pod := testPod("again")
	seq := e.Send("test/client", events.TypePodRequested, &events.PodRequested{Pod: *pod})
	acc := testenv.Wait(e.Env, func(a *events.PodAccepted) bool { return a.Name == "again" })
	e.facts(acc, host)
	testenv.Wait(e.Env, func(p *events.PodVMReady) bool { return p.UID == acc.UID })
	e.Send("test/client", events.TypePodDeleteRequested, &events.PodDeleteRequested{Name: "again"})
	testenv.Wait(e.Env, func(p *events.PodDeleted) bool { return p.UID == acc.UID })
	e.waitRecord(svc, "default", "again", func(r *events.PodRecord) bool { return r == nil })

	// A redelivery, and a first delivery long after the store (a durable
	// declared again replays the stream): a replica whose clock reads
	// past the bound.
	late, err := newService(testConfig(), e.Bus, e.vms, testenv.Logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(late.templates.Close)
	stored := e.storedMsg(seq).Published
	late.now = func() time.Time { return stored.Add(firstDeliveryFresh + time.Second) }
	for _, d := range []struct {
		name     string
		svc      *Service
		delivery uint64
	}{{"a redelivery", svc, 2}, {"a late first delivery", late, 1}} {
		if err := e.deliverAgain(d.svc, seq, d.delivery); err != nil {
			t.Fatalf("%s of the request: %v", d.name, err)
		}
		if r := e.record(svc, "default", "again"); r != nil {
			t.Fatalf("%s of the request made the deleted pod again: uid %s, phase %s", d.name, r.UID, r.Phase)
		}
	}

	// The effects of the deliveries above, had there been any, were
	// published before this request's on the same connection.
	e.Send("test/client", events.TypePodRequested, &events.PodRequested{Pod: *pod})
	again := testenv.Wait(e.Env, func(a *events.PodAccepted) bool { return a.Name == "again" && a.UID != acc.UID })
	if n := len(testenv.All(e.Env, func(a *events.PodAccepted) bool { return a.UID == acc.UID })); n != 1 {
		t.Errorf("pod.accepted of the deleted pod published %d times, want once", n)
	}
	if rj := testenv.All(e.Env, func(r *events.PodRejected) bool { return r.Name == "again" }); len(rj) != 0 {
		t.Errorf("the superseded request was answered with pod.rejected: %+v", rj[0])
	}
	if r := e.record(svc, "default", "again"); r == nil || r.UID != again.UID {
		t.Errorf("record after the new request: %+v, want the new pod's (uid %s)", r, again.UID)
	}
}

// A delete whose uid precondition names another pod spared the request's
// (it was refused, or removed that other pod): the request delivered again
// still admits its pod. One naming the uid the request makes outranks it.
// No consumer runs: the test delivers every message itself.
func TestADeleteOfAnotherUIDDoesNotSupersedeTheRequest(t *testing.T) {
	e := newEnv(t)
	svc, err := newService(testConfig(), e.Bus, e.vms, testenv.Logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.templates.Close)
	pod := testPod("guarded")
	seq := e.Send("test/client", events.TypePodRequested, &events.PodRequested{Pod: *pod})
	uid := podUID(&events.PodRequested{Pod: *pod}, fmt.Sprintf("%s#%d", e.storedMsg(seq).Event.ID(), seq))
	e.Send("test/client", events.TypePodDeleteRequested, &events.PodDeleteRequested{Name: "guarded", UID: "someone-else"})

	if err := e.deliverAgain(svc, seq, 2); err != nil {
		t.Fatal(err)
	}
	if r := e.record(svc, "default", "guarded"); r == nil || r.UID != uid {
		t.Fatalf("after a delete of another uid, the request delivered again made %+v; want the pod %s", r, uid)
	}

	del := e.Send("test/client", events.TypePodDeleteRequested, &events.PodDeleteRequested{Name: "guarded", UID: uid})
	if err := e.deliverAgain(svc, del, 1); err != nil {
		t.Fatal(err)
	}
	if r := e.record(svc, "default", "guarded"); r != nil {
		t.Fatalf("record after its delete: %+v", r)
	}
	if err := e.deliverAgain(svc, seq, 3); err != nil {
		t.Fatal(err)
	}
	if r := e.record(svc, "default", "guarded"); r != nil {
		t.Errorf("the request delivered again after the delete of its pod made it again: uid %s", r.UID)
	}
}

// Only a request that may be stale reads the stream: a fresh first
// delivery, nearly every request, goes straight to the create.
func TestOnlyARequestThatMayBeStaleAsks(t *testing.T) {
	now := time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)
	s := &Service{now: func() time.Time { return now }}
	for _, tc := range []struct {
		name string
		m    bus.Message
		want bool
	}{
		{"a fresh first delivery", bus.Message{Delivery: 1, StreamSeq: 7, Published: now.Add(-20 * time.Millisecond)}, false},
		{"a first delivery behind a burst", bus.Message{Delivery: 1, StreamSeq: 7, Published: now.Add(-firstDeliveryFresh)}, false},
		{"a first delivery past the bound", bus.Message{Delivery: 1, StreamSeq: 7, Published: now.Add(-firstDeliveryFresh - time.Millisecond)}, true},
		{"a redelivery", bus.Message{Delivery: 2, StreamSeq: 7, Published: now}, true},
		{"a message not from the stream", bus.Message{Delivery: 2}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := s.mayBeStale(&tc.m); got != tc.want {
				t.Errorf("mayBeStale = %v, want %v", got, tc.want)
			}
		})
	}
}

// storedMsg is the message the pods' stream stored at seq, as the consumer
// would deliver it for the first time.
func (e *env) storedMsg(seq uint64) *bus.Message {
	e.T.Helper()
	ctx := context.Background()
	st, err := e.Bus.JetStream().Stream(ctx, events.StreamPods)
	if err != nil {
		e.T.Fatal(err)
	}
	raw, err := st.GetMsg(ctx, seq)
	if err != nil {
		e.T.Fatalf("stored message %d: %v", seq, err)
	}
	ev, err := bus.DecodeHeaders(raw.Header, raw.Data)
	if err != nil {
		e.T.Fatalf("stored message %d: %v", seq, err)
	}
	return &bus.Message{Event: ev, Key: ev.Subject(), Delivery: 1, Stream: events.StreamPods, StreamSeq: seq,
		Subject: raw.Subject, Published: raw.Time}
}

// deliverAgain runs svc's handlers on the message the pods' stream stored
// at seq, as its delivery-th delivery: what the consumer does when the
// server delivers it again.
func (e *env) deliverAgain(svc *Service, seq, delivery uint64) error {
	e.T.Helper()
	m := e.storedMsg(seq)
	m.Delivery = delivery
	return svc.routes().Handler()(context.Background(), m)
}
