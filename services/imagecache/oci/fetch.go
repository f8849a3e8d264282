package oci

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/podvisor/podvisor/shared/bytesize"
)

// Fetched is what Fetch measured.
type Fetched struct {
	// Bytes read from the registry (compressed).
	Bytes int64
	// Uncompressed size of the layer's tar.
	Uncompressed int64
}

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// Fetch streams layer i, decompressed (gzip, zstd, or none), into sink,
// which reads the layer's tar. Sizes are capped while streaming (Limits:
// compressed size, uncompressed size, compression ratio: a bomb stops at
// the cap after a few megabytes) and both the compressed digest and the
// diffID are checked once the stream ends. Any mismatch is
// ErrDigestMismatch naming the digest, a cap is ErrLimit naming the cap,
// whatever sink returned: the caller must then discard what sink made.
func (c *Client) Fetch(ctx context.Context, img *Image, i int, sink func(tar io.Reader) error) (Fetched, error) {
	if i < 0 || i >= len(img.Layers) {
		return Fetched{}, fmt.Errorf("image %s: layer %d out of range", img.Ref, i)
	}
	want := img.Layers[i]
	if lim := c.cfg.Limits.MaxLayerBytes; want.Size > lim {
		return Fetched{}, fmt.Errorf("image %s layer %s: %w: %d compressed bytes, over the compressed layer size cap of %s",
			img.Ref, want.Digest, ErrLimit, want.Size, bytesize.IEC(lim))
	}
	layer, err := remote.Layer(img.repo.Digest(want.Digest), append([]remote.Option{remote.WithContext(ctx)}, c.opts...)...)
	if err != nil {
		return Fetched{}, classify(img.Ref, err)
	}
	rc, err := layer.Compressed()
	if err != nil {
		return Fetched{}, classify(img.Ref, err)
	}
	defer rc.Close()

	comp := &hashingReader{r: io.LimitReader(rc, want.Size+1), h: sha256.New()}
	br := bufio.NewReaderSize(comp, 256<<10)
	magic, _ := br.Peek(4)
	var dec io.Reader
	var closeDec func()
	var decErr error
	switch {
	case bytes.HasPrefix(magic, gzipMagic):
		var zr *gzip.Reader
		if zr, decErr = gzip.NewReader(br); decErr == nil {
			dec, closeDec = zr, func() { _ = zr.Close() }
		}
	case bytes.HasPrefix(magic, zstdMagic):
		var zr *zstd.Decoder
		// The window bounds the decoder's memory whatever the frame claims.
		if zr, decErr = zstd.NewReader(br, zstd.WithDecoderMaxWindow(64<<20), zstd.WithDecoderConcurrency(1)); decErr == nil {
			dec, closeDec = zr, zr.Close
		}
	default:
		dec = br // an uncompressed layer (…layer.v1.tar)
	}
	if closeDec != nil {
		defer closeDec()
	}
	capped := &cappedReader{r: dec, h: sha256.New(), comp: comp, lim: c.cfg.Limits, layer: want.Digest}
	var sinkErr error
	if decErr == nil {
		sinkErr = sink(capped)
		if sinkErr == nil {
			// The tar's end marker may precede padding: hash it all.
			_, sinkErr = io.Copy(io.Discard, capped)
		}
	}
	// The rest of the compressed bytes (when the sink stopped early), for
	// the digest.
	_, _ = io.Copy(io.Discard, br)

	got := "sha256:" + hex.EncodeToString(comp.h.Sum(nil))
	res := Fetched{Bytes: comp.n, Uncompressed: capped.n}
	prefix := fmt.Sprintf("image %s layer %s", img.Ref, want.Digest)
	switch {
	case capped.exceeded != nil:
		return res, fmt.Errorf("%s: %w", prefix, capped.exceeded)
	case comp.n > want.Size:
		return res, fmt.Errorf("%s: %w: the registry sent more than the %d bytes the manifest says", prefix, ErrDigestMismatch, want.Size)
	case comp.err != nil && !isVerifyError(comp.err):
		return res, fmt.Errorf("%s after %d of %d bytes: %w", prefix, comp.n, want.Size, classify(img.Ref, comp.err))
	case comp.n < want.Size:
		return res, fmt.Errorf("%s: %w: the registry sent %d of %d bytes", prefix, ErrDigestMismatch, comp.n, want.Size)
	case got != want.Digest:
		return res, fmt.Errorf("%s: %w: the registry sent bytes of digest %s", prefix, ErrDigestMismatch, got)
	case decErr != nil:
		return res, fmt.Errorf("%s: %w: not a valid compressed stream: %v", prefix, ErrDigestMismatch, decErr)
	}
	if sinkErr != nil && capped.readErr != nil {
		return res, fmt.Errorf("%s: %w: the layer does not decompress: %v", prefix, ErrDigestMismatch, capped.readErr)
	}
	if diff := "sha256:" + hex.EncodeToString(capped.h.Sum(nil)); sinkErr == nil && diff != want.DiffID {
		return res, fmt.Errorf("%s: %w: uncompressed digest %s, the image config says diffID %s", prefix, ErrDigestMismatch, diff, want.DiffID)
	}
	if sinkErr != nil {
		return res, fmt.Errorf("%s: %w", prefix, sinkErr)
	}
	return res, nil
}

// isVerifyError: go-containerregistry's own digest check at the end of the
// blob (the digest comparison above reports it better).
func isVerifyError(err error) bool {
	return err != nil && bytes.Contains([]byte(err.Error()), []byte("error verifying"))
}

// hashingReader hashes and counts the compressed bytes; a read error other
// than EOF is kept for the classification.
type hashingReader struct {
	r   io.Reader
	h   hash.Hash
	n   int64
	err error
}

func (c *hashingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.n += int64(n)
		c.h.Write(p[:n])
	}
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}

// cappedReader hashes the uncompressed bytes (the diffID) and stops at the
// uncompressed size cap, or as soon as the output outgrows MaxRatio times
// the compressed bytes read so far (plus RatioFloor): a gzip bomb is cut
// after a few megabytes, not after it filled a disk.
type cappedReader struct {
	r        io.Reader
	h        hash.Hash
	comp     *hashingReader
	lim      Limits
	layer    string
	n        int64
	exceeded error // the cap that stopped the stream
	readErr  error // a decompression error
}

func (c *cappedReader) Read(p []byte) (int, error) {
	if c.exceeded != nil {
		return 0, c.exceeded
	}
	n, err := c.r.Read(p)
	if n > 0 {
		c.n += int64(n)
		c.h.Write(p[:n])
		switch {
		case c.n > c.lim.MaxUncompressedBytes:
			c.exceeded = fmt.Errorf("%w: the layer inflates past the uncompressed layer size cap of %s", ErrLimit, bytesize.IEC(c.lim.MaxUncompressedBytes))
		case c.n > int64(c.lim.MaxRatio)*c.comp.n+c.lim.RatioFloor:
			c.exceeded = fmt.Errorf("%w: the layer inflates past the compression ratio cap of %d× (%s from %s read)",
				ErrLimit, c.lim.MaxRatio, bytesize.IEC(c.n), bytesize.IEC(c.comp.n))
		}
		if c.exceeded != nil {
			return 0, c.exceeded
		}
	}
	if err != nil && err != io.EOF && c.readErr == nil {
		c.readErr = err
	}
	return n, err
}
