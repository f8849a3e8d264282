package bench

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/rootfs"
)

// ImageDisks measures the image cache writing an image into its disks
// (pull, verify, write each layer as an erofs filesystem, upload to the
// datastore) against a plain go-containerregistry pull and extract of the
// same image to a local directory in the same run.
type ImageDisks struct {
	Image string `json:"image"`
	// Bytes is the image's uncompressed size, Compressed its layers' size.
	Bytes      int64 `json:"bytes"`
	Compressed int64 `json:"compressed_bytes"`
	Layers     int   `json:"layers"`
	// ColdMS: request to pod.images.ready with nothing on the datastore.
	ColdMS     float64 `json:"cold_ms"`
	ColdMBps   float64 `json:"cold_mb_per_s"`
	BaselineMS float64 `json:"baseline_ms"`
	// BaselineMBps: remote.Image + mutate.Extract + writing the files.
	BaselineMBps float64 `json:"baseline_mb_per_s"`
	// Ratio is ColdMBps / BaselineMBps (target ≥ 0.7).
	Ratio float64 `json:"cold_to_baseline"`
	// WarmMS: a second pod of the image (its disks are on the datastore).
	WarmMS     float64 `json:"warm_ms"`
	WarmToCold float64 `json:"warm_to_cold"`
	// ColdMS and BaselineMS are the medians of these rounds (one distinct
	// image each, its baseline measured right before its cold preparation).
	ColdRoundsMS     []float64 `json:"cold_rounds_ms"`
	BaselineRoundsMS []float64 `json:"baseline_rounds_ms"`
}

// benchImage builds an image of about mib MiB (uncompressed) in four
// layers of files whose contents are half random (incompressible) and half
// text, as real images are.
func benchImage(mib int, seed uint64) (v1.Image, int64, error) {
	const layers, fileSize = 4, 256 << 10
	files := max(mib<<20/fileSize/layers, 1)
	rng := rand.New(rand.NewPCG(seed, 11))
	text := []byte(strings.Repeat("the quick brown fox jumps over the lazy dog; ", fileSize/45+1))[:fileSize/2]
	var total int64
	var ls []v1.Layer
	for l := range layers {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		dir := fmt.Sprintf("opt/layer%d/", l)
		_ = tw.WriteHeader(&tar.Header{Name: "opt/", Typeflag: tar.TypeDir, Mode: 0o755})
		_ = tw.WriteHeader(&tar.Header{Name: dir, Typeflag: tar.TypeDir, Mode: 0o755})
		body := make([]byte, fileSize)
		for f := range files {
			for i := 0; i < fileSize/2; i += 8 {
				v := rng.Uint64()
				for j := range 8 {
					body[i+j] = byte(v >> (8 * j))
				}
			}
			copy(body[fileSize/2:], text)
			if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("%sf%04d", dir, f), Typeflag: tar.TypeReg, Mode: 0o644, Size: fileSize}); err != nil {
				return nil, 0, err
			}
			if _, err := tw.Write(body); err != nil {
				return nil, 0, err
			}
			total += fileSize
		}
		if err := tw.Close(); err != nil {
			return nil, 0, err
		}
		b := buf.Bytes()
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
		if err != nil {
			return nil, 0, err
		}
		ls = append(ls, layer)
	}
	img, err := mutate.AppendLayers(empty.Image, ls...)
	return img, total, err
}

// imageRounds is how many distinct images are measured cold, each right
// after its baseline: on a shared machine one pair can land in a busy
// moment, so the medians of the rounds are compared.
const imageRounds = 3

// measureImageDisks pushes mib-MiB images to the registry and, for each,
// extracts it with go-containerregistry to a local directory (the
// baseline), then has the image cache prepare it for a first pod (cold);
// the last image is then prepared for a second pod (warm). reg reach the
// registry.
func measureImageDisks(ctx context.Context, b *bus.Bus, w *watcher, registry string, reg []remote.Option, mib int) (*ImageDisks, error) {
	out := &ImageDisks{}
	var colds, bases []float64
	for round := range imageRounds {
		img, size, err := benchImage(mib, uint64(round+7))
		if err != nil {
			return nil, fmt.Errorf("bench image: %w", err)
		}
		ref := fmt.Sprintf("%s/bench/disks:%d", registry, round)
		r, err := name.ParseReference(ref)
		if err != nil {
			return nil, err
		}
		if err := remote.Write(r, img, append([]remote.Option{remote.WithContext(ctx)}, reg...)...); err != nil {
			return nil, fmt.Errorf("push %s: %w", ref, err)
		}
		mf, err := img.Manifest()
		if err != nil {
			return nil, err
		}
		out.Image, out.Bytes, out.Layers, out.Compressed = ref, size, len(mf.Layers), 0
		for _, l := range mf.Layers {
			out.Compressed += l.Size
		}
		start := time.Now()
		if err := pullAndExtract(ctx, r, reg); err != nil {
			return nil, fmt.Errorf("baseline: %w", err)
		}
		bases = append(bases, ms(time.Since(start)))
		cold, err := prepareFor(ctx, b, w, fmt.Sprintf("image-disks-cold-%d", round), ref)
		if err != nil {
			return nil, err
		}
		colds = append(colds, cold)
	}
	warm, err := prepareFor(ctx, b, w, "image-disks-warm", out.Image)
	if err != nil {
		return nil, err
	}
	out.ColdMS, out.BaselineMS, out.WarmMS = median(colds), median(bases), warm
	mb := float64(out.Bytes) / 1e6
	out.ColdMBps = mb / (out.ColdMS / 1000)
	out.BaselineMBps = mb / (out.BaselineMS / 1000)
	out.Ratio = out.ColdMBps / out.BaselineMBps
	out.WarmToCold = out.WarmMS / out.ColdMS
	out.ColdRoundsMS, out.BaselineRoundsMS = colds, bases
	return out, nil
}

// prepareFor requests a pod of image and returns the milliseconds from the
// request to its pod.images.ready.
func prepareFor(ctx context.Context, b *bus.Bus, w *watcher, pod, image string) (float64, error) {
	key := events.PodKey(Namespace, pod)
	start := time.Now()
	if err := request(ctx, b, pod, image); err != nil {
		return 0, err
	}
	if !w.waitFor(ctx, 5*time.Minute, func() bool {
		_, ok := w.at(key, events.TypePodImagesReady)
		_, failed := w.at(key, events.TypePodImagesFailed)
		return ok || failed
	}) {
		return 0, fmt.Errorf("%s: no pod.images.ready within 5 minutes", key)
	}
	ready, ok := w.at(key, events.TypePodImagesReady)
	if !ok {
		return 0, fmt.Errorf("%s: pod.images.failed (see `podvisor events`)", key)
	}
	return ms(ready.Sub(start)), nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// pullAndExtract is the baseline: go-containerregistry pulls the image and
// flattens it (mutate.Extract), and its files are written to a fresh
// directory, as a plain image puller would.
func pullAndExtract(ctx context.Context, r name.Reference, reg []remote.Option) error {
	img, err := remote.Image(r, append([]remote.Option{remote.WithContext(ctx)}, reg...)...)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "podvisor-bench-extract-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	return rootfs.ExtractImage(img, dir)
}
