package guestcluster

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
	"github.com/podvisor/podvisor/shared/deps"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// recordingControlPlanes stands for the control-plane VM: the real one
// (podvisor-guest with kube-apiserver) is driven by the CLI's guest cluster
// test; here the controller's side of the contract is what is checked.
type recordingControlPlanes struct {
	mu      sync.Mutex
	ensured map[string]ControlPlane
	removed []string
	fail    error
	// url is the endpoint Ensure answers (serving: a listener the
	// harness keeps open, so that the control plane answers there).
	url, serving string
	// gate, when set, holds Ensure until it is closed; entered, when
	// set, is told the key of each Ensure the gate holds.
	gate    chan struct{}
	entered chan string
	// failOnce, when set, is what the next Ensure let through returns
	// (then it is cleared).
	failOnce error
}

func (r *recordingControlPlanes) Ensure(_ context.Context, cp ControlPlane) (Endpoint, error) {
	r.mu.Lock()
	gate, entered := r.gate, r.entered
	r.mu.Unlock()
	if gate != nil {
		if entered != nil {
			entered <- cp.Namespace + "/" + cp.Name
		}
		<-gate
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.failOnce; err != nil {
		r.failOnce = nil
		return Endpoint{}, err
	}
	if r.fail != nil {
		return Endpoint{}, r.fail
	}
	r.ensured[cp.Namespace+"/"+cp.Name] = cp
	url := r.url
	if url == "" {
		url = r.serving
	}
	return Endpoint{URL: url, Kubeconfig: []byte("apiVersion: v1\nkind: Config\nclusters:\n- cluster: {server: " + url + "}\n")}, nil
}

func (r *recordingControlPlanes) Remove(_ context.Context, ns, name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.removed = append(r.removed, ns+"/"+name)
	return nil
}

type harness struct {
	// b is the admin's connection: the test plays the CLI, the
	// provisioner and the guest nodes with it.
	b    *bus.Bus
	dc   *sim.Datacenter
	vs   *vsphere.Session
	cps  *recordingControlPlanes
	auth *bus.Authority
	nats bus.ConnConfig // URL and CA of the server
	evs  chan event.Event
	svc  *Service
	// serving is the listener the control plane answers at.
	serving net.Listener
	// skipped are events await passed over, oldest first.
	skipped []event.Event
}

// start runs the controller as its own identity on a server with the
// identities and TLS of `podvisor up`.
func start(t *testing.T) *harness {
	t.Helper()
	srv := bustest.StartSecure(t)
	auth := srv.Auth
	conn := bus.ConnConfig{URL: srv.Server.URL(), CAFile: srv.CA.CAFile()}
	dial := func(identity string) *bus.Bus { return srv.Dial(t, identity) }
	b := dial(bus.IdentityAdmin)
	dc := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 1})
	vs, err := vsphere.Connect(context.Background(), vsphere.Config{URL: dc.URL().String(), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = vs.Close(context.Background()) })
	h := &harness{b: b, dc: dc, vs: vs, cps: &recordingControlPlanes{ensured: map[string]ControlPlane{}}, auth: auth, nats: conn, evs: make(chan event.Event, 256)}
	h.cps.serving, h.serving = listen(t)
	cfg := DefaultConfig()
	cfg.ResyncInterval = 0
	cfg.DeleteTimeout = 20 * time.Second
	svc, err := New(cfg, Deps{Deps: deps.Deps{Bus: dial(Name), VSphere: vs}, ControlPlanes: h.cps, Minter: AuthorityMinter{Authority: auth, NATS: conn}})
	if err != nil {
		t.Fatal(err)
	}
	h.svc = svc
	testenv.Run(t, Name, svc.Run)
	ctx := t.Context()
	for _, stream := range []string{events.StreamGuestClusters, events.StreamPods, events.StreamVMs} {
		c, err := b.JetStream().OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
		if err != nil {
			t.Fatal(err)
		}
		cc, err := c.Consume(func(m jetstream.Msg) {
			if ev, err := bus.DecodeMessage(m); err == nil {
				h.evs <- ev
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cc.Stop)
	}
	return h
}

// listen stands for an API server: something that accepts connections at
// an https URL on loopback until the test ends (or it is closed).
func listen(t *testing.T) (string, net.Listener) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return "https://" + ln.Addr().String(), ln
}

func serve(t *testing.T) string { u, _ := listen(t); return u }

