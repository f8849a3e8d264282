package provisioner

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/testenv"
)

// Two replicas pull the pods' durable. Replica A is inside the admission
// of a pod's request, its record not created yet, and busy (its one worker
// held, and as many events queued as it may hold), so the delete of the pod,
// published after the request, goes to replica B, which finds no record.
// The delete waits for the request instead of answering NotFound: once A
// admits the pod, the delete removes it.
func TestADeleteThatOvertakesItsRequestOnAnotherReplicaDeletesThePod(t *testing.T) {
	e := newEnv(t)
	key := events.PodRecordKey("default", "overtaken")
	hold := newHeldCreate(key)
	cfgA := testConfig()
	cfgA.PodWorkers = 1 // it holds 4×PodWorkers events of the pods' stream at most
	e.replica(cfgA, hold.wrap)
	t.Cleanup(hold.release) // before the replica stops: it waits for the held create

	e.requestHeld(hold, testPod("overtaken"))
	// Three more events fill replica A: it fetches nothing more.
	var last uint64
	for i := range 3 {
		last = e.Send("test/client", events.TypePodRequested, &events.PodRequested{Pod: *testPod(fmt.Sprintf("filler-%d", i))})
	}
	e.Eventually("replica A to hold 4 events of the pods' stream", func() bool {
		info := e.podsConsumer()
		return info != nil && info.Delivered.Stream >= last && info.NumAckPending == 4
	})

	reads := &countedGets{key: key}
	e.replica(testConfig(), func(kv jetstream.KeyValue) jetstream.KeyValue { reads.KeyValue = kv; return reads })
	e.Send("test/client", events.TypePodDeleteRequested, &events.PodDeleteRequested{Name: "overtaken"})
	// Replica B has handled the delete: it refused it, or it is back for
	// a second look (the record was read twice).
	e.Eventually("replica B to handle the delete", func() bool {
		return reads.n.Load() >= 2 || len(testenv.All(e.Env, func(r *events.PodRejected) bool { return r.Name == "overtaken" })) > 0
	})
	hold.release()

	acc := testenv.Wait(e.Env, func(a *events.PodAccepted) bool { return a.Name == "overtaken" })
	e.Eventually("the pod deleted, or its delete refused", func() bool {
		return testenv.Get[events.PodRecord](e.Env, bus.BucketPods, key) == nil ||
			len(testenv.All(e.Env, func(r *events.PodRejected) bool { return r.Name == "overtaken" })) > 0
	})
	if rj := testenv.All(e.Env, func(r *events.PodRejected) bool { return r.Name == "overtaken" }); len(rj) > 0 {
		t.Fatalf("the delete was refused (%s: %s) and the pod %s stays", rj[0].Reason, rj[0].Message, acc.UID)
	}
	testenv.Wait(e.Env, func(d *events.PodDeleted) bool { return d.UID == acc.UID })
	if vms := e.vmsNamed(vmName(acc.UID, 0)); len(vms) != 0 {
		t.Errorf("the deleted pod has a VM: %v", vms)
	}
}

// A delete of a name never requested, while an event stored before it is
// unsettled (a request held inside its admission), looks again a bounded
// number of times and is then refused with NotFound: it does not wait for
// the stream to go quiet.
func TestADeleteOfANameNeverRequestedIsRefusedWhileEarlierEventsWait(t *testing.T) {
	e := newEnv(t)
	hold := newHeldCreate(events.PodRecordKey("default", "held"))
	reads := &countedGets{key: events.PodRecordKey("default", "ghost")}
	svc := e.replica(testConfig(), func(kv jetstream.KeyValue) jetstream.KeyValue {
		reads.KeyValue = hold.wrap(kv)
		return reads
	})
	t.Cleanup(hold.release) // before the replica stops: it waits for the held create

	e.requestHeld(hold, testPod("held"))
	e.Send("test/client", events.TypePodDeleteRequested, &events.PodDeleteRequested{Name: "ghost"})
	rj := testenv.Wait(e.Env, func(r *events.PodRejected) bool { return r.Name == "ghost" })
	if rj.Reason != events.ReasonNotFound || !strings.Contains(rj.Message, "default/ghost does not exist") {
		t.Errorf("delete of a name never requested answered %s %q; want NotFound saying it does not exist", rj.Reason, rj.Message)
	}
	if got, want := reads.n.Load(), int64(svc.overtakenDeliveries()); got != want {
		t.Errorf("the delete read the record %d times; want %d, one per delivery up to the bound", got, want)
	}
	if testenv.Get[events.PodRecord](e.Env, bus.BucketPods, events.PodRecordKey("default", "held")) != nil {
		t.Fatal("the held request was admitted before the delete was answered: the test proves nothing")
	}
}

