package scheduler_test

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler"
)

// answerAvailability plays network-config's availability query: state
// gives the answer per host (Realized when absent). It returns the hosts
// asked, in order.
func (e *env) answerAvailability(state map[string]string) func() []string {
	e.T.Helper()
	var mu sync.Mutex
	var asked []string
	sub, err := e.Bus.Conn().Subscribe(events.SubjectQueryNetworkAvailable, func(m *nats.Msg) {
		var q events.NetworkAvailabilityQuery
		if err := json.Unmarshal(m.Data, &q); err != nil {
			e.T.Errorf("undecodable availability query %q: %v", m.Data, err)
			return
		}
		mu.Lock()
		asked = append(asked, q.Host)
		mu.Unlock()
		ans := events.NetworkAvailabilityAnswer{Network: q.Network, Host: q.Host, State: events.NetworkOnHostRealized, Available: true, InScope: true}
		if st, ok := state[q.Host]; ok {
			ans.State, ans.Available = st, false
			ans.Reason, ans.Message = "NotRealized", "host "+q.Host+" reads back without port group pv-"+q.Network
		}
		data, _ := json.Marshal(ans)
		_ = m.Respond(data)
	})
	if err != nil {
		e.T.Fatal(err)
	}
	e.T.Cleanup(func() { sub.Unsubscribe() })
	e.Bus.Conn().Flush()
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), asked...)
	}
}

// The candidate host is asked before the pod is bound there: the read model
// says the network is realized on x (so x is the best candidate), the host
// says it is not, and the pod goes to another host with x's refusal on
// pod.scheduled.
func TestCandidateRefusingTheNetworkIsSkipped(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 3, networks: map[string][]string{}})
	hosts := e.HostNames("")
	x := hosts[0]
	e.PutNetwork("default", []string{x}, hosts)
	asked := e.answerAvailability(map[string]string{x: events.NetworkOnHostFailed})

	e.accept(testPod("web", "100m", "64Mi"))
	s := e.waitScheduled(podKey("web"))
	if s.Host == x {
		t.Fatalf("placed on %s, which refused the network", x)
	}
	if len(s.Refusals) != 1 || s.Refusals[0].Host != x || s.Refusals[0].Network != "default" || s.Refusals[0].Reason != events.ReasonNetworkUnavailable {
		t.Fatalf("pod.scheduled refusals = %+v, want one from %s for default (%s)", s.Refusals, x, events.ReasonNetworkUnavailable)
	}
	if got := asked(); len(got) < 2 || got[0] != x {
		t.Errorf("hosts asked = %v, want %s first, then the host chosen", got, x)
	}
	if _, ok := e.allocations(x)["uid-web"]; ok {
		t.Errorf("the pod holds room on %s, which refused it", x)
	}
	if _, ok := e.allocations(s.Host)["uid-web"]; !ok {
		t.Errorf("no allocation on %s where the pod was placed", s.Host)
	}
}

// When every candidate refuses, the pod is unschedulable with the refusals
// counted per host.
func TestEveryCandidateRefusingLeavesThePodUnschedulable(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 2})
	state := map[string]string{}
	for _, h := range e.HostNames("") {
		state[h] = events.NetworkOnHostFailed
	}
	e.answerAvailability(state)
	e.accept(testPod("web", "100m", "64Mi"))
	u := e.waitUnschedulable(podKey("web"))
	if u.Reasons["NetworkRefused"] != 2 {
		t.Fatalf("pod.unschedulable %q reasons %v, want both hosts NetworkRefused", u.Message, u.Reasons)
	}
}

// An attach that fails on the host for a reason of that host
// (pod.network.failed, NotRealizedOnHost) places the pod again elsewhere,
// once the provisioner's record shows the refusal, never on the refusing
// host.
func TestAttachRefusalPlacesThePodAgain(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 2})
	acc := e.accept(testPod("web", "100m", "64Mi"))
	first := e.waitScheduled(podKey("web")).Host

	// The provisioner folds the refusal: back to Pending, no host.
	rec := &events.PodRecord{UID: acc.UID, Namespace: "default", Name: "web", Pod: acc.Pod, Size: acc.Size, Networks: acc.Networks,
		Phase: events.PodPhasePending, RequestID: "req-web",
		NetworkRefusals: []events.HostRefusal{{Host: first, Network: "default", Reason: events.ReasonNotRealizedOnHost, OnAttach: true}}}
	e.PutPodRecord(rec)
	e.PublishAs("podvisor/netconfig", events.TypePodNetworkFailed, podKey("web"), &events.PodNetworkFailed{
		PodRef: events.PodRef{Namespace: "default", Name: "web", UID: acc.UID}, Host: first, Network: "default",
		Reason: events.ReasonNotRealizedOnHost, Message: "port group pv-default is not among the host's networks"})
	var again *events.PodScheduled
	e.EventuallyWithin("pod placed again", 10*time.Second, func() bool {
		again = e.Scheduled(podKey("web"))
		return again.Host != first
	})
	e.EventuallyWithin("room freed on "+first, 5*time.Second, func() bool { _, ok := e.allocations(first)["uid-web"]; return !ok })

}

// A refusal whose pod.network.failed never reaches the scheduler (dead-
// lettered while the provisioner was too busy to fold the refusal): the
// record alone sends the pod back to Pending, NetworkRefused, and the
// pending rescan frees its room on the refusing host and places it
// elsewhere.
func TestARefusalWhoseEventWasLostIsTakenByTheRescan(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 2, cfg: func(c *scheduler.Config) {
		c.PendingRescan = 200 * time.Millisecond
	}})
	acc := e.accept(testPod("web", "100m", "64Mi"))
	first := e.waitScheduled(podKey("web")).Host

	// The provisioner's record after folding the refusal; no event.
	e.PutPodRecord(&events.PodRecord{UID: acc.UID, Namespace: "default", Name: "web", Pod: acc.Pod, Size: acc.Size, Networks: acc.Networks,
		Phase: events.PodPhasePending, RequestID: "req-web", Reason: "NetworkRefused",
		NetworkRefusals: []events.HostRefusal{{Host: first, Network: "default", Reason: events.ReasonNotRealizedOnHost, OnAttach: true}}})
	var again *events.PodScheduled
	e.EventuallyWithin("pod placed again by the rescan", 10*time.Second, func() bool {
		again = e.Scheduled(podKey("web"))
		return again.Host != first
	})
	e.EventuallyWithin("room freed on "+first, 5*time.Second, func() bool { _, ok := e.allocations(first)[acc.UID]; return !ok })
}
