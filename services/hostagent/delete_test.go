package hostagent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/hostagent"
	"github.com/podvisor/podvisor/services/hostagent/guesttest"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/deps"
	"github.com/podvisor/podvisor/shared/testenv"
)

// putVMPod writes the record of a pod whose VM exists on onHost, being
// deleted since deleting (zero: the provisioner has not recorded the
// delete yet).
func (e *env) putVMPod(name, uid, onHost string, grace int64, deleting time.Time) {
	e.t.Helper()
	rec := e.putPod(name, uid, onHost, grace, "app")
	rec.VMRef, rec.DeletionRequestedAt = "vm-"+uid, deleting
	data, _ := json.Marshal(rec)
	if _, err := e.pods.Put(context.Background(), events.PodRecordKey("default", name), data); err != nil {
		e.t.Fatal(err)
	}
}

// requestDelete publishes pod.delete.requested for a pod of namespace
// default.
func (e *env) requestDelete(name string) {
	e.t.Helper()
	ev, err := bus.NewEvent("podvisor/cli", events.TypePodDeleteRequested, "default/"+name, &events.PodDeleteRequested{Namespace: "default", Name: name})
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.bus.Publish(context.Background(), ev); err != nil {
		e.t.Fatal(err)
	}
}

// waitFirstOutcome waits until the consumer has settled the first delivery
// of the one delete published: acknowledged it, or let it come back (a
// second delivery).
func (e *env) waitFirstOutcome(consumer string) {
	e.t.Helper()
	testenv.Eventually(e.t, consumer+" acknowledging the delete or delivering it again", 20*time.Second, func() bool {
		info, err := e.consumerInfo(consumer)
		return err == nil && (info.AckFloor.Consumer >= 1 || info.Delivered.Consumer >= 2)
	})
}

// waitDeleteAcked waits until the consumer, once it exists, has
// acknowledged the one delete published.
func (e *env) waitDeleteAcked(consumer string) {
	e.t.Helper()
	testenv.Eventually(e.t, consumer+" acknowledging the delete", 20*time.Second, func() bool {
		info, err := e.consumerInfo(consumer)
		return err == nil && info.AckFloor.Consumer >= 1 && info.NumAckPending == 0
	})
}

func (e *env) consumerInfo(consumer string) (*jetstream.ConsumerInfo, error) {
	cons, err := e.bus.JetStream().Consumer(context.Background(), events.StreamPods, consumer)
	if err != nil {
		return nil, err
	}
	return cons.Info(context.Background())
}

// waitStops waits for the guest to have received n stop requests.
func waitStops(t *testing.T, g *guesttest.Guest, n int) []guestchannel.StopRequest {
	t.Helper()
	testenv.Eventually(t, "the guest's stop requests", 20*time.Second, func() bool { return len(g.Stops()) >= n })
	return g.Stops()
}

// A delete of a pod whose guest has no channel to the agent yet (the
// agent restarted, its guests dialing again) is not acknowledged while the
// pod's grace period runs: once the guest is back it gets the stop, with
// what is left of the grace period.
func TestADeleteWaitsForTheGuestsChannelWithinTheGracePeriod(t *testing.T) {
	e := newEnv(t)
	e.putVMPod("web", "uid-web", host, 30, time.Now())
	e.requestDelete("web")
	consumer := "hostagent-" + host + "-" + events.StreamPods
	e.waitFirstOutcome(consumer)
	g := guesttest.Dial(t, e.svc.Socket(), guestchannel.Hello{PodUID: "uid-web", Namespace: "default", Name: "web", BootID: "b"}, "app")
	stops := waitStops(t, g, 1)
	if len(stops) != 1 || stops[0].GracePeriodSeconds < 20 || stops[0].GracePeriodSeconds > 30 {
		t.Fatalf("stop requests = %+v, want one with what is left of the grace period 30", stops)
	}
	e.waitDeleteAcked(consumer)
}

// A stop the guest answers with an error is sent again while the grace
// period runs.
func TestAStopAnsweredWithAnErrorIsSentAgain(t *testing.T) {
	e := newEnv(t)
	e.putVMPod("job", "uid-job", host, 30, time.Now())
	g := guesttest.Dial(t, e.svc.Socket(), guestchannel.Hello{PodUID: "uid-job", Namespace: "default", Name: "job", BootID: "b"}, "app")
	e.waitReports("uid-job", 1)
	g.FailStops(1)
	e.requestDelete("job")
	waitStops(t, g, 2)
	e.waitDeleteAcked("hostagent-" + host + "-" + events.StreamPods)
}

// Past the grace period, or for a pod without a VM, a delete whose guest
// cannot be told is acknowledged at once: the provisioner's power-off
// ends the containers.
func TestADeleteThatCannotStopAnythingIsAcknowledged(t *testing.T) {
	for _, tc := range []struct {
		name     string
		vm       bool
		deleting time.Time
	}{
		{"grace period over", true, time.Now().Add(-time.Minute)},
		{"no VM", false, time.Now()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			if tc.vm {
				e.putVMPod("web", "uid-web", host, 5, tc.deleting)
			} else {
				e.putPod("web", "uid-web", host, 5, "app")
			}
			e.requestDelete("web")
			consumer := "hostagent-" + host + "-" + events.StreamPods
			e.waitDeleteAcked(consumer)
			if info, err := e.consumerInfo(consumer); err != nil || info.Delivered.Consumer != 1 {
				t.Fatalf("consumer %+v, %v: want the delete acknowledged on its first delivery", info, err)
			}
		})
	}
}

