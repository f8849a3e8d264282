package imagecache_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/imagecache"
	"github.com/podvisor/podvisor/shared/ociregistry"
	"github.com/podvisor/podvisor/shared/servetest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// TestRefusingRegistryIsToldWhileRetried: a pod whose registry refuses
// connections is told so at every failed try but the last
// (pod.images.retrying: the reason, the error, the try and when the next
// one is due), one event per try; once the registry answers, the next try
// makes the images ready and nothing failed. Before, the pod learnt
// nothing until the deliveries ran out, minutes later.
func TestRefusingRegistryIsToldWhileRetried(t *testing.T) {
	const backoff = 300 * time.Millisecond
	e := startEnv(t, func(c *imagecache.Config) {
		c.MaxDeliver = 50 // the registry comes back long before they run out
		c.BackOff = []time.Duration{backoff}
	})
	// An address where nothing listens (connection refused) until the
	// registry is served there.
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(servetest.FreePort(t)))
	ref := addr + "/podvisor/web:1.0"

	e.accept("refused", ref)
	retries := func(evs []testenv.Seen) []*events.PodImagesRetrying {
		return testenv.In(t, evs, func(r *events.PodImagesRetrying) bool { return r.Name == "refused" })
	}
	evs := e.WaitFor("two tries told", 20*time.Second, func(evs []testenv.Seen) bool { return len(retries(evs)) >= 2 })
	for i, r := range retries(evs)[:2] {
		if r.UID != testenv.UID("refused") || r.Container != "c0" || r.Image != ref || r.Reason != imagecache.ReasonRegistryUnavailable ||
			!strings.Contains(r.Message, "connection refused") || r.Attempt != i+1 {
			t.Fatalf("try %d told %+v; want container c0, image %s, RegistryUnavailable with the refusal, attempt %d", i+1, r, ref, i+1)
		}
		if wait := time.Until(r.NextAttemptAt); wait > backoff {
			t.Errorf("try %d: next try at %s, more than the back-off %s away", i+1, r.NextAttemptAt, backoff)
		}
	}
	ids := map[string]bool{}
	for _, s := range evs {
		if r, ok := s.Payload.(*events.PodImagesRetrying); ok && r.Name == "refused" {
			ids[s.Event.ID()] = true
		}
	}
	if n := len(retries(evs)); len(ids) != n {
		t.Errorf("%d pod.images.retrying under %d ids, want one id per try", n, len(ids))
	}

	// The registry answers there now: the test's own, relayed.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen where the registry refused: %v", err)
	}
	servetest.Accept(t, ln, func(c net.Conn) {
		go relay(c, e.reg.Addr())
	})
	evs = e.WaitFor("images ready once the registry answers", 30*time.Second, func(evs []testenv.Seen) bool {
		return readyFor(t, evs, "refused") != nil
	})
	if f := testenv.In[events.PodImagesFailed](t, evs, nil); len(f) != 0 {
		t.Fatalf("pod.images.failed %+v, want none", f)
	}
}

// relay copies c to a connection to addr and back until either side ends.
func relay(c net.Conn, addr string) {
	defer c.Close()
	b, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer b.Close()
	go func() {
		_, _ = io.Copy(b, c)
		b.Close()
	}()
	_, _ = io.Copy(c, b)
}

// hangingRegistry is a registry seeded with the sample images whose GETs of
// the layer blobs it was told of (hangOn) hang until the request ends
// (cancelled counts those) or release is called (they are served then).
type hangingRegistry struct {
	*ociregistry.Registry
	hung, cancelled atomic.Int64
	released        chan struct{}
	release         func()

	mu     sync.Mutex
	layers []string // blob digests that hang
}

func startHangingRegistry(t *testing.T) *hangingRegistry {
	t.Helper()
	h := &hangingRegistry{released: make(chan struct{})}
	h.release = sync.OnceFunc(func() { close(h.released) })
	reg, err := ociregistry.Start(context.Background(), ociregistry.Config{Wrap: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && h.hangs(r.URL.Path) {
				h.hung.Add(1)
				select {
				case <-h.released:
				case <-r.Context().Done():
					h.cancelled.Add(1)
					return
				}
			}
			next.ServeHTTP(w, r)
		})
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Close)
	t.Cleanup(h.release)
	if _, err := ociregistry.Seed(context.Background(), reg.Addr()); err != nil {
		t.Fatal(err)
	}
	h.Registry = reg
	return h
}

// hangOn makes the GETs of ref's layer blobs hang (its manifest and config
// are served: the image resolves, its pull hangs).
func (h *hangingRegistry) hangOn(t *testing.T, ref string) {
	layers := layerSizesFromRegistry(t, ref)
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, l := range layers {
		h.layers = append(h.layers, l.Digest)
	}
}