// closeServing stops the control plane's API server from answering at the
// endpoint the guest cluster was made with.
func (h *harness) closeServing() { _ = h.serving.Close() }

// waitRecord waits until the guest cluster's record satisfies ok.
func (h *harness) waitRecord(t *testing.T, ns, name string, ok func(events.GuestClusterRecord) bool) events.GuestClusterRecord {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := h.record(t, ns, name)
		if ok(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("record of %s/%s: %+v", ns, name, r)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (h *harness) publish(t *testing.T, ceType, subject string, p events.Payload) {
	t.Helper()
	ev, err := bus.NewEvent("podvisor/cli", ceType, subject, p)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.b.Publish(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
}

// await returns the next event of one of ceTypes. Events of other types
// are kept for later awaits: the streams are consumed side by side, so an
// event of one stream can come before an earlier event of another (a
// guest cluster's ready before its worker VMs' declarations).
func (h *harness) await(t *testing.T, ceTypes ...string) event.Event {
	t.Helper()
	for i, ev := range h.skipped {
		if slices.Contains(ceTypes, ev.Type()) {
			h.skipped = slices.Delete(h.skipped, i, i+1)
			return ev
		}
	}
	deadline := time.After(20 * time.Second)
	for {
		select {
		case ev := <-h.evs:
			if slices.Contains(ceTypes, ev.Type()) {
				return ev
			}
			h.skipped = append(h.skipped, ev)
		case <-deadline:
			t.Fatalf("no %v within 20s", ceTypes)
		}
	}
}

// requestReady publishes req as the CLI does and waits for the next
// guestcluster.ready, which it returns.
func (h *harness) requestReady(t *testing.T, req *events.GuestClusterRequested) event.Event {
	t.Helper()
	h.publish(t, events.TypeGuestClusterRequested, req.ObjectKey(), req)
	return h.await(t, events.TypeGuestClusterReady)
}

func (h *harness) ask(t *testing.T, ns, name, op string, req any) events.GuestPodReply {
	t.Helper()
	data, _ := json.Marshal(req)
	m, err := h.b.Conn().Request(events.SubjectGuestClusterQuery(ns, name, op), data, 10*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", op, err)
	}
	var r events.GuestPodReply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func guestCluster() *events.GuestClusterRequested {
	return &events.GuestClusterRequested{GuestCluster: events.GuestCluster{
		APIVersion: events.APIVersion, Kind: events.KindGuestCluster,
		Metadata: events.NamespacedMeta{Name: "gc1", Namespace: "team-a"},
		Spec: events.GuestClusterSpec{Version: "v1.37.2", Namespaces: []string{"team-a-apps"},
			ControlPlane: events.GuestClusterNodes{Replicas: 1, ClassName: "small"},
			Workers:      events.GuestClusterNodes{Replicas: 1, ClassName: "small"}},
	}}
}

// TestGuestClusterLifecycle: a requested guest cluster gets an identity
// and a control plane and becomes Ready; its node's pod requests become
// pod.requested in the namespaces it may use and no other; its pods are
// listed in the Kubernetes shape; deleting it deletes its pods, its
// control plane, its identity and its record.
func TestGuestClusterLifecycle(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	req := guestCluster()
	ready := h.requestReady(t, req)
	if ready.Subject() != "team-a/gc1" {
		t.Errorf("ready subject %q", ready.Subject())
	}
	kv, _ := h.b.KV(ctx, events.BucketGuestClusters)
	e, err := kv.Get(ctx, events.GuestClusterRecordKey("team-a", "gc1"))
	if err != nil {
		t.Fatal(err)
	}
	var rec events.GuestClusterRecord
	_ = json.Unmarshal(e.Value(), &rec)
	if rec.Phase != events.GuestClusterPhaseReady || rec.Endpoint != h.cps.serving || !rec.HasKubeconfig || rec.Identity != "gc-team-a-gc1" {
		t.Errorf("record = %+v", rec)
	}
	if strings.Contains(string(e.Value()), "kind: Config") {
		t.Errorf("the record clients read holds the kubeconfig: %s", e.Value())
	}
	kkv, _ := h.b.KV(ctx, events.BucketGuestClusterKubeconfigs)
	if ke, err := kkv.Get(ctx, events.GuestClusterRecordKey("team-a", "gc1")); err != nil || !strings.Contains(string(ke.Value()), "kind: Config") {
		t.Errorf("kubeconfig bucket: %v, want the guest cluster's kubeconfig", err)
	}
	cp := h.cps.ensured["team-a/gc1"]
	if cp.Creds != h.auth.CredsPath("gc-team-a-gc1") || cp.Version != "v1.37.2" {
		t.Errorf("control plane started with %+v", cp)
	}
	// The node's identity works while the guest cluster exists; a copy of
	// its creds file is kept to try again after the delete.
	kept := filepath.Join(t.TempDir(), "node.creds")
	if b, err := os.ReadFile(cp.Creds); err != nil || os.WriteFile(kept, b, 0o600) != nil {
		t.Fatalf("copy the node's creds: %v", err)
	}
	node := h.nats
	node.CredsFile = kept
	nb, err := bus.Dial(ctx, node)
	if err != nil {
		t.Fatalf("the node's identity before the delete: %v", err)
	}
	defer nb.Close()

	// The node asks for a guest pod of namespace default: it runs in the
	// guest cluster's own namespace, named after the guest pod.
	grace := int64(1)
	pod := &corev1.Pod{}
	pod.Namespace, pod.Name = "default", "bb"
	pod.Labels = map[string]string{"run": "bb"}
	pod.Spec = corev1.PodSpec{NodeName: "podvisor", ServiceAccountName: "default", SchedulerName: "default-scheduler",
		TerminationGracePeriodSeconds: &grace, RestartPolicy: corev1.RestartPolicyNever,
		Tolerations:     []corev1.Toleration{{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists}},
		SecurityContext: &corev1.PodSecurityContext{}, // as the API server defaults it
		Containers:      []corev1.Container{{Name: "bb", Image: "registry.local/podvisor/busybox:1.0", Command: []string{"echo", "hi"}}}}
	r := h.ask(t, "team-a", "gc1", events.GuestOpPodCreate, events.GuestPodRequest{GuestNamespace: "default", GuestName: "bb", Pod: pod})
	if r.Error != "" || r.Namespace != "team-a" || r.Name != "gc1-default-bb" {
		t.Fatalf("pod.create = %+v", r)
	}
	ev := h.await(t, events.TypePodRequested)
	var pr events.PodRequested
	if err := json.Unmarshal(ev.Data(), &pr); err != nil {
		t.Fatal(err)
	}
	sp := pr.Pod
	if sp.Namespace != "team-a" || sp.Name != "gc1-default-bb" || sp.Spec.NodeName != "" || sp.Spec.ServiceAccountName != "" || len(sp.Spec.Tolerations) != 0 || sp.Spec.SecurityContext != nil ||
		sp.Labels[events.LabelGuestCluster] != "gc1" || sp.Labels[events.LabelGuestName] != "bb" || sp.Labels["run"] != "bb" {
		t.Errorf("pod.requested carries %+v", sp)
	}
	if ev.Source() != Source {
		t.Errorf("pod.requested source %q", ev.Source())
	}
	// A listed namespace is its own; any other is refused, naming what
	// the guest cluster may use.
	r = h.ask(t, "team-a", "gc1", events.GuestOpPodCreate, events.GuestPodRequest{GuestNamespace: "team-a-apps", GuestName: "x", Pod: pod})
	if r.Error != "" || r.Namespace != "team-a-apps" {
		t.Errorf("pod.create in a listed namespace = %+v", r)
	}
	r = h.ask(t, "team-a", "gc1", events.GuestOpPodCreate, events.GuestPodRequest{GuestNamespace: "default", GuestName: "y", Namespace: "kube-system", Pod: pod})
	if !strings.Contains(r.Error, "namespace kube-system") || !strings.Contains(r.Error, "team-a, team-a-apps") {
		t.Errorf("pod.create in kube-system = %+v, want a refusal naming the allowed namespaces", r)
	}
	r = h.ask(t, "team-a", "gc9", events.GuestOpPodList, struct{}{})
	if !strings.Contains(r.Error, "does not exist") {
		t.Errorf("a query of an unknown guest cluster = %+v", r)
	}

	// The provisioner's record of the pod: the list shows it in the
	// Kubernetes shape, with the guest labels.
	pods, _ := h.b.KV(ctx, events.BucketPods)
	prec := events.PodRecord{UID: "u-1", Namespace: "team-a", Name: "gc1-default-bb", Pod: sp, Phase: events.PodPhaseRunning, Host: "esx-1"}
	data, _ := json.Marshal(prec)
	if _, err := pods.Put(ctx, events.PodRecordKey("team-a", "gc1-default-bb"), data); err != nil {
		t.Fatal(err)
	}
	other := events.PodRecord{UID: "u-2", Namespace: "team-a", Name: "web", Phase: events.PodPhaseRunning}
	data, _ = json.Marshal(other)
	if _, err := pods.Put(ctx, events.PodRecordKey("team-a", "web"), data); err != nil {
		t.Fatal(err)
	}
	r = h.ask(t, "team-a", "gc1", events.GuestOpPodList, struct{}{})
	if r.Error != "" || len(r.Pods) != 1 || r.Pods[0].Labels[events.LabelGuestName] != "bb" || r.Pods[0].Status.Phase != corev1.PodRunning {
		t.Errorf("pod.list = %+v, want the guest pod only, Running", r)
	}
	// The count is written after the answer.
	for deadline := time.Now().Add(10 * time.Second); ; {
		e, err := kv.Get(ctx, events.GuestClusterRecordKey("team-a", "gc1"))
		if err == nil && json.Unmarshal(e.Value(), &rec) == nil && rec.Pods == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("record counts %d pods (%v), want 1", rec.Pods, err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Delete: the pod's deletion is asked for; once its record is gone
	// (as the provisioner removes it), the guest cluster is.
	h.publish(t, events.TypeGuestClusterDeleteRequested, "team-a/gc1", &events.GuestClusterDeleteRequested{GuestClusterRef: events.GuestClusterRef{Namespace: "team-a", Name: "gc1"}})
	del := h.await(t, events.TypePodDeleteRequested)
	var dr events.PodDeleteRequested
	_ = json.Unmarshal(del.Data(), &dr)
	if dr.Namespace != "team-a" || dr.Name != "gc1-default-bb" || dr.UID != "u-1" {
		t.Errorf("pod.delete.requested = %+v", dr)
	}
	if err := pods.Delete(ctx, events.PodRecordKey("team-a", "gc1-default-bb")); err != nil {
		t.Fatal(err)
	}
	gone := h.await(t, events.TypeGuestClusterDeleted)
	var gd events.GuestClusterDeleted
	_ = json.Unmarshal(gone.Data(), &gd)
	if gd.Pods != 1 {
		t.Errorf("guestcluster.deleted = %+v, want 1 pod", gd)
	}
	if _, err := kv.Get(ctx, events.GuestClusterRecordKey("team-a", "gc1")); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("record after delete: %v", err)
	}
	h.cps.mu.Lock()
	removed := h.cps.removed
	h.cps.mu.Unlock()
	if len(removed) != 1 || removed[0] != "team-a/gc1" {
		t.Errorf("control planes removed: %v", removed)
	}
	if _, err := pods.Get(ctx, events.PodRecordKey("team-a", "web")); err != nil {
		t.Errorf("a pod of no guest cluster was touched: %v", err)
	}
	// Its identity is revoked: the node's connection is closed, and the
	// kept creds file is refused; its kubeconfig is gone.
	for deadline := time.Now().Add(10 * time.Second); !nb.Conn().IsClosed(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the deleted guest cluster's node is still connected")
		}
	}
	if b, err := bus.Dial(ctx, node); err == nil {
		b.Close()
		t.Error("the deleted guest cluster's creds still connect")
	} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Errorf("the deleted guest cluster's creds refused with %v, want an authorization error", err)
	}
	if _, err := kkv.Get(ctx, events.GuestClusterRecordKey("team-a", "gc1")); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("kubeconfig after delete: %v", err)
	}
}

// TestControlPlaneFailureIsToldAndRecorded: a control plane that does not
// start ends in guestcluster.failed and Phase Failed with the reason.
func TestControlPlaneFailureIsToldAndRecorded(t *testing.T) {
	h := start(t)
	h.cps.fail = bus.Permanent(errors.New("kube-apiserver exited: etcd not reachable"))
	req := guestCluster()
	h.publish(t, events.TypeGuestClusterRequested, req.ObjectKey(), req)
	ev := h.await(t, events.TypeGuestClusterFailed)
	var f events.GuestClusterFailed
	_ = json.Unmarshal(ev.Data(), &f)
	if f.Reason != "ControlPlaneFailed" || !strings.Contains(f.Message, "etcd not reachable") {
		t.Errorf("guestcluster.failed = %+v", f)
	}
	kv, _ := h.b.KV(context.Background(), events.BucketGuestClusters)
	e, err := kv.Get(context.Background(), events.GuestClusterRecordKey("team-a", "gc1"))
	if err != nil {
		t.Fatal(err)
	}
	var rec events.GuestClusterRecord
	_ = json.Unmarshal(e.Value(), &rec)
	if rec.Phase != events.GuestClusterPhaseFailed || rec.Reason != "ControlPlaneFailed" {
		t.Errorf("record = %+v", rec)
	}
}

// TestQueryIsNotAnsweredAfterItsAskerGaveUp: the gateway serves queries
// through bus.ServeMsgWithin, so a query whose node stopped waiting
// (bus.HeaderReplyBy passed) gets no answer: an answer past the service
// identity's response window is a permissions violation, and nobody reads
// it. Before, the gateway answered every query with m.Respond, whenever it
// was done. A query asked with bus.Request is answered as before.
func TestQueryIsNotAnsweredAfterItsAskerGaveUp(t *testing.T) {
	h := start(t)
	subject := events.SubjectGuestClusterQuery("team-a", "none", events.GuestOpPodList)
	// Answered: a refusal, in the reply the node reads.
	var out []byte
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		out, err = h.b.Request(ctx, subject, []byte("{}"))
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("query: %v", err)
		}
	}
	var r events.GuestPodReply
	if err := json.Unmarshal(out, &r); err != nil || !strings.Contains(r.Error, "does not exist") {
		t.Fatalf("answer %s (%v), want the refusal of a guest cluster that does not exist", out, err)
	}

	before := bus.ServeExpired()
	inbox := h.b.Conn().NewRespInbox()
	sub, err := h.b.Conn().SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	req := nats.NewMsg(subject)
	req.Reply, req.Data = inbox, []byte("{}")
	req.Header.Set(bus.HeaderReplyBy, time.Now().Add(-time.Second).UTC().Format(time.RFC3339Nano))
	if err := h.b.Conn().PublishMsg(req); err != nil {
		t.Fatal(err)
	}
	for bus.ServeExpired() == before {
		if _, err := sub.NextMsg(50 * time.Millisecond); err == nil {
			t.Fatal("a query whose asker had given up was answered")
		}
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatal("the query whose asker had given up was neither answered nor dropped")
		}
	}
	if err := h.b.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := sub.Pending(); n != 0 {
		t.Errorf("%d answers to a query whose asker had given up", n)
	}
}

