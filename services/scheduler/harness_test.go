package scheduler_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler"
	"github.com/podvisor/podvisor/services/scheduler/ledger"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// env is a scheduler running against a real bus and a simulated vCenter;
// the test plays the other services (it publishes pod.accepted, writes the
// net-hosts and pods read models) and watches what the scheduler says.
type env struct {
	t   testing.TB
	bus *bus.Bus
	dc  *sim.Datacenter
	obs *observer
	svc *scheduler.Service
	led *ledger.Ledger

	opts envOptions
	stop func()
}

type envOptions struct {
	clusters, hostsPerCluster int
	cfg                       func(*scheduler.Config)
	// networks maps a network to the hosts it is realized on (nil = all).
	networks map[string][]string
	// redis, when set, is the image cache's Redis the scheduler reads.
	redis redis.UniversalClient
}

func startEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	if o.clusters == 0 {
		o.clusters, o.hostsPerCluster = 2, 4
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := bustest.Start(t)
	dc := simtest.Start(t, sim.Config{Clusters: o.clusters, HostsPerCluster: o.hostsPerCluster, Seed: 42})
	e := &env{t: t, bus: b, dc: dc, obs: newObserver(t, b)}
	if o.networks == nil {
		o.networks = map[string][]string{"default": nil}
	}
	for n, hosts := range o.networks {
		if hosts == nil {
			hosts = e.hostNames()
		}
		e.setNetwork(n, hosts, hosts)
	}
	kv, err := b.KV(ctx, events.BucketLedger)
	if err != nil {
		t.Fatal(err)
	}
	e.led = ledger.New(kv)
	e.opts = o
	e.stop = e.startScheduler()
	// Wait for the inventory to be in KV hosts: the scheduler is serving.
	e.eventually("host records written", 15*time.Second, func() bool { return len(e.hostRecords()) == o.clusters*o.hostsPerCluster })
	return e
}

// startScheduler starts a scheduler instance on the env's bus and
// datacenter (with its own vCenter session, as another process would) and
// returns a function that stops it and waits (also run at cleanup).
func (e *env) startScheduler() (stop func()) {
	t := e.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	session, err := vsphere.Connect(ctx, vsphere.Config{URL: e.dc.URL().String(), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	cfg := scheduler.DefaultConfig()
	cfg.RetryInitial, cfg.RetryMax = 100*time.Millisecond, time.Second
	cfg.HostRecordInterval = 100 * time.Millisecond
	if e.opts.cfg != nil {
		e.opts.cfg(&cfg)
	}
	deps := scheduler.Deps{Bus: e.bus, VSphere: session, Redis: e.opts.redis}
	if os.Getenv("SCHEDULER_TEST_DEBUG") != "" {
		deps.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	svc, err := scheduler.New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	e.svc = svc
	runCtx, cancelRun := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(runCtx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancelRun()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("scheduler Run: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Errorf("scheduler did not stop")
			}
			session.Close(context.Background())
		})
	}
	t.Cleanup(stop)
	return stop
}

func (e *env) hostNames() []string {
	var out []string
	for _, h := range e.dc.Hosts() {
		out = append(out, h.Name)
	}
	return out
}

// setNetwork writes network-config's availability read model.
func (e *env) setNetwork(name string, realized, scope []string) {
	e.t.Helper()
	kv, err := e.bus.KV(context.Background(), events.BucketNetHosts)
	if err != nil {
		e.t.Fatal(err)
	}
	data, _ := json.Marshal(events.NetworkAvailability{Network: name, Version: 1, Hosts: realized, Scope: scope})
	if _, err := kv.Put(context.Background(), name, data); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) hostRecords() map[string]events.HostRecord {
	kv, err := e.bus.KV(context.Background(), events.BucketHosts)
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]events.HostRecord{}
	lister, err := kv.ListKeys(context.Background())
	if err != nil {
		return out
	}
	for k := range lister.Keys() {
		kve, err := kv.Get(context.Background(), k)
		if err != nil {
			continue
		}
		var r events.HostRecord
		if json.Unmarshal(kve.Value(), &r) == nil {
			out[r.Name] = r
		}
	}
	return out
}

func (e *env) eventually(what string, d time.Duration, ok func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if ok() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.t.Fatalf("timed out waiting for %s", what)
}

