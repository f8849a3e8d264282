package scheduler_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/imagemeta"
	"github.com/podvisor/podvisor/shared/redistest"
)

// Image locality through the image cache's real Redis read model: a pod
// whose image chain is (partly still being pulled) on cluster-2's datastore
// goes to a cluster-2 host and pod.scheduled lists that datastore first;
// a pod of an image held on cluster-1's datastore goes to cluster-1. Two
// opposite outcomes, so host hardware alone cannot pass the test.
func TestImageLocalityFromRedis(t *testing.T) {
	rdb := redistest.Start(t)
	ctx := context.Background()
	digest := "sha256:" + strings.Repeat("d", 64)
	base, top := "sha256:"+strings.Repeat("1", 64), "sha256:"+strings.Repeat("2", 64)
	m := imagemeta.Manifest{Digest: digest, Image: "podvisor/web:1.0", Layers: []imagemeta.Layer{
		{Digest: "sha256:" + strings.Repeat("a", 64), ChainID: base, Size: 30 << 20},
		{Digest: "sha256:" + strings.Repeat("b", 64), ChainID: top, Size: 10 << 20},
	}}
	data, _ := json.Marshal(m)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(rdb.Set(ctx, imagemeta.RefKey("podvisor/web:1.0"), digest, 0).Err())
	must(rdb.Set(ctx, imagemeta.ManifestKey(digest), data, 0).Err())
	// Base layer ready and top layer still pulling on cluster-2-ds; only
	// the base on the shared datastore.
	must(rdb.HSet(ctx, imagemeta.ChainLocsKey(base), "cluster-2-ds", events.ChainStateReady, "shared-ds", events.ChainStateReady).Err())
	must(rdb.HSet(ctx, imagemeta.ChainLocsKey(top), "cluster-2-ds", events.ChainStatePulling).Err())

	digest2, only := "sha256:"+strings.Repeat("e", 64), "sha256:"+strings.Repeat("3", 64)
	m2 := imagemeta.Manifest{Digest: digest2, Image: "podvisor/worker:1.0", Layers: []imagemeta.Layer{
		{Digest: "sha256:" + strings.Repeat("c", 64), ChainID: only, Size: 20 << 20}}}
	data2, _ := json.Marshal(m2)
	must(rdb.Set(ctx, imagemeta.RefKey("podvisor/worker:1.0"), digest2, 0).Err())
	must(rdb.Set(ctx, imagemeta.ManifestKey(digest2), data2, 0).Err())
	must(rdb.HSet(ctx, imagemeta.ChainLocsKey(only), "cluster-1-ds", events.ChainStateReady).Err())

	e := startEnv(t, envOptions{clusters: 2, hostsPerCluster: 2, redis: rdb})
	p := testPod("web", "1", "1Gi")
	p.Spec.Containers[0].Image = "podvisor/web:1.0"
	acc := e.accept(p)
	s := e.waitScheduled(acc.ObjectKey())
	if s.Cluster != "cluster-2" {
		t.Fatalf("placed in %s, the image is on cluster-2-ds", s.Cluster)
	}
	if len(s.Datastores) == 0 || s.Datastores[0] != "cluster-2-ds" {
		t.Errorf("datastores %v, want cluster-2-ds first", s.Datastores)
	}
	w := testPod("worker", "1", "1Gi")
	w.Spec.Containers[0].Image = "podvisor/worker:1.0"
	if s := e.waitScheduled(e.accept(w).ObjectKey()); s.Cluster != "cluster-1" || s.Datastores[0] != "cluster-1-ds" {
		t.Errorf("worker placed in %s with datastores %v, its image is on cluster-1-ds", s.Cluster, s.Datastores)
	}
}