// A delete delivered again finds no record. If its pod's delete finished
// meanwhile (pod.deleted stored after it: the guest's report finished it
// while it waited for the containers), it is acknowledged and says
// nothing; if there was never such a pod, it is refused with NotFound, as
// on its first delivery. No consumer runs: the test delivers every message
// itself.
func TestADeleteDeliveredAgainWithoutARecord(t *testing.T) {
	e := newEnv(t)
	svc, err := newService(testConfig(), e.Bus, e.vms, testenv.Logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.templates.Close)

	req := e.Send("test/client", events.TypePodRequested, &events.PodRequested{Pod: *testPod("done")})
	del := e.Send("test/client", events.TypePodDeleteRequested, &events.PodDeleteRequested{Name: "done"})
	for _, seq := range []uint64{req, del} {
		if err := e.deliverAgain(svc, seq, 1); err != nil {
			t.Fatalf("delivery of %d: %v", seq, err)
		}
	}
	testenv.Wait(e.Env, func(d *events.PodDeleted) bool { return d.Name == "done" })
	if err := e.deliverAgain(svc, del, 2); err != nil {
		t.Fatalf("the finished delete delivered again: %v; want it acknowledged", err)
	}

	ghost := e.Send("test/client", events.TypePodDeleteRequested, &events.PodDeleteRequested{Name: "ghost"})
	if err := e.deliverAgain(svc, ghost, 2); err != nil {
		t.Fatalf("a delete of a name never requested, delivered again: %v", err)
	}
	rj := testenv.Wait(e.Env, func(r *events.PodRejected) bool { return r.Name == "ghost" })
	if rj.Reason != events.ReasonNotFound {
		t.Errorf("a delete of a name never requested, delivered again, answered %s %q; want NotFound", rj.Reason, rj.Message)
	}
	if rj := testenv.All(e.Env, func(r *events.PodRejected) bool { return r.Name == "done" }); len(rj) != 0 {
		t.Errorf("the finished delete delivered again was answered %s %q; want nothing", rj[0].Reason, rj[0].Message)
	}
}

// replica runs a provisioner whose record store goes through wrap (to
// hold or count its KV calls) until the test ends.
func (e *env) replica(cfg Config, wrap func(jetstream.KeyValue) jetstream.KeyValue) *Service {
	e.T.Helper()
	svc, err := New(cfg, Deps{Bus: e.Bus, VSphere: e.sess, Logger: testenv.Logger()})
	if err != nil {
		e.T.Fatalf("new service: %v", err)
	}
	svc.recs.kv = wrap(svc.recs.kv)
	e.Run(Name, svc.Run)
	return svc
}

// podsConsumer is the provisioner's durable on the pods' stream, nil
// while it does not exist.
func (e *env) podsConsumer() *jetstream.ConsumerInfo {
	ctx := context.Background()
	c, err := e.Bus.JetStream().Consumer(ctx, events.StreamPods, bus.ConsumerConfig{Service: Name, Stream: events.StreamPods}.Durable())
	if err != nil {
		return nil
	}
	info, err := c.Info(ctx)
	if err != nil {
		return nil
	}
	return info
}

// heldCreate holds the create of one record until released: an admission
// stopped after its checks, before its record exists.
type heldCreate struct {
	key      string
	entered  chan struct{} // closed when the create is first reached
	released chan struct{}
	enter    sync.Once
	done     sync.Once
}

func newHeldCreate(key string) *heldCreate {
	return &heldCreate{key: key, entered: make(chan struct{}), released: make(chan struct{})}
}

// requestHeld publishes the request of pod, whose record's create hold
// holds, and waits until its admission reaches that create.
func (e *env) requestHeld(hold *heldCreate, pod *corev1.Pod) {
	e.T.Helper()
	e.Send("test/client", events.TypePodRequested, &events.PodRequested{Pod: *pod})
	select {
	case <-hold.entered:
	case <-time.After(testenv.Timeout):
		e.T.Fatalf("the admission of %s never reached the record's create", pod.Name)
	}
}

func (h *heldCreate) release() { h.done.Do(func() { close(h.released) }) }

func (h *heldCreate) wrap(kv jetstream.KeyValue) jetstream.KeyValue {
	return &heldCreateKV{KeyValue: kv, h: h}
}

type heldCreateKV struct {
	jetstream.KeyValue
	h *heldCreate
}

func (kv *heldCreateKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	if key == kv.h.key {
		kv.h.enter.Do(func() { close(kv.h.entered) })
		select {
		case <-kv.h.released:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return kv.KeyValue.Create(ctx, key, value, opts...)
}

// countedGets counts the reads of one record.
type countedGets struct {
	jetstream.KeyValue
	key string
	n   atomic.Int64
}

func (kv *countedGets) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	e, err := kv.KeyValue.Get(ctx, key)
	if key == kv.key {
		kv.n.Add(1)
	}
	return e, err
}
