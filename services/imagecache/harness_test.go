package imagecache_test

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/redis/go-redis/v9"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/imagecache"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/ociregistry/registrytest"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// Datastores of the test datacenter: shared is mounted on every host, local
// only on hostLocal.
const (
	sharedDS  = "LocalDS_0"
	localDS   = "host-local-ds"
	hostLocal = "DC0_C0_H0"
)

// startVCenter starts a vcsim of one cluster of three hosts, a datastore
// on all of them and one mounted only on hostLocal.
func startVCenter(t testing.TB) *simtest.VCenter {
	t.Helper()
	vc := simtest.StartVPX(t, 3)
	vc.AddLocalDatastore(t, hostLocal, localDS)
	return vc
}

// env is the image cache running in the test environment (shared/testenv:
// bus, redis-server, a recorder of every event) against its own vCenter and
// registry.
type env struct {
	*testenv.Env
	t     testing.TB
	bus   *bus.Bus
	vc    *simtest.VCenter
	redis *redis.Client
	reg   *registrytest.Registry
	svc   *imagecache.Service
	seen  imageEvents
}

// imageEvents are the recorded events the image cache publishes
// (pv.pod.images.*, pv.image.*), in order.
type imageEvents struct{ *testenv.Recorder }

func (r imageEvents) snapshot() []event.Event {
	var out []event.Event
	for _, s := range r.Seen() {
		if t := s.Event.Type(); strings.HasPrefix(t, "io.podvisor.pod.images.") || strings.HasPrefix(t, "io.podvisor.image.") {
			out = append(out, s.Event)
		}
	}
	return out
}

func startEnv(t testing.TB, mutate func(*imagecache.Config)) *env {
	t.Helper()
	return startEnvOn(t, startVCenter(t), mutate)
}

func startEnvOn(t testing.TB, vc *simtest.VCenter, mutate func(*imagecache.Config)) *env {
	t.Helper()
	te := testenv.Start(t, testenv.Redis())
	e := &env{Env: te, t: t, bus: te.Bus, vc: vc, redis: te.Redis, reg: registrytest.Start(t), seen: imageEvents{te.Events}}
	cfg := imagecache.Config{Workers: 8, LeaseTTL: 2 * time.Second, GCInterval: time.Hour, CheckInterval: 100 * time.Millisecond}
	if mutate != nil {
		mutate(&cfg)
	}
	e.svc = e.newService(cfg)
	e.Run(imagecache.Name, e.svc.Run)
	return e
}

func (e *env) newService(cfg imagecache.Config) *imagecache.Service {
	e.t.Helper()
	svc, err := imagecache.New(cfg, imagecache.Deps{Bus: e.bus, VSphere: &vsphere.Session{Client: e.vc.Client, Datacenter: e.vc.DC},
		Redis: e.redis, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
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

// accept publishes pod.accepted for a pod of the images, as the provisioner
// would, and returns its stream sequence.
func (e *env) accept(name string, images ...string) uint64 {
	e.t.Helper()
	pod := newPod("default", name, images...)
	return e.publish(events.TypePodAccepted, events.PodKey("default", name), &events.PodAccepted{Namespace: "default", Name: name,
		UID: uidOf(name), Pod: pod, Size: events.SizePodVM(&pod), Networks: events.PodNetworks(&pod), Images: events.PodImages(&pod)})
}

// publish sends a valid event as its owner would.
func (e *env) publish(ceType, subject string, data events.Payload) uint64 {
	e.t.Helper()
	if err := data.Validate(); err != nil {
		e.t.Fatalf("test event %s invalid: %v", ceType, err)
	}
	return e.PublishAs(events.OwnerSource(ceType), ceType, subject, data)
}

// handled waits until the image cache settled the pod event at seq.
func (e *env) handled(seq uint64) {
	e.t.Helper()
	e.WaitHandled(events.StreamPods, imagecache.Name+"-"+events.StreamPods, seq)
}

// waitFor waits until pred holds for the image events seen so far.
func (e *env) waitFor(what string, timeout time.Duration, pred func([]event.Event) bool) []event.Event {
	e.t.Helper()
	var evs []event.Event
	e.EventuallyWithin(what, timeout, func() bool { evs = e.seen.snapshot(); return pred(evs) })
	return evs
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
