package ociregistry

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"math/rand/v2"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// LayerSpec describes a generated layer: one file of Size pseudo-random
// bytes derived from Seed, stored at Path inside the layer.
type LayerSpec struct {
	Path string
	Size int
	Seed uint64
}

// Sample layers. base is shared by web and worker.
var (
	layerBase   = LayerSpec{Path: "usr/lib/podvisor/base.bin", Size: 2 << 20, Seed: 1}
	layerWeb1   = LayerSpec{Path: "srv/web/app.bin", Size: 512 << 10, Seed: 2}
	layerWeb2   = LayerSpec{Path: "srv/web/assets.bin", Size: 256 << 10, Seed: 3}
	layerWorker = LayerSpec{Path: "srv/worker/worker.bin", Size: 384 << 10, Seed: 4}
)

// SampleImage is one image Seed pushes.
type SampleImage struct {
	RepoTag string
	Layers  []LayerSpec
}

// SampleImages lists what Seed pushes, base layers first.
func SampleImages() []SampleImage {
	return []SampleImage{
		{RepoTag: "podvisor/base:1.0", Layers: []LayerSpec{layerBase}},
		{RepoTag: "podvisor/web:1.0", Layers: []LayerSpec{layerBase, layerWeb1, layerWeb2}},
		{RepoTag: "podvisor/worker:1.0", Layers: []LayerSpec{layerBase, layerWorker}},
	}
}

// Seed pushes the sample images to the registry at addr and returns their
// references in the order of SampleImages. opts carry how to reach it
// (Registry.Options for a registry serving TLS).
func Seed(ctx context.Context, addr string, opts ...remote.Option) ([]string, error) {
	var refs []string
	for _, img := range SampleImages() {
		layers := make([]v1.Layer, 0, len(img.Layers))
		for _, spec := range img.Layers {
			l, err := Layer(spec)
			if err != nil {
				return nil, err
			}
			layers = append(layers, l)
		}
		ref := addr + "/" + img.RepoTag
		if _, err := PushWith(ctx, ref, opts, layers...); err != nil {
			return nil, err
		}
		refs = append(refs, ref)
	}
	return refs, nil
}

// Layer builds a gzip-compressed tar layer holding one file as spec says.
// The same spec always gives the same bytes and digests: the tar header has
// a fixed time and owner, gzip a fixed header, the content a fixed seed.
func Layer(spec LayerSpec) (v1.Layer, error) {
	if spec.Path == "" {
		return nil, fmt.Errorf("layer spec: path is required")
	}
	if spec.Size < 0 {
		return nil, fmt.Errorf("layer spec %s: size %d must not be negative", spec.Path, spec.Size)
	}
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	if err := tw.WriteHeader(&tar.Header{Name: spec.Path, Mode: 0o644, Size: int64(spec.Size), Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
		return nil, fmt.Errorf("layer %s: %w", spec.Path, err)
	}
	// Incompressible content, so that the layer's size on the wire is about
	// its file size, as with real binaries.
	rng := rand.New(rand.NewPCG(spec.Seed, spec.Seed^0x9e3779b97f4a7c15))
	buf := make([]byte, 8)
	for n := 0; n < spec.Size; n += 8 {
		v := rng.Uint64()
		for i := range buf {
			buf[i] = byte(v >> (8 * i))
		}
		if _, err := tw.Write(buf[:min(8, spec.Size-n)]); err != nil {
			return nil, fmt.Errorf("layer %s: %w", spec.Path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer %s: %w", spec.Path, err)
	}
	return gzipLayer(tarBuf.Bytes(), gzip.BestSpeed)
}

// gzipLayer is the layer of an uncompressed tar, compressed at level: the
// same bytes and level make the same digest.
func gzipLayer(tarBytes []byte, level int) (v1.Layer, error) {
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, level)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(tarBytes); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	compressed := gz.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(compressed)), nil
	})
}

// Push writes an image made of layers (base first) to ref and returns its
// manifest digest.
func Push(ctx context.Context, ref string, layers ...v1.Layer) (v1.Hash, error) {
	return PushWith(ctx, ref, nil, layers...)
}

// PushWith is Push with remote options (Registry.Options: the transport
// that trusts a TLS registry's CA).
func PushWith(ctx context.Context, ref string, opts []remote.Option, layers ...v1.Layer) (v1.Hash, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("push %q: %w", ref, err)
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", ref, err)
	}
	if err := remote.Write(r, img, append([]remote.Option{remote.WithContext(ctx)}, opts...)...); err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", ref, err)
	}
	return d, nil
}