// TestControlPlaneCountIsFixedAtCreation: a guest cluster made with three
// control-plane VMs gets a control plane of three; a request for another
// count is refused with guestcluster.failed naming the field, and the
// cluster stays Ready with its spec (it still runs); the same count again
// is taken.
func TestControlPlaneCountIsFixedAtCreation(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	req := guestCluster()
	req.GuestCluster.Spec.ControlPlane.Replicas = 3
	h.requestReady(t, req)
	if cp := h.cps.ensured["team-a/gc1"]; cp.Replicas != 3 {
		t.Errorf("control plane ensured with %d replicas, want 3", cp.Replicas)
	}
	one := guestCluster()
	h.publish(t, events.TypeGuestClusterRequested, one.ObjectKey(), one)
	failed := h.await(t, events.TypeGuestClusterFailed)
	var f events.GuestClusterFailed
	if err := failed.DataAs(&f); err != nil || f.Reason != reasonControlPlaneImmutable || !strings.Contains(f.Message, "spec.controlPlane.replicas") {
		t.Errorf("guestcluster.failed = %+v (%v), want %s naming spec.controlPlane.replicas", f, err, reasonControlPlaneImmutable)
	}
	kv, _ := h.b.KV(ctx, events.BucketGuestClusters)
	e, err := kv.Get(ctx, events.GuestClusterRecordKey("team-a", "gc1"))
	if err != nil {
		t.Fatal(err)
	}
	var rec events.GuestClusterRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil || rec.Phase != events.GuestClusterPhaseReady || rec.Spec.ControlPlane.Replicas != 3 {
		t.Errorf("record after the refused change: phase %s, %d control planes (%v); want Ready with 3", rec.Phase, rec.Spec.ControlPlane.Replicas, err)
	}
	h.requestReady(t, req)
}

