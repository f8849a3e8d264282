package imagecache_test

import (
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/imagecache"
	"github.com/podvisor/podvisor/shared/ociregistry/registrytest"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
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
	vc    *simtest.VCenter
	redis *redis.Client
	reg   *registrytest.Registry
	svc   *imagecache.Service
}

func startEnv(t testing.TB, mutate func(*imagecache.Config)) *env {
	t.Helper()
	return startEnvOn(t, startVCenter(t), mutate)
}

func startEnvOn(t testing.TB, vc *simtest.VCenter, mutate func(*imagecache.Config)) *env {
	t.Helper()
	te := testenv.Start(t, testenv.Redis())
	e := &env{Env: te, vc: vc, redis: te.Redis, reg: registrytest.Start(t)}
	cfg := imagecache.Config{Workers: 8, LeaseTTL: 2 * time.Second, GCInterval: time.Hour, CheckInterval: 100 * time.Millisecond}
	if mutate != nil {
		mutate(&cfg)
	}
	e.svc = e.newService(cfg)
	e.Run(imagecache.Name, e.svc.Run)
	return e
}

func (e *env) newService(cfg imagecache.Config) *imagecache.Service {
	e.T.Helper()
	svc, err := imagecache.New(cfg, imagecache.Deps{Bus: e.Bus, VSphere: e.vc.Session(),
		Redis: e.redis, Logger: testenv.Logger()})
	if err != nil {
		e.T.Fatal(err)
	}
	return svc
}

// accept admits a pod of the images as the provisioner would (its record,
// then pod.accepted: the image cache announces images only for a pod that
// still exists), and returns the event's stream sequence.
func (e *env) accept(name string, images ...string) uint64 {
	e.T.Helper()
	return e.Accept(testenv.Accepted(testenv.Pod(name, images...)))
}

// handled waits until the image cache settled the pod event at seq.
func (e *env) handled(seq uint64) {
	e.T.Helper()
	e.WaitHandled(events.StreamPods, imagecache.Name+"-"+events.StreamPods, seq)
}

// readyFor returns the pod.images.ready of a pod, if seen; countReady
// counts those of pods named prefix….
func readyFor(t testing.TB, evs []testenv.Seen, name string) *events.PodImagesReady {
	return testenv.First(t, evs, func(r *events.PodImagesReady) bool { return r.Name == name })
}

func countReady(t testing.TB, evs []testenv.Seen, prefix string) int {
	return len(testenv.In(t, evs, func(r *events.PodImagesReady) bool { return strings.HasPrefix(r.Name, prefix) }))
}
