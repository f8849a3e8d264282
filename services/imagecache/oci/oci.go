package oci

import (
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	imagelocality "github.com/podvisor/podvisor/shared/imagemeta"
)

// Error classes. Callers test with errors.Is and map them to reasons.
var (
	ErrInvalidReference    = errors.New("invalid image reference")
	ErrImageNotFound       = errors.New("image not found")
	ErrUnauthorized        = errors.New("registry refused access")
	ErrRegistryUnavailable = errors.New("registry unavailable")
	ErrDigestMismatch      = errors.New("layer digest mismatch")
)

// Config tunes the registry client.
type Config struct {
	// Insecure lists registries (host[:port]) spoken to in plain HTTP.
	// Loopback registries always are.
	Insecure []string
	// Keychain finds credentials; nil means authn.DefaultKeychain.
	Keychain authn.Keychain
	// Transport, when set, carries the registry traffic.
	Transport http.RoundTripper
	// Retries of a temporary registry failure inside one call (0 = 2), with
	// RetryDelay (0 = 200ms) doubling between them. Longer waits belong to
	// the bus's redelivery backoff, not to a handler.
	Retries    int
	RetryDelay time.Duration
}

// Client talks to registries.
type Client struct {
	cfg  Config
	opts []remote.Option
}

// New returns a registry client.
func New(cfg Config) *Client {
	if cfg.Keychain == nil {
		cfg.Keychain = authn.DefaultKeychain
	}
	if cfg.Retries == 0 {
		cfg.Retries = 2
	}
	if cfg.RetryDelay == 0 {
		cfg.RetryDelay = 200 * time.Millisecond
	}
	opts := []remote.Option{
		remote.WithAuthFromKeychain(cfg.Keychain),
		remote.WithRetryBackoff(remote.Backoff{Duration: cfg.RetryDelay, Factor: 2, Steps: cfg.Retries + 1}),
	}
	if cfg.Transport != nil {
		opts = append(opts, remote.WithTransport(cfg.Transport))
	}
	return &Client{cfg: cfg, opts: opts}
}

// Image is a resolved image.
type Image struct {
	// Ref is the reference as given.
	Ref string
	// Digest is the manifest digest.
	Digest string
	// Layers are the layers base first, with chainIDs.
	Layers []imagelocality.Layer

	layers []v1.Layer // lazy remote layers, fetched by Fetch
}

// Manifest is the image as the image cache stores it.
func (i *Image) Manifest() imagelocality.Manifest {
	return imagelocality.Manifest{Digest: i.Digest, Image: i.Ref, Layers: slices.Clone(i.Layers)}
}

// Size is the sum of the compressed layer sizes.
func (i *Image) Size() int64 { return i.Manifest().Size() }

// ParseReference parses an image reference the way Resolve does.
func (c *Client) ParseReference(ref string) (name.Reference, error) {
	var nopts []name.Option
	if r, err := name.ParseReference(ref); err == nil && slices.Contains(c.cfg.Insecure, r.Context().RegistryStr()) {
		nopts = append(nopts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nopts...)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %v", ErrInvalidReference, ref, err)
	}
	return r, nil
}

