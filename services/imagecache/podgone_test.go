package imagecache_test

import (
	"context"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/imagecache"
	"github.com/podvisor/podvisor/shared/imagemeta"
	"github.com/podvisor/podvisor/shared/testenv"
)

// TestPodGoneWhileItsImagesArePrepared: a pod.accepted handled after the
// pod's pod.deleted (tried again after a failed attempt, or by another
// replica) references the image's chains for a pod whose references
// nothing will drop again. The image cache checks the pod record once the
// chains are referenced: a pod whose record is gone, or belongs to a newer
// pod of that name, has its references and keys dropped and nothing
// announced; a pod being deleted is looked at again until its record is
// gone; and a pod that is gone when an image fails has the references of
// the images before it dropped as well. Before, each of them was
// announced (or failed) and kept its references for good, so the
// collector could never evict the chains.
func TestPodGoneWhileItsImagesArePrepared(t *testing.T) {
	e := startEnv(t, func(c *imagecache.Config) { c.BackOff = []time.Duration{50 * time.Millisecond} })
	ctx := context.Background()
	web := e.reg.Ref("podvisor/web:1.0")

	// A pod of the image that lives: the chains are there, referenced once.
	e.handled(e.accept("live", web))
	layers := layerSizes(t, e, web)

	holds := func(name string) []string {
		t.Helper()
		return e.holds(t, layers, name)
	}
	announced := func(name string) bool {
		return readyFor(t, e.Events.Seen(), name) != nil
	}
	// forgotten checks that pod name was not announced and that nothing is
	// kept for it; why says what became of the pod.
	forgotten := func(t *testing.T, name, why string) {
		t.Helper()
		if announced(name) {
			t.Error("pod.images.ready for a pod " + why)
		}
		if got := holds(name); len(got) != 0 {
			t.Errorf("the image cache keeps %v for a pod %s", got, why)
		}
	}
	if got := holds("live"); len(got) != len(layers)+3 {
		t.Fatalf("a live pod holds %v, want its %d chains and its 3 keys", got, len(layers))
	}

	t.Run("record gone", func(t *testing.T) {
		// pod.deleted was handled first (nothing to drop yet), and the
		// provisioner removed the record after it.
		e.handled(e.Publish(&events.PodDeleted{PodRef: events.PodRef{Namespace: "default", Name: "gone", UID: testenv.UID("gone")}}))
		e.handled(e.Publish(testenv.Accepted(testenv.Pod("gone", web))))
		forgotten(t, "gone", "that is gone")
	})

	t.Run("record of a newer pod", func(t *testing.T) {
		newer := testenv.PendingRecord(testenv.Accepted(testenv.Pod("renamed", web)))
		newer.UID = "uid-of-a-newer-pod"
		e.PutPodRecord(newer)
		e.handled(e.Publish(testenv.Accepted(testenv.Pod("renamed", web))))
		forgotten(t, "renamed", "replaced by a newer one of its name")
	})

	t.Run("being deleted", func(t *testing.T) {
		acc := testenv.Accepted(testenv.Pod("leaving", web))
		rec := testenv.PendingRecord(acc)
		rec.DeletionRequestedAt = time.Now()
		e.PutPodRecord(rec)
		seq := e.Publish(acc)
		// The chains are referenced; the pod is looked at again while its
		// record says it is being deleted, and nothing is announced.
		e.Eventually("the chains referenced for the pod being deleted", func() bool { return len(holds("leaving")) > 0 })
		if announced("leaving") {
			t.Fatal("pod.images.ready for a pod being deleted")
		}
		// The provisioner's teardown ends: the record goes.
		if err := e.KV(events.BucketPods).Delete(ctx, events.PodRecordKey("default", "leaving")); err != nil {
			t.Fatal(err)
		}
		e.handled(seq)
		forgotten(t, "leaving", "deleted meanwhile")
	})

	t.Run("gone when an image fails", func(t *testing.T) {
		// web is referenced, then the second image is not found: the
		// failure hook runs for a pod whose record is gone.
		e.handled(e.Publish(testenv.Accepted(testenv.Pod("failing", web, e.reg.Ref("podvisor/nope:1.0")))))
		if got := holds("failing"); len(got) != 0 {
			t.Errorf("the image cache keeps %v for a pod that is gone after its image failed", got)
		}
	})

	// The live pod kept all it had.
	if got := holds("live"); len(got) != len(layers)+3 {
		t.Fatalf("the live pod holds %v, want its %d chains and its 3 keys", got, len(layers))
	}
	for _, l := range layers {
		if rec, _, _ := e.reader().chain(l.ChainID, sharedDS); rec.Refs != 1 {
			t.Errorf("chain %s has %d references, want the live pod's 1", l.ChainID, rec.Refs)
		}
	}
}

// holds lists what the image cache still keeps for pod name: the chains of
// layers whose reference sets name it, and its own keys.
func (e *env) holds(t testing.TB, layers []imagemeta.Layer, name string) []string {
	t.Helper()
	ctx := context.Background()
	uid := testenv.UID(name)
	var out []string
	for _, l := range layers {
		for _, ds := range []string{sharedDS, localDS} {
			if in, err := e.redis.SIsMember(ctx, imagemeta.ChainRefsKey(l.ChainID, ds), uid).Result(); err != nil {
				t.Fatal(err)
			} else if in {
				out = append(out, imagemeta.IndexMember(l.ChainID, ds))
			}
		}
	}
	for _, k := range []string{imagemeta.PodKey(uid), imagemeta.PodContainersKey(uid), imagemeta.PodReadyKey(uid)} {
		if n, err := e.redis.Exists(ctx, k).Result(); err != nil {
			t.Fatal(err)
		} else if n == 1 {
			out = append(out, k)
		}
	}
	return out
}
