package imagecache_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/imagecache"
	"github.com/podvisor/podvisor/services/imagecache/imagedisk"
	"github.com/podvisor/podvisor/services/imagecache/oci"
	"github.com/podvisor/podvisor/shared/bus"
	imagelocality "github.com/podvisor/podvisor/shared/imagemeta"
	"github.com/podvisor/podvisor/shared/testenv"
)

// Sizes of the sample layers as pushed by ociregistry.Seed.
func layerSizes(t testing.TB, e *env, ref string) []imagelocality.Layer {
	t.Helper()
	d, err := imagelocality.NewReader(e.redis).Digest(context.Background(), ref)
	if err != nil || d == "" {
		t.Fatalf("digest of %s: %q, %v", ref, d, err)
	}
	m, ok, err := imagelocality.NewReader(e.redis).Manifest(context.Background(), d)
	if err != nil || !ok {
		t.Fatalf("manifest of %s: %v %v", ref, ok, err)
	}
	return m.Layers
}

func sum(ls []imagelocality.Layer) int64 {
	var n int64
	for _, l := range ls {
		n += l.Size
	}
	return n
}

// TestManyPodsOnePullAndSharedBase is the main scenario: 20 pods of
// one image cause one pull of its bytes; 5 pods of an image sharing its base
// pull only their new layer, and that layer's disk names the shared base
// disk as parent.
func TestManyPodsOnePullAndSharedBase(t *testing.T) {
	e := startEnv(t, nil)
	web, worker := e.reg.Ref("podvisor/web:1.0"), e.reg.Ref("podvisor/worker:1.0")

	manifestsBefore := e.reg.Manifests.Load()
	for i := 0; i < 20; i++ {
		e.accept(fmt.Sprintf("web-%02d", i), web)
	}
	evs := e.WaitFor("20 web pods ready", 30*time.Second, func(evs []testenv.Seen) bool { return countReady(t, evs, "web-") == 20 })
	// One resolution of the tag serves the burst (ResolveTTL).
	if n := e.reg.Manifests.Load() - manifestsBefore; n > 2 {
		t.Fatalf("%d manifest requests for 20 pods of one image, want 1 resolution", n)
	}
	t.Logf("manifest requests for 20 pods: %d", e.reg.Manifests.Load()-manifestsBefore)
	webLayers := layerSizes(t, e, web)
	if got, want := e.svc.Stats().BytesPulled, sum(webLayers); got != want {
		t.Fatalf("bytes pulled for 20 pods = %d, want the image size %d once", got, want)
	}
	if got := e.svc.Stats().LayersPulled; got != 3 {
		t.Fatalf("layers pulled = %d, want 3", got)
	}
	if got, want := e.reg.BlobBytes.Load(), sum(webLayers); got > want+4096 { // + the config blob
		t.Fatalf("registry served %d blob bytes, want about %d", got, want)
	}
	first := readyFor(t, evs, "web-00")
	for i := 0; i < 20; i++ {
		r := readyFor(t, evs, fmt.Sprintf("web-%02d", i))
		c := r.Containers[0]
		if c.Disk != first.Containers[0].Disk || c.Datastore != sharedDS || len(c.Chain) != 3 || c.Chain[2] != c.Disk ||
			len(c.ChainIDs) != 3 || c.ChainIDs[2] != webLayersFromChain(c.Chain[2]) || c.FS != "erofs" {
			t.Fatalf("pod web-%02d images = %+v, want the shared chain %v on %s", i, c, first.Containers[0].Chain, sharedDS)
		}
	}
	pulls := testenv.In[events.ImagePulled](t, evs, nil)
	if len(pulls) != 1 || pulls[0].LayersPulled != 3 || pulls[0].Datastore != sharedDS {
		t.Fatalf("image.pulled = %+v, want one with 3 layers pulled", pulls)
	}

	before := e.svc.Stats().BytesPulled
	for i := 0; i < 5; i++ {
		e.accept(fmt.Sprintf("worker-%d", i), worker)
	}
	evs = e.WaitFor("5 worker pods ready", 30*time.Second, func(evs []testenv.Seen) bool { return countReady(t, evs, "worker-") == 5 })
	workerLayers := layerSizes(t, e, worker)
	if workerLayers[0].ChainID != webLayers[0].ChainID {
		t.Fatal("worker and web do not share the base chain")
	}
	if got, want := e.svc.Stats().BytesPulled-before, workerLayers[1].Size; got != want {
		t.Fatalf("worker pulled %d bytes, want only its own layer's %d", got, want)
	}
	for _, p := range testenv.In[events.ImagePulled](t, evs, nil) {
		if p.Image == worker && (p.LayersPulled != 1 || len(p.Chain) != 2 || p.Chain[1].Parent != p.Chain[0].ChainID) {
			t.Fatalf("image.pulled of worker = %+v, want 1 new layer on top of the shared base", p)
		}
	}
	if n := len(testenv.In[events.ImagePulled](t, evs, nil)); n != 2 {
		t.Fatalf("%d image.pulled events, want 2 (one per image and datastore)", n)
	}
	wr := readyFor(t, evs, "worker-0").Containers[0]
	if len(wr.Chain) != 2 || wr.Chain[0] != first.Containers[0].Chain[0] {
		t.Fatalf("worker chain %v must start with web's base disk %s", wr.Chain, first.Containers[0].Chain[0])
	}
	top, ok, err := e.reader().chain(workerLayers[1].ChainID, sharedDS)
	if err != nil || !ok {
		t.Fatalf("worker top chain record: %v %v", ok, err)
	}
	if top.ParentDisk != first.Containers[0].Chain[0] || top.Parent != webLayers[0].ChainID {
		t.Fatalf("worker top disk parent = %s (%s), want the shared base disk %s", top.ParentDisk, top.Parent, first.Containers[0].Chain[0])
	}

	// The datastore holds each distinct layer once, as a disk whose
	// descriptor names its parent and whose extent is the layer's filesystem.
	ctx := context.Background()
	store := imagedisk.New(e.vc.Client.Client, e.vc.DC)
	var onDS int64
	for _, l := range append(webLayers, workerLayers[1]) {
		rec, err := store.ReadDisk(ctx, sharedDS, l.ChainID)
		if err != nil {
			t.Fatal(err)
		}
		onDS += rec.Size
	}
	if distinct := sum(webLayers) + workerLayers[1].Size; onDS > 4*distinct || onDS < distinct {
		t.Fatalf("image disks on the datastore = %d bytes, want between the %d distinct compressed layer bytes and 4× that", onDS, distinct)
	}

	// The read models: references and locality.
	imgs, err := imagelocality.NewReader(e.redis).Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	refs := map[string]int{}
	for _, r := range imgs {
		if r.Datastore == sharedDS && r.State == events.ChainStateReady {
			refs[r.Image] = r.Refs
		}
	}
	if refs[web] != 20 || refs[worker] != 5 {
		t.Fatalf("refs = %v, want web 20 and worker 5", refs)
	}
	loc, err := imagelocality.NewReader(e.redis).Locality(ctx, []string{worker})
	if err != nil || loc[sharedDS] != 1 {
		t.Fatalf("locality of worker = %v, %v; want %s: 1", loc, err, sharedDS)
	}

	// Deleting the pods drops their references.
	for i := 0; i < 5; i++ {
		name := fmt.Sprintf("worker-%d", i)
		e.Publish(&events.PodDeleted{PodRef: events.PodRef{Namespace: "default", Name: name, UID: testenv.UID(name)}})
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec, _, _ := e.reader().chain(workerLayers[1].ChainID, sharedDS)
		base, _, _ := e.reader().chain(workerLayers[0].ChainID, sharedDS)
		if rec.Refs == 0 && base.Refs == 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after deleting workers: worker top refs %d, base refs %d; want 0 and 20", rec.Refs, base.Refs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func layerSizesFromRegistry(t *testing.T, ref string) []imagelocality.Layer {
	t.Helper()
	c, err := oci.New(oci.Config{})
	if err != nil {
		t.Fatal(err)
	}
	img, err := c.Resolve(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return img.Layers
}

type reader struct{ e *env }

func (e *env) reader() reader { return reader{e} }

func (r reader) chain(chainID, ds string) (events.ChainRecord, bool, error) {
	chains, err := imagelocality.NewReader(r.e.redis).Chains(context.Background())
	if err != nil {
		return events.ChainRecord{}, false, err
	}
	for _, c := range chains {
		if c.ChainID == chainID && c.Datastore == ds {
			return c, true, nil
		}
	}
	return events.ChainRecord{}, false, nil
}

func TestFailures(t *testing.T) {
	e := startEnv(t, nil)
	ctx := context.Background()

	// A corrupted blob: the registry flips a byte of worker's own layer.
	worker := e.reg.Ref("podvisor/worker:1.0")
	resolved := layerSizesFromRegistry(t, worker)
	e.reg.Corrupt(resolved[1].Digest)
	e.accept("corrupt", worker)
	e.accept("missing", e.reg.Ref("podvisor/nope:1.0"))
	evs := e.WaitFor("two failures", 30*time.Second, func(evs []testenv.Seen) bool {
		return len(testenv.In[events.PodImagesFailed](t, evs, nil)) == 2
	})
	reasons := map[string]events.PodImagesFailed{}
	for _, f := range testenv.In[events.PodImagesFailed](t, evs, nil) {
		reasons[f.Name] = *f
	}
	if f := reasons["corrupt"]; f.Reason != "DigestMismatch" || !strings.Contains(f.Message, resolved[1].Digest) || f.Container != "c0" {
		t.Fatalf("corrupt blob: %+v, want DigestMismatch naming the layer digest", f)
	}
	if f := reasons["missing"]; f.Reason != "ImageNotFound" {
		t.Fatalf("unknown image: %+v, want ImageNotFound", f)
	}
	// No ready record over bad data: the worker layer is failed, its folder gone.
	rec, ok, _ := e.reader().chain(resolved[1].ChainID, sharedDS)
	if !ok || rec.State != events.ChainStateFailed {
		t.Fatalf("corrupt chain record = %+v (%v), want failed", rec, ok)
	}
	if _, _, err := imagedisk.New(e.vc.Client.Client, e.vc.DC).ReadFlat(ctx, sharedDS, resolved[1].ChainID); err == nil {
		t.Fatal("the corrupt layer's disk is on the datastore")
	}
	// The base layer was fine and stays ready.
	if base, ok, _ := e.reader().chain(resolved[0].ChainID, sharedDS); !ok || base.State != events.ChainStateReady {
		t.Fatalf("base chain = %+v, want ready", base)
	}

	// Once the registry serves good bytes again, the next pod gets the image.
	e.reg.Corrupt("")
	e.accept("healed", worker)
	e.WaitFor("healed pod ready", 30*time.Second, func(evs []testenv.Seen) bool { return readyFor(t, evs, "healed") != nil })

	// Datastore full: no room on any datastore for web's layers.
	e.vc.SetFreeSpace(t, sharedDS, 1<<20)
	e.vc.SetFreeSpace(t, localDS, 1<<20)
	if err := e.svc.RefreshInventory(ctx); err != nil {
		t.Fatal(err)
	}
	e.accept("full", e.reg.Ref("podvisor/web:1.0"))
	evs = e.WaitFor("datastore full", 30*time.Second, func(evs []testenv.Seen) bool {
		for _, f := range testenv.In[events.PodImagesFailed](t, evs, nil) {
			if f.Name == "full" {
				return true
			}
		}
		return false
	})
	for _, f := range testenv.In[events.PodImagesFailed](t, evs, nil) {
		if f.Name == "full" && f.Reason != "DatastoreFull" {
			t.Fatalf("full datastore: %+v, want DatastoreFull", f)
		}
	}
}

// TestRegistryUnavailable: a registry that does not answer makes the pod
// fail with RegistryUnavailable once the redeliveries are used up, not at
// the first refusal (the exhaustion of a transient failure, told by the
// route's failure hook); each try before the last is told as it fails.
func TestRegistryUnavailable(t *testing.T) {
	e := startEnv(t, func(c *imagecache.Config) {
		c.MaxDeliver = 3
		c.BackOff = []time.Duration{100 * time.Millisecond}
	})
	ref := e.reg.Ref("podvisor/web:1.0")
	e.reg.Close()
	start := time.Now()
	e.accept("offline", ref)
	evs := e.WaitFor("failure", 30*time.Second, func(evs []testenv.Seen) bool {
		return len(testenv.In[events.PodImagesFailed](t, evs, nil)) == 1
	})
	f := testenv.In[events.PodImagesFailed](t, evs, nil)[0]
	if f.Reason != "RegistryUnavailable" || f.Image != ref || !strings.Contains(f.Message, "gave up after 3 attempts") {
		t.Fatalf("failure = %+v, want RegistryUnavailable for %s after 3 attempts", f, ref)
	}
	if time.Since(start) < 200*time.Millisecond {
		t.Fatalf("failed after %s, before two redeliveries", time.Since(start))
	}
	// The tries before the last were told as they failed; the last one's
	// failure is pod.images.failed alone.
	var tries []int
	for _, r := range testenv.In[events.PodImagesRetrying](t, evs, nil) {
		tries = append(tries, r.Attempt)
	}
	if !slices.Equal(tries, []int{1, 2}) {
		t.Fatalf("pod.images.retrying told tries %v, want 1 and 2", tries)
	}
}

// webLayersFromChain is the chainID a chain disk's folder is named after.
func webLayersFromChain(disk string) string {
	return "sha256:" + path.Base(path.Dir(disk))
}

// TestAcceptedAgainIsAnsweredAgain: a pod.accepted that comes again under a
// new id (the provisioner asking again for the facts of a pod Scheduled too
// long without them) gets pod.images.ready again, although the disks are
// the ones announced before; a redelivery of the same event would carry
// the same effect id. Before, the image cache stayed silent, and a
// pod.images.ready lost after delivery could not be recovered.
func TestAcceptedAgainIsAnsweredAgain(t *testing.T) {
	e := startEnv(t, nil)
	img := e.reg.Ref("podvisor/web:1.0")
	e.accept("again", img)
	e.WaitFor("the first pod.images.ready", 20*time.Second, func(evs []testenv.Seen) bool { return countReady(t, evs, "again") == 1 })
	e.accept("again", img)
	evs := e.WaitFor("pod.images.ready again", 20*time.Second, func(evs []testenv.Seen) bool { return countReady(t, evs, "again") == 2 })
	rs := testenv.In(t, evs, func(r *events.PodImagesReady) bool { return r.Name == "again" })
	if rs[0].Containers[0].Disk != rs[1].Containers[0].Disk {
		t.Fatalf("announced disks %s then %s, want the same", rs[0].Containers[0].Disk, rs[1].Containers[0].Disk)
	}
}

// TestScheduledAgainIsAnsweredAgain: images on a datastore not every host
// mounts are announced on pod.scheduled only, so a pod.scheduled that comes
// again under a new id (the scheduler answering the pod.accepted the
// provisioner announced again for a fact it never got) is the one way a
// lost pod.images.ready comes back. It is answered again, with the same
// disks, whether they are on the datastore only the pod's host mounts
// (near) or were copied to the shared one for it (far); a redelivery of the
// same pod.scheduled is answered under the same effect id. Before, the
// image cache found the disks announced and stayed silent.
func TestScheduledAgainIsAnsweredAgain(t *testing.T) {
	e := startEnv(t, func(c *imagecache.Config) { c.Datastores = []string{localDS, sharedDS} })
	web := e.reg.Ref("podvisor/web:1.0")
	hosts := map[string]string{"near": hostLocal, "far": "DC0_C0_H1"}
	wantDS := map[string]string{"near": localDS, "far": sharedDS}
	for name := range hosts {
		e.handled(e.accept(name, web))
	}
	schedule := func(name string) event.Event {
		t.Helper()
		ev, err := bus.NewEvent(events.OwnerSource(events.TypePodScheduled), events.TypePodScheduled, events.PodKey("default", name),
			&events.PodScheduled{PodRef: events.PodRef{Namespace: "default", Name: name, UID: testenv.UID(name)}, Host: hosts[name], Cluster: "DC0_C0"})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Bus.Publish(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
		return ev
	}
	// readies are a pod's pod.images.ready as the bus carried them
	// (duplicates included), with their ids.
	readies := func(evs []testenv.Seen, name string) (ids []string, disks []string) {
		for _, s := range evs {
			if r, ok := s.Payload.(*events.PodImagesReady); ok && r.Name == name {
				ids = append(ids, s.Event.ID())
				disks = append(disks, r.Containers[0].Disk)
			}
		}
		return ids, disks
	}
	for name := range hosts {
		schedule(name)
	}
	e.WaitFor("the first pod.images.ready of each pod", 20*time.Second, func(evs []testenv.Seen) bool { return countReady(t, evs, "") == 2 })
	again := map[string]event.Event{}
	for name := range hosts {
		again[name] = schedule(name)
	}
	evs := e.WaitFor("pod.images.ready again", 20*time.Second, func(evs []testenv.Seen) bool { return countReady(t, evs, "") == 4 })
	for name := range hosts {
		ids, disks := readies(evs, name)
		if len(ids) != 2 || ids[0] == ids[1] || disks[0] != disks[1] {
			t.Fatalf("%s: announcements %v of disks %v; want two ids, one disk", name, ids, disks)
		}
		if ds := readyFor(t, evs, name).Containers[0].Datastore; ds != wantDS[name] {
			t.Errorf("%s on %s: images on %s, want %s", name, hosts[name], ds, wantDS[name])
		}
	}

	// The second pod.scheduled of near delivered once more (a copy the
	// stream keeps: structured mode, without a de-duplication id).
	body, err := json.Marshal(again["near"])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Bus.JetStream().PublishMsg(t.Context(), &nats.Msg{Subject: events.SubjectPodScheduled,
		Header: nats.Header{"Content-Type": {"application/cloudevents+json"}}, Data: body}); err != nil {
		t.Fatal(err)
	}
	evs = e.WaitFor("the redelivery answered", 20*time.Second, func(evs []testenv.Seen) bool {
		ids, _ := readies(evs, "near")
		return len(ids) == 3
	})
	if ids, _ := readies(evs, "near"); ids[2] != ids[1] {
		t.Errorf("the redelivery was answered under id %s, the first delivery under %s", ids[2], ids[1])
	}
	if n := len(testenv.Distinct(e.Env, func(r *events.PodImagesReady) bool { return r.Name == "near" })); n != 2 {
		t.Errorf("%d distinct pod.images.ready for near, want 2", n)
	}

	// pod.accepted asked again of far, whose chains were copied to the
	// shared datastore for it: prepared where the pod's chains are (not on
	// the local datastore the configuration lists first, which would move
	// its references off the disks it was announced, and stay silent), and
	// so answered at once.
	e.handled(e.accept("far", web))
	if ids, _ := readies(e.Events.Seen(), "far"); len(ids) != 3 {
		t.Fatalf("far asked again: %d pod.images.ready in all, want 3", len(ids))
	}
	top := layerSizes(t, e, web)[2].ChainID
	shared, _, _ := e.reader().chain(top, sharedDS)
	local, _, _ := e.reader().chain(top, localDS)
	if shared.Refs != 1 || local.Refs != 1 {
		t.Errorf("refs of the top chain: %s=%d %s=%d, want 1 (far) and 1 (near)", sharedDS, shared.Refs, localDS, local.Refs)
	}
}