func (h *hangingRegistry) hangs(path string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.ContainsFunc(h.layers, func(d string) bool { return strings.HasSuffix(path, "/blobs/"+d) })
}

// TestDeletedPodsPullStops: a pod deleted while its pull hangs stops being
// prepared within seconds, so that its pod.deleted, queued behind its
// pod.accepted under the same key, is handled at once, and once its
// record is gone nothing is kept for it. The pull itself ends when no
// other pod waits for it; one another pod of the image waits for goes on,
// and that pod gets its images without a failed try. Before, the pod held
// its worker (and its pod.deleted) until the registry's bounds ran out,
// and a pull that two pods shared failed for both when the one that
// started it gave up.
func TestDeletedPodsPullStops(t *testing.T) {
	e := startEnv(t, func(c *imagecache.Config) { c.BackOff = []time.Duration{50 * time.Millisecond} })

	// deleted plays the provisioner's delete of pod name: the record says
	// it is being deleted; pod.deleted, which drops the keys the image
	// cache keeps for the pod once it is free to handle it (the ack floor
	// cannot tell: another pod's pod.accepted before it may still run);
	// the record removed.
	deleted := func(name string) {
		t.Helper()
		rec := testenv.PendingRecord(testenv.Accepted(testenv.Pod(name)))
		rec.DeletionRequestedAt = time.Now()
		e.PutPodRecord(rec)
		e.Publish(&events.PodDeleted{PodRef: events.PodRef{Namespace: "default", Name: name, UID: testenv.UID(name)}})
		e.EventuallyWithin(name+"'s pod.deleted handled", 10*time.Second, func() bool { return len(e.holds(t, nil, name)) == 0 })
		if err := e.KV(events.BucketPods).Delete(context.Background(), events.PodRecordKey("default", name)); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("shared pull goes on", func(t *testing.T) {
		reg := startHangingRegistry(t)
		web := reg.Ref("podvisor/web:1.0")
		reg.hangOn(t, web)
		doomed := e.accept("doomed", web)
		e.Eventually("doomed's pull hanging", func() bool { return reg.hung.Load() == 3 })
		survivor := e.accept("survivor", web)
		e.Eventually("survivor waiting for the same pulls", func() bool { return e.svc.ChainWaiters() == 6 })
		deleted("doomed")
		if n := reg.cancelled.Load(); n != 0 {
			t.Fatalf("%d blob requests cancelled with doomed, which survivor waits for too", n)
		}
		if n := reg.hung.Load(); n != 3 {
			t.Fatalf("%d layer requests while survivor waited, want the 3 in flight (the pulls go on)", n)
		}
		reg.release()
		e.handled(survivor)
		e.handled(doomed)
		evs := e.Events.Seen()
		if readyFor(t, evs, "survivor") == nil {
			t.Fatal("survivor's images not ready")
		}
		if r := testenv.In(t, evs, func(r *events.PodImagesRetrying) bool { return r.Name == "survivor" }); len(r) != 0 {
			t.Fatalf("survivor's pull failed on the way: %+v", r[0])
		}
		if readyFor(t, evs, "doomed") != nil {
			t.Error("pod.images.ready for doomed, deleted before its images were ready")
		}
		if got := e.holds(t, layerSizes(t, e, web), "doomed"); len(got) != 0 {
			t.Errorf("the image cache keeps %v for doomed, deleted", got)
		}
	})

	t.Run("lone pull ends", func(t *testing.T) {
		reg := startHangingRegistry(t)
		worker := reg.Ref("podvisor/worker:1.0")
		reg.hangOn(t, worker)
		lonely := e.accept("lonely", worker)
		e.Eventually("lonely's pull hanging", func() bool { return reg.hung.Load() > 0 })
		deleted("lonely")
		e.Eventually("the hung layer requests ended", func() bool { return reg.cancelled.Load() == reg.hung.Load() })
		e.handled(lonely)
		evs := e.Events.Seen()
		if readyFor(t, evs, "lonely") != nil {
			t.Error("pod.images.ready for lonely, deleted before its images were ready")
		}
		if f := testenv.In(t, evs, func(f *events.PodImagesFailed) bool { return f.Name == "lonely" }); len(f) != 0 {
			t.Errorf("pod.images.failed for lonely, deleted: %+v", f[0])
		}
		if got := e.holds(t, layerSizes(t, e, worker), "lonely"); len(got) != 0 {
			t.Errorf("the image cache keeps %v for lonely, deleted", got)
		}
	})
}