// publish sends an event as a client or another service would.
func (e *env) publish(source, ceType, subject string, data any) event.Event {
	e.t.Helper()
	ev, err := bus.NewEvent(source, ceType, subject, data)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.bus.Publish(context.Background(), ev); err != nil {
		e.t.Fatal(err)
	}
	return ev
}

// testPod is a pod manifest with one container of the given requests.
func testPod(name string, cpu, mem string, mutate ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"app": "test"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "main", Image: "podvisor/base:1.0",
			Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)}},
		}}},
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

// accept publishes pod.accepted as the provisioner would, and writes the
// pod's record (the scheduler reads it for evictions and migrations).
func (e *env) accept(p *corev1.Pod) *events.PodAccepted {
	e.t.Helper()
	uid := "uid-" + p.Name
	acc := &events.PodAccepted{Namespace: p.Namespace, Name: p.Name, UID: uid, Pod: *p,
		Size: events.SizePodVM(p), Networks: events.PodNetworks(p)}
	for _, c := range p.Spec.Containers {
		acc.Images = append(acc.Images, c.Image)
	}
	e.writePodRecord(&events.PodRecord{UID: uid, Namespace: p.Namespace, Name: p.Name, Pod: *p, Size: acc.Size,
		Networks: acc.Networks, Phase: events.PodPhasePending, RequestID: "req-" + p.Name})
	e.publish("podvisor/provisioner", events.TypePodAccepted, acc.ObjectKey(), acc)
	return acc
}

func (e *env) writePodRecord(r *events.PodRecord) {
	e.t.Helper()
	kv, err := e.bus.KV(context.Background(), events.BucketPods)
	if err != nil {
		e.t.Fatal(err)
	}
	data, _ := json.Marshal(r)
	if _, err := kv.Put(context.Background(), events.PodRecordKey(r.Namespace, r.Name), data); err != nil {
		e.t.Fatal(err)
	}
}

// observer records what the scheduler publishes, latest per key.
type observer struct {
	mu            sync.Mutex
	scheduled     map[string]*events.PodScheduled
	unschedulable map[string]*events.PodUnschedulable
	counts        map[string]int
	hostFacts     []event.Event
	migrations    map[string]event.Event // by migration id, latest
}

func newObserver(t testing.TB, b *bus.Bus) *observer {
	o := &observer{scheduled: map[string]*events.PodScheduled{}, unschedulable: map[string]*events.PodUnschedulable{},
		counts: map[string]int{}, migrations: map[string]event.Event{}}
	for _, subj := range []string{"pv.pod.scheduled", "pv.pod.unschedulable", "pv.host.>", "pv.migration.target.reserved", "pv.migration.rejected"} {
		sub, err := b.Conn().Subscribe(subj, func(m *nats.Msg) {
			ev, err := bus.DecodeMessage(m)
			if err != nil {
				t.Errorf("undecodable event on %s: %v", m.Subject, err)
				return
			}
			v, err := events.Decode(ev.Type(), ev.Data())
			if err != nil {
				t.Errorf("scheduler published an invalid %s: %v", ev.Type(), err)
				return
			}
			o.mu.Lock()
			defer o.mu.Unlock()
			o.counts[ev.Type()]++
			switch x := v.(type) {
			case *events.PodScheduled:
				o.scheduled[x.ObjectKey()] = x
				delete(o.unschedulable, x.ObjectKey())
			case *events.PodUnschedulable:
				o.unschedulable[x.ObjectKey()] = x
			case *events.MigrationTargetReserved:
				o.migrations[x.ID] = ev
			case *events.MigrationRejected:
				o.migrations[x.ID] = ev
			default:
				o.hostFacts = append(o.hostFacts, ev)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sub.Unsubscribe() })
	}
	b.Conn().Flush()
	return o
}

func (o *observer) decided(keys []string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, k := range keys {
		if o.scheduled[k] != nil || o.unschedulable[k] != nil {
			n++
		}
	}
	return n
}

func (o *observer) scheduledOf(key string) *events.PodScheduled {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.scheduled[key]
}

func (o *observer) unschedulableOf(key string) *events.PodUnschedulable {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.unschedulable[key]
}

func (o *observer) migration(id string) (event.Event, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	ev, ok := o.migrations[id]
	return ev, ok
}

func (o *observer) facts(ceType, host string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, ev := range o.hostFacts {
		if ev.Type() == ceType && ev.Subject() == host {
			n++
		}
	}
	return n
}

func podKey(name string) string { return events.PodKey("default", name) }
