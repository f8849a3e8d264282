package hostagent_test

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/hostagent"
	"github.com/podvisor/podvisor/services/hostagent/guesttest"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
	"github.com/podvisor/podvisor/shared/deps"
)

const host = "esx-1-01"

type env struct {
	t    *testing.T
	bus  *bus.Bus
	pods jetstream.KeyValue
	svc  *hostagent.Service
}

func newEnv(t *testing.T, tune ...func(*hostagent.Config)) *env {
	t.Helper()
	b := bustest.Start(t)
	ctx := context.Background()
	kv, err := b.KV(ctx, events.BucketPods)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "pvha-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	svc := guesttest.StartHostAgentWith(t, host, dir, hostagent.Deps{Deps: deps.Deps{Bus: b}}, tune...)
	return &env{t: t, bus: b, pods: kv, svc: svc}
}

// putPod writes a pod record as the provisioner would.
func (e *env) putPod(name, uid, onHost string, grace int64, containers ...string) *events.PodRecord {
	e.t.Helper()
	rec := &events.PodRecord{UID: uid, Namespace: "default", Name: name, Host: onHost, VMName: "pv-" + uid, Phase: events.PodPhaseRunning}
	rec.Pod.Spec.TerminationGracePeriodSeconds = &grace
	for _, c := range containers {
		rec.Pod.Spec.Containers = append(rec.Pod.Spec.Containers, corev1.Container{Name: c, Image: "registry.local/" + c + ":1"})
		rec.Images = append(rec.Images, events.ContainerImage{Container: c, Image: "registry.local/" + c + ":1", Digest: "sha256:" + strings.Repeat(c[:1], 64)})
	}
	data, _ := json.Marshal(rec)
	if _, err := e.pods.Put(context.Background(), events.PodRecordKey("default", name), data); err != nil {
		e.t.Fatal(err)
	}
	return rec
}

// reported reads the pod.containers.reported events of a pod in the stream.
func (e *env) reported(uid string) []reportMsg {
	e.t.Helper()
	ctx := context.Background()
	stream, err := e.bus.JetStream().Stream(ctx, events.StreamPods)
	if err != nil {
		e.t.Fatal(err)
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{events.SubjectPodContainersReported}})
	if err != nil {
		e.t.Fatal(err)
	}
	var out []reportMsg
	for {
		batch, err := cons.FetchNoWait(100)
		if err != nil {
			e.t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			ev, err := bus.DecodeMessage(m)
			if err != nil {
				e.t.Fatal(err)
			}
			var r events.PodContainersReported
			if err := json.Unmarshal(ev.Data(), &r); err != nil {
				e.t.Fatal(err)
			}
			if r.UID == uid {
				out = append(out, reportMsg{id: ev.ID(), source: ev.Source(), r: r})
			}
		}
		if n == 0 {
			return out
		}
	}
}

type reportMsg struct {
	id, source string
	r          events.PodContainersReported
}

func (e *env) waitReports(uid string, n int) []reportMsg {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := e.reported(uid)
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%d reports for %s within 10s, want %d", len(got), uid, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestHelloOfAPodNotOnThisHostIsRefused(t *testing.T) {
	e := newEnv(t)
	e.putPod("elsewhere", "uid-elsewhere", "esx-1-02", 30, "app")
	e.putPod("here", "uid-here", host, 30, "app")
	for _, tc := range []struct {
		name  string
		hello guestchannel.Hello
		want  string
	}{
		{"pod of another host", guestchannel.Hello{PodUID: "uid-elsewhere", Namespace: "default", Name: "elsewhere", BootID: "b"}, "esx-1-02"},
		{"uid of another pod", guestchannel.Hello{PodUID: "uid-forged", Namespace: "default", Name: "here", BootID: "b"}, "uid-forged"},
		{"unknown uid, unnamed", guestchannel.Hello{PodUID: "uid-nobody", BootID: "b"}, "uid-nobody"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := guesttest.Dial(t, e.svc.Socket(), tc.hello, "app")
			select {
			case <-g.Closed():
			case <-time.After(5 * time.Second):
				t.Fatal("the host agent kept the channel of a refused pod open")
			}
			if errs := g.Errors(); len(errs) != 1 || !strings.Contains(errs[0], tc.want) {
				t.Errorf("refusal = %q, want one error naming %s", errs, tc.want)
			}
		})
	}
	if got := e.reported("uid-elsewhere"); len(got) != 0 {
		t.Errorf("a refused pod was reported: %+v", got)
	}
	// The hello without namespace and name is found by its uid.
	g := guesttest.Dial(t, e.svc.Socket(), guestchannel.Hello{PodUID: "uid-here", BootID: "b"}, "app")
	e.waitReports("uid-here", 1)
	select {
	case <-g.Closed():
		t.Fatal("the channel of a pod of this host was closed")
	default:
	}
}