// A Ready guest cluster whose API server no longer answers at its endpoint
// (the supervisor restarted: its control plane serves nowhere yet) is not
// Ready while the resync starts it again, and Ready at its new endpoint
// once it serves.
func TestALostControlPlaneIsNotReadyUntilItServesAgain(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	req := guestCluster()
	h.requestReady(t, req)

	// The endpoint stops answering; the control plane, started again,
	// will serve at another one, once Ensure is let go.
	h.closeServing()
	again := serve(t)
	gate := make(chan struct{})
	h.cps.mu.Lock()
	h.cps.url, h.cps.gate = again, gate
	h.cps.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- h.svc.resync(ctx) }()
	lost := h.waitRecord(t, "team-a", "gc1", func(r events.GuestClusterRecord) bool { return r.Phase != events.GuestClusterPhaseReady })
	if lost.Phase != events.GuestClusterPhaseProvisioning || lost.Reason != reasonControlPlaneLost {
		t.Errorf("while the control plane is started again: %s %s (%s), want Provisioning %s", lost.Phase, lost.Reason, lost.Message, reasonControlPlaneLost)
	}
	// The cluster still runs its version: an upgrade asked meanwhile is
	// refused as for a Ready one, and the cluster is left as it was.
	up := guestCluster()
	up.GuestCluster.Spec.Version = "v1.99.0"
	h.publish(t, events.TypeGuestClusterRequested, up.ObjectKey(), up)
	var f events.GuestClusterFailed
	if err := h.await(t, events.TypeGuestClusterFailed).DataAs(&f); err != nil || f.Reason != reasonUpgradeUnsupported {
		t.Errorf("guestcluster.failed = %+v (%v), want %s", f, err, reasonUpgradeUnsupported)
	}
	if rec := h.record(t, "team-a", "gc1"); rec.Phase != events.GuestClusterPhaseProvisioning || rec.Reason != reasonControlPlaneLost || rec.Spec.Version != req.GuestCluster.Spec.Version {
		t.Errorf("after the refused upgrade: %s %s %s, want Provisioning %s %s", rec.Phase, rec.Reason, rec.Spec.Version, reasonControlPlaneLost, req.GuestCluster.Spec.Version)
	}
	close(gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if rec := h.record(t, "team-a", "gc1"); rec.Phase != events.GuestClusterPhaseReady || rec.Endpoint != again || rec.Reason != "" {
		t.Errorf("after the resync: %s at %s (reason %q), want Ready at %s", rec.Phase, rec.Endpoint, rec.Reason, again)
	}
}