// agentsLater are the agents of a process serving every host, which it
// adds as it reads the hosts (FollowHosts) while RunDeletes already runs.
type agentsLater struct {
	mu     sync.Mutex
	agents map[string]*hostagent.Service
}

func (a *agentsLater) add(host string, s *hostagent.Service) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.agents[host] = s
}

func (a *agentsLater) of(host string) (of, some *hostagent.Service) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range a.agents {
		some = s
	}
	return a.agents[host], some
}

// A delete RunDeletes reads before its process has an agent (none yet, or
// none of the pod's host) comes back, and reaches the pod's guest once the
// agent is added.
func TestSharedDeletesWaitForTheAgents(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before []string // hosts whose agents are there before the delete
	}{
		{"no agent yet", nil},
		{"not the pod's host's yet", []string{"esx-1-02"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, func(c *hostagent.Config) { c.SharedDeletes = true })
			agents := &agentsLater{agents: map[string]*hostagent.Service{}}
			for _, h := range tc.before {
				dir, err := os.MkdirTemp("", "pvha-")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { os.RemoveAll(dir) })
				agents.add(h, guesttest.StartHostAgentWith(t, h, dir, hostagent.Deps{Deps: deps.Deps{Bus: e.bus}},
					func(c *hostagent.Config) { c.SharedDeletes = true }))
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- hostagent.RunDeletes(ctx, e.bus, agents.of, nil) }()
			t.Cleanup(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("RunDeletes: %v", err)
				}
			})
			e.putVMPod("web", "uid-web", host, 30, time.Now())
			g := guesttest.Dial(t, e.svc.Socket(), guestchannel.Hello{PodUID: "uid-web", Namespace: "default", Name: "web", BootID: "b"}, "app")
			e.waitReports("uid-web", 1)
			e.requestDelete("web")
			consumer := hostagent.SharedDeletesConsumer + "-" + events.StreamPods
			e.waitFirstOutcome(consumer)
			agents.add(host, e.svc)
			if stops := waitStops(t, g, 1); len(stops) != 1 {
				t.Fatalf("stop requests = %+v, want one", stops)
			}
			e.waitDeleteAcked(consumer)
		})
	}
}

// publishSeq publishes p on the bus as the CLI would and returns the event
// and where stream PODS stored it.
func (e *env) publishSeq(p events.Payload) (string, uint64) {
	e.t.Helper()
	k, _ := events.KindOf(p)
	ev, err := bus.NewEvent("podvisor/cli", k.Type, p.ObjectKey(), p)
	if err != nil {
		e.t.Fatal(err)
	}
	seq, err := e.bus.PublishSeq(context.Background(), ev)
	if err != nil {
		e.t.Fatal(err)
	}
	return ev.ID(), seq
}

// requestPod publishes pod.requested for a pod web of one container app
// and writes its record as the provisioner admits it: uid, its VM on host
// and its RequestID ("<event id>#<stream seq>").
func (e *env) requestPod(uid string, deleting time.Time) {
	e.t.Helper()
	pod := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.local/app:1"}}}}
	id, seq := e.publishSeq(&events.PodRequested{Pod: pod})
	rec := e.putPod("web", uid, host, 30, "app")
	rec.VMRef, rec.DeletionRequestedAt, rec.RequestID = "vm-"+uid, deleting, fmt.Sprintf("%s#%d", id, seq)
	data, _ := json.Marshal(rec)
	if _, err := e.pods.Put(context.Background(), events.PodRecordKey("default", "web"), data); err != nil {
		e.t.Fatal(err)
	}
}

// A delete that comes back (its pod's guest could not be told at first)
// after its pod was deleted and a pod of that name requested anew stops
// nothing: it was stored before the new pod's request, so it is about the
// earlier pod, although it names no uid.
func TestADeleteDeliveredAgainDoesNotStopAPodRequestedAfterIt(t *testing.T) {
	e := newEnv(t)
	e.requestPod("uid-old", time.Now())
	e.requestDelete("web") // the old pod's guest is not connected: it comes back
	consumer := "hostagent-" + host + "-" + events.StreamPods
	e.waitFirstOutcome(consumer)

	e.requestPod("uid-new", time.Time{})
	g := guesttest.Dial(t, e.svc.Socket(), guestchannel.Hello{PodUID: "uid-new", Namespace: "default", Name: "web", BootID: "b"}, "app")
	e.waitReports("uid-new", 1)
	e.waitDeleteAcked(consumer)
	if stops := g.Stops(); len(stops) != 0 {
		t.Fatalf("the new pod's guest was told to stop %d times by the earlier pod's delete: %+v", len(stops), stops)
	}
}
