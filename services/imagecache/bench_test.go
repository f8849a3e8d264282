package imagecache_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/podvisor/podvisor/shared/ociregistry"
	"github.com/podvisor/podvisor/shared/testenv"
)

// BenchmarkColdVsWarm measures preparing a pod's image when no layer is on
// a datastore (cold: pull, verify, write blob, create disks) against when
// the chain is already there (warm: resolve the digest and take references),
// from pod.accepted to pod.images.ready, and the registry bytes each moves.
// It reports both and their ratio:
//
//	go test -run '^$' -bench ColdVsWarm -benchtime 5x ./services/imagecache/
func BenchmarkColdVsWarm(b *testing.B) {
	e := startEnv(b, nil)
	ctx := context.Background()
	var cold, warm time.Duration
	var coldBytes, warmBytes int64
	for i := 0; b.Loop(); i++ {
		// A fresh image every round (its own base and app layer, 2.5 MiB),
		// so the cold case is really cold.
		var layers []v1.Layer
		for j, size := range []int{2 << 20, 512 << 10} {
			l, err := ociregistry.Layer(ociregistry.LayerSpec{Path: fmt.Sprintf("bench/%d/%d.bin", i, j), Size: size, Seed: uint64(1000 + 10*i + j)})
			if err != nil {
				b.Fatal(err)
			}
			layers = append(layers, l)
		}
		ref := e.reg.Ref(fmt.Sprintf("bench/app:%d", i))
		if _, err := ociregistry.Push(ctx, ref, layers...); err != nil {
			b.Fatal(err)
		}
		d, n := e.timeReady(b, fmt.Sprintf("cold-%d", i), ref)
		cold, coldBytes = cold+d, coldBytes+n
		d, n = e.timeReady(b, fmt.Sprintf("warm-%d", i), ref)
		warm, warmBytes = warm+d, warmBytes+n
	}
	rounds := float64(b.N)
	b.ReportMetric(float64(cold.Microseconds())/rounds/1000, "cold-ms")
	b.ReportMetric(float64(warm.Microseconds())/rounds/1000, "warm-ms")
	b.ReportMetric(float64(cold)/float64(max(warm, 1)), "cold/warm-time")
	b.ReportMetric(float64(coldBytes)/rounds, "cold-bytes")
	b.ReportMetric(float64(warmBytes)/rounds, "warm-bytes")
	b.ReportMetric(0, "ns/op")
}

// timeReady accepts a pod of ref and returns the time to its
// pod.images.ready and the layer bytes pulled meanwhile.
func (e *env) timeReady(b *testing.B, name, ref string) (time.Duration, int64) {
	before := e.svc.Stats().BytesPulled
	start := time.Now()
	e.accept(name, ref)
	e.WaitFor(name+" ready", 30*time.Second, func(evs []testenv.Seen) bool { return readyFor(b, evs, name) != nil })
	return time.Since(start), e.svc.Stats().BytesPulled - before
}
