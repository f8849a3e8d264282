package imagecache_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/imagecache"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
	"github.com/podvisor/podvisor/shared/ociregistry"
	"github.com/podvisor/podvisor/shared/redistest"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// Datastores of the test datacenter: shared is mounted on every host, local
// only on hostLocal.
const (
	sharedDS  = "LocalDS_0"
	localDS   = "host-local-ds"
	hostLocal = "DC0_C0_H0"
)

// registry is the in-process registry with counters of what it served and
// a switch to corrupt one blob.
type registry struct {
	*ociregistry.Registry
	blobBytes atomic.Int64
	blobGets  atomic.Int64
	manifests atomic.Int64 // manifest requests (resolutions)
	mu        sync.Mutex
	corrupt   string // blob digest to corrupt
}

type countingWriter struct {
	http.ResponseWriter
	reg     *registry
	corrupt bool
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.reg.blobBytes.Add(int64(len(p)))
	if w.corrupt && len(p) > 0 {
		q := append([]byte(nil), p...)
		q[len(q)/2] ^= 0x5a
		w.corrupt = false
		return w.ResponseWriter.Write(q)
	}
	return w.ResponseWriter.Write(p)
}

func startRegistry(t testing.TB) *registry {
	t.Helper()
	r := &registry{}
	reg, err := ociregistry.Start(context.Background(), ociregistry.Config{Wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if strings.Contains(req.URL.Path, "/manifests/") {
				r.manifests.Add(1)
			}
			if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/sha256:") {
				r.blobGets.Add(1)
				r.mu.Lock()
				bad := r.corrupt != "" && strings.HasSuffix(req.URL.Path, r.corrupt)
				r.mu.Unlock()
				h.ServeHTTP(&countingWriter{ResponseWriter: w, reg: r, corrupt: bad}, req)
				return
			}
			h.ServeHTTP(w, req)
		})
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Close)
	if _, err := ociregistry.Seed(context.Background(), reg.Addr()); err != nil {
		t.Fatal(err)
	}
	r.Registry = reg
	r.blobBytes.Store(0)
	r.blobGets.Store(0)
	return r
}

func (r *registry) setCorrupt(digest string) {
	r.mu.Lock()
	r.corrupt = digest
	r.mu.Unlock()
}

// vcenter is an in-process vcsim with one cluster of three hosts, a
// datastore on all of them and one mounted only on hostLocal.
type vcenter struct {
	model  *simulator.Model
	client *govmomi.Client
	dc     *object.Datacenter
}

func startVCenter(t testing.TB) *vcenter {
	t.Helper()
	m := simulator.VPX()
	m.Datacenter = 1
	m.Cluster = 1
	m.ClusterHost = 3
	m.Host = 0
	m.Machine = 0
	m.Datastore = 1
	if err := m.Create(); err != nil {
		t.Fatal(err)
	}
	srv := m.Service.NewServer()
	t.Cleanup(func() { srv.Close(); m.Remove() })
	ctx := context.Background()
	c, err := govmomi.NewClient(ctx, srv.URL, true)
	if err != nil {
		t.Fatal(err)
	}
	f := find.NewFinder(c.Client)
	dc, err := f.DefaultDatacenter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.SetDatacenter(dc)
	host, err := f.HostSystem(ctx, hostLocal)
	if err != nil {
		t.Fatal(err)
	}
	dss, err := host.ConfigManager().DatastoreSystem(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), localDS)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := dss.CreateLocalDatastore(ctx, localDS, dir); err != nil {
		t.Fatal(err)
	}
	return &vcenter{model: m, client: c, dc: dc}
}

// setFreeSpace changes what the API reports as a datastore's free space.
func (v *vcenter) setFreeSpace(t testing.TB, ds string, free int64) {
	t.Helper()
	ctx := context.Background()
	obj, err := find.NewFinder(v.client.Client).Datastore(ctx, ds)
	if err != nil {
		t.Fatal(err)
	}
	m := v.model.Map()
	sds := m.Get(obj.Reference()).(*simulator.Datastore)
	sctx := *v.model.Service.Context
	sctx.Context = ctx
	m.WithLock(&sctx, sds, func() {
		s := sds.Summary
		s.FreeSpace = free
		m.Update(&sctx, sds, []types.PropertyChange{{Name: "summary", Val: s}})
	})
}

// env is a running image cache with everything it talks to.
type env struct {
	t     testing.TB
	bus   *bus.Bus
	vc    *vcenter
	redis *redis.Client
	reg   *registry
	svc   *imagecache.Service
	seen  *collector
}

// collector keeps every pod image event and image event.
type collector struct {
	mu  sync.Mutex
	evs []event.Event
	ch  chan struct{}
}