// Resolve finds the image's digest and layers.
func (c *Client) Resolve(ctx context.Context, ref string) (*Image, error) {
	r, err := c.ParseReference(ref)
	if err != nil {
		return nil, err
	}
	opts := append([]remote.Option{remote.WithContext(ctx)}, c.opts...)
	img, err := remote.Image(r, opts...)
	if err != nil {
		return nil, classify(ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return nil, classify(ref, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, classify(ref, err)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, classify(ref, err)
	}
	if len(layers) != len(cf.RootFS.DiffIDs) {
		return nil, fmt.Errorf("image %s: %w: %d layers but %d diffIDs in its config", ref, ErrDigestMismatch, len(layers), len(cf.RootFS.DiffIDs))
	}
	out := &Image{Ref: ref, Digest: d.String(), layers: layers}
	diffIDs := make([]string, len(layers))
	for i, l := range layers {
		ld, err := l.Digest()
		if err != nil {
			return nil, classify(ref, err)
		}
		size, err := l.Size()
		if err != nil {
			return nil, classify(ref, err)
		}
		diffIDs[i] = cf.RootFS.DiffIDs[i].String()
		out.Layers = append(out.Layers, imagelocality.Layer{Digest: ld.String(), DiffID: diffIDs[i], Size: size})
	}
	for i, id := range ChainIDs(diffIDs) {
		out.Layers[i].ChainID = id
	}
	return out, nil
}

// ChainIDs computes the OCI chainIDs of a list of diffIDs (base first).
func ChainIDs(diffIDs []string) []string {
	out := make([]string, len(diffIDs))
	for i, d := range diffIDs {
		if i == 0 {
			out[i] = d
			continue
		}
		sum := sha256.Sum256([]byte(out[i-1] + " " + d))
		out[i] = "sha256:" + hex.EncodeToString(sum[:])
	}
	return out
}

// Fetched is what Fetch measured.
type Fetched struct {
	// Bytes read from the registry (compressed).
	Bytes int64
	// Uncompressed size of the layer's tar.
	Uncompressed int64
}

// Fetch streams layer i (compressed, as the registry serves it) into sink,
// which must consume the reader fully or fail. The digest, size and diffID
// are checked; a mismatch is ErrDigestMismatch even when sink succeeded, and
// the caller must then discard what sink stored.
func (c *Client) Fetch(ctx context.Context, img *Image, i int, sink func(r io.Reader, size int64) error) (Fetched, error) {
	if i < 0 || i >= len(img.layers) {
		return Fetched{}, fmt.Errorf("image %s: layer %d out of range", img.Ref, i)
	}
	want := img.Layers[i]
	rc, err := img.layers[i].Compressed()
	if err != nil {
		return Fetched{}, classify(img.Ref, err)
	}
	defer rc.Close()

	digestH := sha256.New()
	pr, pw := io.Pipe()
	diffDone := make(chan diffResult, 1)
	go func() { diffDone <- hashUncompressed(pr) }()

	counter := &countingReader{r: rc, h: digestH, w: pw, size: want.Size}
	sinkErr := sink(counter, want.Size)
	// Drain what sink did not read, so the digest covers the whole blob.
	if sinkErr == nil {
		_, _ = io.Copy(io.Discard, counter)
	}
	pw.CloseWithError(counter.err)
	diff := <-diffDone

	got := "sha256:" + hex.EncodeToString(digestH.Sum(nil))
	res := Fetched{Bytes: counter.n, Uncompressed: diff.size}
	switch {
	case counter.n == want.Size && got != want.Digest:
		return res, fmt.Errorf("image %s layer %d: %w: registry sent %s, manifest says %s", img.Ref, i, ErrDigestMismatch, got, want.Digest)
	case counter.n > want.Size:
		return res, fmt.Errorf("image %s layer %d: %w: registry sent more than the %d bytes the manifest says", img.Ref, i, ErrDigestMismatch, want.Size)
	case counter.err != nil && counter.n < want.Size:
		return res, fmt.Errorf("image %s layer %d after %d of %d bytes: %w", img.Ref, i, counter.n, want.Size, classify(img.Ref, counter.err))
	case sinkErr != nil:
		return res, sinkErr
	case counter.n < want.Size:
		return res, fmt.Errorf("image %s layer %d: %w: registry sent %d of %d bytes", img.Ref, i, ErrDigestMismatch, counter.n, want.Size)
	case diff.err != nil:
		return res, fmt.Errorf("image %s layer %d: %w: not a gzip tar: %v", img.Ref, i, ErrDigestMismatch, diff.err)
	case diff.digest != want.DiffID:
		return res, fmt.Errorf("image %s layer %d: %w: uncompressed digest %s, config says %s", img.Ref, i, ErrDigestMismatch, diff.digest, want.DiffID)
	}
	return res, nil
}

// countingReader hashes and counts what passes and feeds a copy to the
// diffID hasher. The remote's own verifying reader may fail at EOF on a
// mismatch; that error is kept in err and the classification above decides.
//
// Once the expected size has been read, a failure is reported to the sink as
// a clean EOF: the sink (an upload to the datastore) then finishes its
// request instead of aborting it half-way, so that no server-side write is
// still running when the caller deletes the rejected file.
type countingReader struct {
	r    io.Reader
	h    hash.Hash
	w    *io.PipeWriter
	size int64
	n    int64
	err  error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.n += int64(n)
		c.h.Write(p[:n])
		// The diff hasher may have given up on a corrupt stream; ignore.
		_, _ = c.w.Write(p[:n])
	}
	if err != nil && err != io.EOF {
		if c.n >= c.size {
			return n, io.EOF // the digest check reports it
		}
		c.err = err
	}
	return n, err
}

type diffResult struct {
	digest string
	size   int64
	err    error
}

func hashUncompressed(r *io.PipeReader) diffResult {
	defer func() { _, _ = io.Copy(io.Discard, r) }()
	zr, err := gzip.NewReader(r)
	if err != nil {
		r.CloseWithError(err)
		return diffResult{err: err}
	}
	h := sha256.New()
	n, err := io.Copy(h, zr)
	if err != nil {
		return diffResult{err: err}
	}
	return diffResult{digest: "sha256:" + hex.EncodeToString(h.Sum(nil)), size: n}
}

// classify maps registry and network errors to the package's classes.
func classify(ref string, err error) error {
	if err == nil {
		return nil
	}
	var terr *transport.Error
	if errors.As(err, &terr) {
		for _, d := range terr.Errors {
			switch d.Code {
			case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
				return fmt.Errorf("%w: %s: %v", ErrImageNotFound, ref, err)
			case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
				return fmt.Errorf("%w: %s: %v", ErrUnauthorized, ref, err)
			}
		}
		switch {
		case terr.StatusCode == http.StatusNotFound:
			return fmt.Errorf("%w: %s: %v", ErrImageNotFound, ref, err)
		case terr.StatusCode == http.StatusUnauthorized || terr.StatusCode == http.StatusForbidden:
			return fmt.Errorf("%w: %s: %v", ErrUnauthorized, ref, err)
		case terr.StatusCode >= 500 || terr.StatusCode == http.StatusTooManyRequests:
			return fmt.Errorf("%w: %s: %v", ErrRegistryUnavailable, ref, err)
		}
		return fmt.Errorf("image %s: %v", ref, err)
	}
	var nerr net.Error
	var operr *net.OpError
	if errors.As(err, &nerr) || errors.As(err, &operr) || errors.Is(err, io.ErrUnexpectedEOF) ||
		strings.Contains(err.Error(), "connection refused") || strings.Contains(err.Error(), "no such host") {
		return fmt.Errorf("%w: %s: %v", ErrRegistryUnavailable, ref, err)
	}
	if strings.Contains(err.Error(), "error verifying") {
		return fmt.Errorf("%w: %s: %v", ErrDigestMismatch, ref, err)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("image %s: %w", ref, err)
}