// TestResyncRecordsAMovedEndpoint: a control plane started again at
// another address (the supervisor restarted: a new published port) is
// recorded by the resync, endpoint and kubeconfig, so what `get
// guestcluster --kubeconfig` hands out next reaches it; the cluster stays
// Ready since it was.
func TestResyncRecordsAMovedEndpoint(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	req := guestCluster()
	h.requestReady(t, req)
	first := h.record(t, "team-a", "gc1")

	// The control plane still answers at its endpoint; Ensure reports
	// another one (the balancer moved, say).
	h.cps.mu.Lock()
	h.cps.url = "https://127.0.0.1:7443"
	h.cps.mu.Unlock()
	if err := h.svc.resync(ctx); err != nil {
		t.Fatal(err)
	}
	// The resync asked for the control plane at the address recorded, so
	// that a control plane made again after a restart keeps it where it
	// can (VMControlPlanes publishes it there when the port is free).
	h.cps.mu.Lock()
	asked := h.cps.ensured["team-a/gc1"].Endpoint
	h.cps.mu.Unlock()
	if asked != first.Endpoint {
		t.Errorf("the resync's Ensure was given the endpoint %q, want the one recorded, %q", asked, first.Endpoint)
	}
	rec := h.record(t, "team-a", "gc1")
	if rec.Endpoint != "https://127.0.0.1:7443" || rec.Phase != events.GuestClusterPhaseReady || rec.ReadyAt == nil || !rec.ReadyAt.Equal(*first.ReadyAt) {
		t.Errorf("record after the resync: %s %s ready at %v, want Ready at https://127.0.0.1:7443 since %v", rec.Phase, rec.Endpoint, rec.ReadyAt, first.ReadyAt)
	}
	kkv, _ := h.b.KV(ctx, events.BucketGuestClusterKubeconfigs)
	if ke, err := kkv.Get(ctx, events.GuestClusterRecordKey("team-a", "gc1")); err != nil || !strings.Contains(string(ke.Value()), "https://127.0.0.1:7443") {
		t.Errorf("kubeconfig after the resync: %v, want the new endpoint", err)
	}
}