func (c *collector) add(ev event.Event) {
	c.mu.Lock()
	c.evs = append(c.evs, ev)
	c.mu.Unlock()
	select {
	case c.ch <- struct{}{}:
	default:
	}
}

func (c *collector) snapshot() []event.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]event.Event(nil), c.evs...)
}

func startEnv(t testing.TB, mutate func(*imagecache.Config)) *env {
	t.Helper()
	return startEnvOn(t, startVCenter(t), mutate)
}

// startEnvOn runs the image cache against a given vCenter.
func startEnvOn(t testing.TB, vc *vcenter, mutate func(*imagecache.Config)) *env {
	t.Helper()
	e := &env{t: t, bus: bustest.Start(t), vc: vc, redis: redistest.Start(t), reg: startRegistry(t),
		seen: &collector{ch: make(chan struct{}, 1)}}
	sub, err := e.bus.Conn().Subscribe("pv.>", func(m *nats.Msg) {
		if !strings.HasPrefix(m.Subject, "pv.pod.images.") && !strings.HasPrefix(m.Subject, "pv.image.") {
			return
		}
		ev, err := bus.DecodeHeaders(m.Header, m.Data)
		if err != nil {
			t.Errorf("undecodable event on %s: %v", m.Subject, err)
			return
		}
		e.seen.add(ev)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	cfg := imagecache.Config{Workers: 8, LeaseTTL: 2 * time.Second, GCInterval: time.Hour, CheckInterval: 100 * time.Millisecond}
	if mutate != nil {
		mutate(&cfg)
	}
	e.svc = e.newService(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return e
}

func (e *env) newService(cfg imagecache.Config) *imagecache.Service {
	e.t.Helper()
	svc, err := imagecache.New(cfg, imagecache.Deps{
		Bus:     e.bus,
		VSphere: &vsphere.Session{Client: e.vc.client, Datacenter: e.vc.dc},
		Redis:   e.redis,
		Logger:  slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return svc
}

func newPod(ns, name string, images ...string) corev1.Pod {
	pod := corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}, ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	for i, img := range images {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: fmt.Sprintf("c%d", i), Image: img})
	}
	events.NormalizePod(&pod)
	return pod
}

func uidOf(name string) string { return "uid-" + name }

// accept publishes pod.accepted for a pod of the given images.
func (e *env) accept(name string, images ...string) {
	e.t.Helper()
	pod := newPod("default", name, images...)
	data := &events.PodAccepted{Namespace: "default", Name: name, UID: uidOf(name), Pod: pod,
		Size: events.SizePodVM(&pod), Networks: events.PodNetworks(&pod), Images: events.PodImages(&pod)}
	e.publish(events.TypePodAccepted, events.PodKey("default", name), data)
}

func (e *env) publish(ceType, subject string, data events.Payload) {
	e.t.Helper()
	if err := data.Validate(); err != nil {
		e.t.Fatalf("test event %s invalid: %v", ceType, err)
	}
	ev, err := bus.NewEvent(events.OwnerSource(ceType), ceType, subject, data)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.bus.Publish(ctx, ev); err != nil {
		e.t.Fatal(err)
	}
}

// waitFor waits until pred holds for the collected events.
func (e *env) waitFor(what string, timeout time.Duration, pred func([]event.Event) bool) []event.Event {
	e.t.Helper()
	deadline := time.After(timeout)
	for {
		evs := e.seen.snapshot()
		if pred(evs) {
			return evs
		}
		select {
		case <-e.seen.ch:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			var types []string
			for _, ev := range evs {
				types = append(types, ev.Type()+" "+ev.Subject())
			}
			e.t.Fatalf("timed out waiting for %s; events seen: %v", what, types)
		}
	}
}

// ofType decodes the collected events of a type.
func ofType[T any](t testing.TB, evs []event.Event, ceType string) []*T {
	t.Helper()
	var out []*T
	for _, ev := range evs {
		if ev.Type() != ceType {
			continue
		}
		v := new(T)
		if err := json.Unmarshal(ev.Data(), v); err != nil {
			t.Fatalf("decode %s: %v", ceType, err)
		}
		out = append(out, v)
	}
	return out
}

// readyFor returns the pod.images.ready of a pod, if seen.
func readyFor(t testing.TB, evs []event.Event, name string) *events.PodImagesReady {
	for _, r := range ofType[events.PodImagesReady](t, evs, events.TypePodImagesReady) {
		if r.Name == name {
			return r
		}
	}
	return nil
}

func countReady(t testing.TB, evs []event.Event, prefix string) int {
	n := 0
	for _, r := range ofType[events.PodImagesReady](t, evs, events.TypePodImagesReady) {
		if strings.HasPrefix(r.Name, prefix) {
			n++
		}
	}
	return n
}

func bytesReader(s string) *strings.Reader { return strings.NewReader(s) }