func TestReportsAreCompleteWithDeterministicIDs(t *testing.T) {
	e := newEnv(t)
	rec := e.putPod("web", "uid-web", host, 30, "app", "sidecar")
	hello := guestchannel.Hello{PodUID: "uid-web", Namespace: "default", Name: "web", BootID: "boot-1"}
	g := guesttest.Dial(t, e.svc.Socket(), hello, "app")

	first := e.waitReports("uid-web", 1)[0]
	if first.id != hostagent.ReportID("uid-web", "boot-1", 1) || first.source != hostagent.Source {
		t.Errorf("report id %s from %s, want %s from %s", first.id, first.source, hostagent.ReportID("uid-web", "boot-1", 1), hostagent.Source)
	}
	r := first.r
	if r.Host != host || r.VM != rec.VMName || r.BootID != "boot-1" || r.Seq != 1 || r.Phase != guestchannel.PhaseRunning {
		t.Errorf("report = %+v", r)
	}
	if len(r.ContainerStatuses) != 2 {
		t.Fatalf("statuses %+v: want both containers, in spec order", r.ContainerStatuses)
	}
	app, side := r.ContainerStatuses[0], r.ContainerStatuses[1]
	if app.Name != "app" || app.State.Running == nil || !app.Ready || app.ImageID != rec.Images[0].Digest || app.Image != rec.Pod.Spec.Containers[0].Image {
		t.Errorf("app = %+v: want running, ready, imageID %s", app, rec.Images[0].Digest)
	}
	if side.Name != "sidecar" || side.State.Waiting == nil || side.State.Waiting.Reason != "ContainerCreating" {
		t.Errorf("sidecar not reported by the agent = %+v, want waiting ContainerCreating", side)
	}

	// A partial status changes one container; the report stays complete.
	exit := time.Now().UTC().Truncate(time.Second)
	if err := g.SendStatus(false, guestchannel.PhaseRunning, guestchannel.ContainerStatus{Name: "sidecar", RestartCount: 2,
		State:     guestchannel.ContainerState{Kind: guestchannel.StateTerminated, Reason: "Error", ExitCode: 3, FinishedAt: &exit},
		LastState: &guestchannel.ContainerState{Kind: guestchannel.StateTerminated, Reason: "OOMKilled", ExitCode: 137}}); err != nil {
		t.Fatal(err)
	}
	second := e.waitReports("uid-web", 2)[1]
	if second.id != hostagent.ReportID("uid-web", "boot-1", 2) {
		t.Errorf("second report id %s, want the id of seq 2", second.id)
	}
	s := second.r.ContainerStatuses
	if len(s) != 2 || s[0].State.Running == nil || s[1].State.Terminated == nil || s[1].State.Terminated.ExitCode != 3 ||
		s[1].RestartCount != 2 || s[1].LastTerminationState.Terminated == nil || s[1].LastTerminationState.Terminated.Reason != "OOMKilled" {
		t.Errorf("after a partial status: %+v", s)
	}

	// The agent reconnects within the same boot: its full status repeats
	// seq 1 (the scripted agent restarts its count), then it reports seq 2
	// and 3. Each (boot, seq) is stored once.
	g2 := guesttest.Dial(t, e.svc.Socket(), hello, "app")
	select {
	case <-g.Closed():
	case <-time.After(5 * time.Second):
		t.Error("the older channel of the pod stayed open after it reconnected")
	}
	for range 2 {
		if err := g2.SendStatus(false, guestchannel.PhaseRunning); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := e.reported("uid-web")
		if got[len(got)-1].r.Seq == 3 {
			seen := map[string]bool{}
			for _, m := range got {
				if seen[m.id] {
					t.Errorf("report %s (seq %d) stored twice", m.id, m.r.Seq)
				}
				seen[m.id] = true
			}
			if len(got) > 3 {
				t.Errorf("%d reports for seq 1..3 of one boot, want at most 3", len(got))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no report of seq 3 within 10s (%d reports)", len(got))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitAcked waits until the PODS consumer named has acknowledged a message
// and has none pending.
func (e *env) waitAcked(consumer string, deadline time.Time) {
	e.t.Helper()
	cons, err := e.bus.JetStream().Consumer(context.Background(), events.StreamPods, consumer)
	if err != nil {
		e.t.Fatal(err)
	}
	for {
		info, err := cons.Info(context.Background())
		if err != nil {
			e.t.Fatal(err)
		}
		if info.AckFloor.Consumer >= 1 && info.NumAckPending == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s acknowledged nothing: %+v", consumer, info)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A process serving many hosts reads deletes on one consumer for all of
// them (RunDeletes): a delete reaches the agent of its pod's host, which
// stops the guest, and no agent of the process has a consumer of its own
// (each would read every delete's record once per host).
func TestSharedDeletesReachThePodsHost(t *testing.T) {
	e := newEnv(t, func(c *hostagent.Config) { c.SharedDeletes = true })
	dir, err := os.MkdirTemp("", "pvha-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	other := guesttest.StartHostAgentWith(t, "esx-1-02", dir, hostagent.Deps{Deps: deps.Deps{Bus: e.bus}},
		func(c *hostagent.Config) { c.SharedDeletes = true })
	agents := &hostagent.Concentrator{Agents: map[string]*hostagent.Service{host: e.svc, "esx-1-02": other}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- hostagent.RunDeletes(ctx, e.bus, agents.AgentOf, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunDeletes: %v", err)
		}
	})
	e.putPod("there", "uid-there", "esx-1-02", 5, "app")
	e.putPod("here", "uid-here", host, 5, "app")
	there := guesttest.Dial(t, other.Socket(), guestchannel.Hello{PodUID: "uid-there", Namespace: "default", Name: "there", BootID: "b"}, "app")
	here := guesttest.Dial(t, e.svc.Socket(), guestchannel.Hello{PodUID: "uid-here", Namespace: "default", Name: "here", BootID: "b"}, "app")
	e.waitReports("uid-there", 1)
	e.waitReports("uid-here", 1)
	ev, err := bus.NewEvent("podvisor/cli", events.TypePodDeleteRequested, "default/there", &events.PodDeleteRequested{Namespace: "default", Name: "there"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.bus.Publish(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(there.Stops()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if stops := there.Stops(); len(stops) != 1 || stops[0].GracePeriodSeconds != 5 {
		t.Fatalf("stop requests of the deleted pod's guest = %+v, want one with its grace period 5", stops)
	}
	// The delete is acknowledged by the one consumer once handled; the
	// other host's guest was not asked anything.
	e.waitAcked(hostagent.SharedDeletesConsumer+"-"+events.StreamPods, deadline)
	if stops := here.Stops(); len(stops) != 0 {
		t.Errorf("the other host's guest was asked to stop: %+v", stops)
	}
	stream, err := e.bus.JetStream().Stream(context.Background(), events.StreamPods)
	if err != nil {
		t.Fatal(err)
	}
	names := stream.ConsumerNames(context.Background())
	for name := range names.Name() {
		if strings.HasPrefix(name, "hostagent-") && name != hostagent.SharedDeletesConsumer+"-"+events.StreamPods {
			t.Errorf("consumer %s: the agents of a process with shared deletes have none of their own", name)
		}
	}
}

func TestDeleteStopsTheGuestWithTheGracePeriod(t *testing.T) {
	e := newEnv(t)
	e.putPod("job", "uid-job", host, 7, "app")
	g := guesttest.Dial(t, e.svc.Socket(), guestchannel.Hello{PodUID: "uid-job", Namespace: "default", Name: "job", BootID: "b"}, "app")
	e.waitReports("uid-job", 1)
	ev, err := bus.NewEvent("podvisor/cli", events.TypePodDeleteRequested, "default/job", &events.PodDeleteRequested{Namespace: "default", Name: "job"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.bus.Publish(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(g.Stops()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	stops := g.Stops()
	if len(stops) != 1 || stops[0].GracePeriodSeconds != 7 {
		t.Fatalf("stop requests = %+v, want one with the pod's grace period 7", stops)
	}
	// The stop's outcome is reported: every container terminated.
	rs := e.waitReports("uid-job", 2)
	last := rs[len(rs)-1].r
	if last.Phase != guestchannel.PhaseSucceeded || last.ContainerStatuses[0].State.Terminated == nil {
		t.Errorf("report after the stop = %+v, want Succeeded with the container terminated", last)
	}
	// The delete is acknowledged once the guest said stopped.
	e.waitAcked("hostagent-"+host+"-"+events.StreamPods, deadline)
}
