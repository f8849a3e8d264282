package imagecache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/imagecache/chaindb"
	"github.com/podvisor/podvisor/services/imagecache/imagedisk"
	"github.com/podvisor/podvisor/services/imagecache/layerfs"
	"github.com/podvisor/podvisor/services/imagecache/oci"
	"github.com/podvisor/podvisor/shared/bus"
	il "github.com/podvisor/podvisor/shared/imagemeta"
)

var tracer = otel.Tracer("github.com/podvisor/podvisor/services/imagecache")

// image is a resolved image: its manifest, and the registry handle to fetch
// its layers (nil when resolved from the cache because the registry was
// unreachable; then only chains already on a datastore can be used).
type image struct {
	manifest il.Manifest
	remote   *oci.Image
}

// prepared is an image's chain on one datastore, complete and ready.
type prepared struct {
	image     image
	datastore string
	chain     []events.ChainRecord // base first
}

func (p prepared) topDisk() string { return p.chain[len(p.chain)-1].Disk }

func (p prepared) chainPaths() []string {
	out := make([]string, len(p.chain))
	for i, c := range p.chain {
		out[i] = c.Disk
	}
	return out
}

func (p prepared) chainIDs() []string {
	out := make([]string, len(p.chain))
	for i, c := range p.chain {
		out[i] = c.ChainID
	}
	return out
}

// resolve turns a reference into an image, once at a time per reference in
// this process. When the registry is unreachable but the cache knows the
// reference, the cached manifest is used (what a node does with an image
// it already has): pods keep starting while the registry is down.
func (s *Service) resolve(ctx context.Context, ref string) (image, error) {
	if v, ok := s.resolved.Load(ref); ok {
		if r := v.(timed[image]); r.fresh(s.now(), s.cfg.ResolveTTL) {
			return r.val, nil
		}
	}
	v, err := s.resolves.do(ctx, ref, func(ctx context.Context) (any, error) {
		img, err := s.registry.Resolve(ctx, ref)
		if err == nil {
			m := img.Manifest()
			if err := s.db.PutManifest(ctx, ref, m); err != nil {
				return nil, err
			}
			out := image{manifest: m, remote: img}
			s.resolved.Store(ref, timed[image]{val: out, at: s.now()})
			return out, nil
		}
		if !errors.Is(err, oci.ErrRegistryUnavailable) {
			return nil, err
		}
		digest, rerr := s.db.Reader().Digest(ctx, ref)
		if rerr != nil || digest == "" {
			return nil, err
		}
		m, ok, rerr := s.db.Reader().Manifest(ctx, digest)
		if rerr != nil || !ok {
			return nil, err
		}
		s.log.Warn("registry unreachable, using the cached manifest", "image", ref, "digest", digest, "err", err)
		return image{manifest: m}, nil
	})
	if err != nil {
		return image{}, err
	}
	return v.(image), nil
}

// timed is a value with the time it was obtained: the short-lived memos of
// resolutions and ensured chains.
type timed[T any] struct {
	val T
	at  time.Time
}

func (t timed[T]) fresh(now time.Time, ttl time.Duration) bool { return now.Sub(t.at) < ttl }

// placement says where an image may go.
type placement struct {
	// candidates are the datastores the chain may be on, best first.
	candidates []string
	// copyFrom allows copying ready chains from datastores outside
	// candidates instead of pulling (on pod.scheduled).
	copyFrom bool
}

// ensuredTTL is how long an ensured chain is handed to the next pods of the
// image without asking Redis again. Referencing the chain is what commits a
// pod to it, and that checks atomically that the chain is still ready; a
// chain evicted meanwhile fails the reference and is ensured afresh.
const ensuredTTL = 5 * time.Second

// ensuredKey identifies an ensure: the image and where it may go.
type ensuredKey struct {
	digest, candidates string
	copyFrom           bool
}

// ensureRecent is ensure, reusing a result of the last ensuredTTL when
// reuse is allowed: a burst of pods of one image then costs one round of
// lookups (about three Redis round trips per layer), not one per pod.
func (s *Service) ensureRecent(ctx context.Context, img image, pl placement, reuse bool) (prepared, error) {
	key := ensuredKey{digest: img.manifest.Digest, candidates: strings.Join(pl.candidates, "\x00"), copyFrom: pl.copyFrom}
	if reuse {
		if v, ok := s.ensured.Load(key); ok {
			if e := v.(timed[prepared]); e.fresh(s.now(), ensuredTTL) {
				return e.val, nil
			}
		}
	}
	p, err := s.ensure(ctx, img, pl)
	if err != nil {
		s.ensured.Delete(key)
		return prepared{}, err
	}
	s.ensured.Store(key, timed[prepared]{val: p, at: s.now()})
	return p, nil
}

// ensure makes img's chain ready on one of the candidate datastores and
// returns it. It prefers the candidate holding the longest ready (or
// in-progress) prefix, then copies what another datastore has, then pulls
// what nobody has.
func (s *Service) ensure(ctx context.Context, img image, pl placement) (prepared, error) {
	layers := img.manifest.Layers
	if len(layers) == 0 {
		return prepared{}, fmt.Errorf("image %s: %w: the manifest has no layers", img.manifest.Image, oci.ErrImageNotFound)
	}
	if len(pl.candidates) == 0 {
		return prepared{}, ErrNoDatastore
	}
	locs := make([]map[string]string, len(layers))
	for i, l := range layers {
		m, err := s.db.Locations(ctx, l.ChainID)
		if err != nil {
			return prepared{}, err
		}
		locs[i] = m
	}
	prefix := func(ds string, states ...string) int {
		n := 0
		for n < len(layers) && slices.Contains(states, locs[n][ds]) {
			n++
		}
		return n
	}
	inv, err := s.datastores(ctx, false)
	if err != nil {
		return prepared{}, err
	}
	free := map[string]int64{}
	for _, d := range inv {
		free[d.Name] = d.FreeSpace - s.cfg.reserve()
	}
	// Choose the datastore: longest prefix present, then preference order;
	// skip those without room for the missing layers.
	best, bestPrefix := "", -1
	for _, ds := range pl.candidates {
		p := prefix(ds, events.ChainStateReady, events.ChainStatePulling)
		var missing int64
		for _, l := range layers[p:] {
			missing += l.Size
		}
		if missing > free[ds] {
			continue
		}
		if p > bestPrefix {
			best, bestPrefix = ds, p
		}
	}
	if best == "" {
		var need int64
		for _, l := range layers {
			need += l.Size
		}
		return prepared{}, fmt.Errorf("image %s (%d bytes): %w: no room on %v beyond the %d-byte reserve",
			img.manifest.Image, need, ErrDatastoreFull, pl.candidates, s.cfg.reserve())
	}

	// Every link is its own filesystem whose descriptor names its parent by
	// chainID, so the links are made side by side: one layer's download
	// overlaps another's filesystem build and upload.
	out := prepared{image: img, datastore: best, chain: make([]events.ChainRecord, len(layers))}
	// No shared cancellation: a link that fails leaves the others to
	// finish, since other images may share them.
	var g errgroup.Group
	g.SetLimit(layerParallelism)
	for i := range layers {
		var parent *events.ChainRecord
		if i > 0 {
			parent = &events.ChainRecord{ChainID: layers[i-1].ChainID, Disk: imagedisk.DiskPath(best, layers[i-1].ChainID)}
		}
		g.Go(func() error {
			rec, err := s.ensureChain(ctx, img, i, best, parent, locs[i], pl.copyFrom)
			out.chain[i] = rec
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return prepared{}, err
	}
	return out, nil
}

// layerParallelism bounds the links of one image made at once.
const layerParallelism = 4

// ensureChain makes layer i's chain ready on ds, sharing the work with every
// other caller in this process (flights) and in other replicas (the Redis
// lease). A caller whose ctx ends leaves; the work goes on while another
// caller waits for it.
func (s *Service) ensureChain(ctx context.Context, img image, i int, ds string, parent *events.ChainRecord, locs map[string]string, copyFrom bool) (events.ChainRecord, error) {
	key := events.ChainRecordKey(img.manifest.Layers[i].ChainID, ds)
	v, err := s.chains.do(ctx, key, func(ctx context.Context) (any, error) {
		rec, _, err := s.ensureChainOnce(ctx, img, i, ds, parent, locs, copyFrom)
		return rec, err
	})
	if err != nil {
		return events.ChainRecord{}, err
	}
	return v.(events.ChainRecord), nil
}

func (s *Service) ensureChainOnce(ctx context.Context, img image, i int, ds string, parent *events.ChainRecord, locs map[string]string, copyFrom bool) (events.ChainRecord, bool, error) {
	l := img.manifest.Layers[i]
	rec := events.ChainRecord{
		ChainID:   l.ChainID,
		Datastore: ds,
		Disk:      imagedisk.DiskPath(ds, l.ChainID),
		Layer:     l.Digest,
		DiffID:    l.DiffID,
		Depth:     i + 1,
		Size:      l.Size, // until the disk is written: then the disk's size
	}
	if parent != nil {
		rec.Parent, rec.ParentDisk = parent.ChainID, parent.Disk
	}
	token := newToken()
	for {
		outcome, err := s.db.Begin(ctx, rec, token, s.cfg.LeaseTTL)
		if err != nil {
			return rec, false, err
		}
		switch outcome {
		case chaindb.Ready:
			got, ok, err := s.db.Get(ctx, l.ChainID, ds)
			if err != nil {
				return rec, false, err
			}
			if ok && got.State == events.ChainStateReady {
				return got, false, nil
			}
			// Evicted or flushed between the two reads: go round again.
		case chaindb.Busy, chaindb.Evicting:
			select {
			case <-ctx.Done():
				return rec, false, ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		case chaindb.Acquired:
			src := ""
			if copyFrom {
				for other, state := range locs {
					if other != ds && state == events.ChainStateReady {
						src = other
						break
					}
				}
			}
			if src != "" {
				return s.copyChain(ctx, img, rec, src, token)
			}
			rec, err := s.pull(ctx, img, i, rec, token)
			return s.finish(ctx, rec, token, err, true)
		}
	}
}

// finish completes or fails a chain this caller began (token).
func (s *Service) finish(ctx context.Context, rec events.ChainRecord, token string, work error, pulled bool) (events.ChainRecord, bool, error) {
	if errors.Is(work, ErrLeaseLost) {
		// The folder is the successor's now: neither removed nor marked.
		return rec, false, work
	}
	if work != nil {
		s.failed(ctx, rec, token, work)
		return rec, false, work
	}
	rec.State = events.ChainStateReady
	ok, err := s.db.Complete(ctx, rec, token)
	if err != nil {
		return rec, false, err
	}
	if !ok {
		return rec, false, fmt.Errorf("chain %s: %w", events.ChainRecordKey(rec.ChainID, rec.Datastore), ErrLeaseLost)
	}
	got, _, err := s.db.Get(ctx, rec.ChainID, rec.Datastore)
	if err != nil {
		return rec, false, err
	}
	return got, pulled, nil
}

// failed leaves no partial data behind a failed pull, and only behind the
// caller's own: the failure is claimed first (the record turns failed,
// the lease held while the folder goes, so no successor begins on it),
// and the folder is removed only if the claim succeeds. A puller paused
// past its lease whose successor has since finished, or taken over, the
// chain is refused the claim and touches nothing: the folder may be a
// ready disk pods use. When Redis cannot say, the folder stays as well;
// the next pull clears it.
func (s *Service) failed(ctx context.Context, rec events.ChainRecord, token string, work error) {
	key := events.ChainRecordKey(rec.ChainID, rec.Datastore)
	reason := bus.ReasonOf(classify(work), ReasonImagePrepareFailed)
	cleanup := context.WithoutCancel(ctx)
	claimed, err := s.db.Fail(cleanup, rec.ChainID, rec.Datastore, token, reason+": "+work.Error(), s.cfg.LeaseTTL)
	switch {
	case err != nil:
		s.log.Warn("mark chain failed; its folder is left to the next pull", "chain", key, "err", err)
		return
	case !claimed:
		s.log.Info("failed pull no longer this puller's; its folder is left alone", "chain", key, "err", work)
		return
	}
	if err := s.store.Delete(cleanup, rec.Datastore, rec.ChainID); err != nil {
		s.log.Warn("remove failed chain folder", "chain", key, "err", err)
	}
	if err := s.db.Release(cleanup, rec.ChainID, rec.Datastore, token); err != nil {
		s.log.Warn("release the lease of a failed chain; it expires", "chain", key, "err", err)
	}
}

// pull fetches layer i, writes it as a filesystem into rec's disk and
// returns the record with the disk's size. The layer is staged while it
// streams; its digests are checked at the end of the stream, and only a
// verified layer becomes a filesystem image and reaches the datastore
// (flat extent first, descriptor last). The lease is renewed meanwhile.
func (s *Service) pull(ctx context.Context, img image, i int, rec events.ChainRecord, token string) (_ events.ChainRecord, err error) {
	ctx, span := tracer.Start(ctx, "imagecache.pull", trace.WithAttributes(
		attribute.String("podvisor.service", Name),
		attribute.String("image", img.manifest.Image),
		attribute.String("image.chain", rec.ChainID),
		attribute.String("datastore", rec.Datastore),
		attribute.Int64("bytes", rec.Size),
	))
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	if s.diskErr != nil {
		return rec, s.diskErr
	}
	if img.remote == nil {
		return rec, fmt.Errorf("image %s layer %d: %w: not on any datastore and the registry cannot be reached", img.manifest.Image, i, oci.ErrRegistryUnavailable)
	}
	ctx, stop := s.keepLease(ctx, rec, token)
	defer stop()
	defer func() { err = leaseLost(ctx, err) }()

	if err := s.store.Begin(ctx, rec); err != nil {
		return rec, err
	}
	fs, fetched, err := s.writeLayer(ctx, img, i, rec)
	s.stats.bytesPulled.add(fetched.Bytes)
	if err != nil {
		return rec, err
	}
	defer func() { _ = fs.Remove() }()
	s.stats.layersPulled.add(1)
	f, err := os.Open(fs.Path)
	if err != nil {
		return rec, err
	}
	defer f.Close()
	if err := s.checkRoom(ctx, img, rec, fs.Size); err != nil {
		return rec, err
	}
	rec.Size = fs.Size
	rec.CreatedAt = s.now().UTC()
	if err := s.fenceLease(ctx, rec, token); err != nil {
		return rec, err
	}
	if err := s.store.WriteDisk(ctx, rec, imagedisk.FSErofs, f, fs.Size); err != nil {
		return rec, err
	}
	s.stats.diskBytes.add(fs.Size)
	return rec, nil
}

// writeLayer streams layer i into an erofs image. Uncompressed images are
// written straight from the tar stream (layerfs.Read: the file data goes
// to the image as it arrives); compressed ones are staged and built with
// mkfs.erofs. Either way the image is completed only once Fetch has
// checked both digests.
func (s *Service) writeLayer(ctx context.Context, img image, i int, rec events.ChainRecord) (*layerfs.Image, oci.Fetched, error) {
	opts := layerfs.Options{TempDir: s.cfg.StagingDir, MaxEntries: s.cfg.MaxLayerEntries, MaxBytes: s.cfg.Limits.MaxUncompressedBytes}
	var build func() (*layerfs.Image, error)
	remove := func() error { return nil }
	defer func() { _ = remove() }()
	fetched, err := s.registry.Fetch(ctx, img.remote, i, func(tar io.Reader) error {
		if s.cfg.DiskCompression == layerfs.CompressionNone {
			l, err := layerfs.Read(ctx, tar, opts)
			if err == nil {
				remove, build = l.Remove, func() (*layerfs.Image, error) { return l.Erofs(rec.DiffID) }
			}
			return err
		}
		st, err := layerfs.Stage(ctx, tar, opts)
		if err == nil {
			remove, build = st.Remove, func() (*layerfs.Image, error) { return st.Erofs(ctx, rec.DiffID, s.cfg.DiskCompression) }
		}
		return err
	})
	if err != nil {
		return nil, fetched, err
	}
	fs, err := build()
	if err != nil {
		return nil, fetched, fmt.Errorf("image %s layer %s: %w", img.manifest.Image, rec.Layer, err)
	}
	return fs, fetched, nil
}

// checkRoom refuses to write a layer's disk of size bytes (built, or
// copied from another datastore) to a datastore whose free space beyond
// the reserve is smaller. Placement could only count the layers'
// compressed sizes (all a manifest tells); the disk holds the layer
// uncompressed, so the real check comes once its size is known.
func (s *Service) checkRoom(ctx context.Context, img image, rec events.ChainRecord, size int64) error {
	inv, err := s.datastores(ctx, true)
	if err != nil {
		return err
	}
	for _, d := range inv {
		if d.Name == rec.Datastore && d.FreeSpace-s.cfg.reserve() < size {
			return fmt.Errorf("image %s layer %s: its %d-byte disk: %w: %s has %d bytes free beyond the %d-byte reserve",
				img.manifest.Image, rec.Layer, size, ErrDatastoreFull, d.Name, max(d.FreeSpace-s.cfg.reserve(), 0), s.cfg.reserve())
		}
	}
	return nil
}

// copyChain copies a ready chain from datastore src to rec's datastore
// (a disk and file copy inside vSphere, no registry traffic). The copy is
// the source's disk, so its size is the source record's, not the
// layer's compressed size placement counted: the room is checked with it
// before copying, and the record keeps it.
func (s *Service) copyChain(parent context.Context, img image, rec events.ChainRecord, src, token string) (events.ChainRecord, bool, error) {
	ctx, stop := s.keepLease(parent, rec, token)
	defer stop()
	from, ok, err := s.db.Get(ctx, rec.ChainID, src)
	if err == nil && (!ok || from.State != events.ChainStateReady) {
		err = fmt.Errorf("chain %s vanished during copy", events.ChainRecordKey(rec.ChainID, src))
	}
	if err == nil {
		err = s.checkRoom(ctx, img, rec, from.Size)
	}
	if err == nil {
		err = s.fenceLease(ctx, rec, token)
	}
	if err == nil {
		var copied events.ChainRecord
		if copied, err = s.store.Copy(ctx, from, rec.Datastore); err == nil {
			rec.Size = copied.Size
		}
	}
	if err == nil {
		s.stats.chainsCopied.add(1)
		s.stats.bytesCopied.add(rec.Size)
	}
	// The renewals stop before finish, as a pull's do: once Complete has
	// released the lease, a renewal would find none and cancel the
	// completion's last read with ErrLeaseLost.
	err = leaseLost(ctx, err)
	stop()
	return s.finish(parent, rec, token, err, false)
}

// keepLease renews the pull lease every third of its TTL until stop. The
// returned context is cancelled with ErrLeaseLost when the lease is lost,
// and also when renewals have failed (Redis unreachable) for long enough
// that the lease may expire before the next one: a successor may take the
// lease over then, and two pullers must never write one folder. The
// puller's own clock measures that, never the lease's expiry in Redis.
func (s *Service) keepLease(ctx context.Context, rec events.ChainRecord, token string) (context.Context, func()) {
	ttl := s.cfg.LeaseTTL
	renewed := time.Now()
	return cancelWhen(ctx, ttl/3, func(ctx context.Context) error {
		rctx, rcancel := context.WithTimeout(ctx, ttl/3)
		ok, err := s.db.Renew(rctx, rec.ChainID, rec.Datastore, token, ttl)
		rcancel()
		switch {
		case err == nil && ok:
			renewed = time.Now()
		case err == nil:
			return ErrLeaseLost
		case time.Since(renewed)+ttl/3 >= ttl:
			s.log.Warn("pull lease renewals failing; stopping the pull before the lease can expire",
				"chain", events.ChainRecordKey(rec.ChainID, rec.Datastore), "err", err)
			return ErrLeaseLost
		}
		return nil
	})
}

// cancelWhen returns ctx, cancelled with the cause check returns (nil: none
// yet), checked every interval, one check at a time, until stop: the pull
// lease's keeper, and the watch over a pod whose images are prepared.
func cancelWhen(ctx context.Context, every time.Duration, check func(context.Context) error) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if cause := check(ctx); cause != nil {
				cancel(cause)
				return
			}
		}
	}()
	return ctx, sync.OnceFunc(func() { close(done); cancel(nil) })
}

// fenceLease renews the pull lease right before a write to the chain's
// folder: a puller that lost it (paused past its TTL, its successor now
// pulling) stops there instead of writing over the successor's files.
func (s *Service) fenceLease(ctx context.Context, rec events.ChainRecord, token string) error {
	ok, err := s.db.Renew(ctx, rec.ChainID, rec.Datastore, token, s.cfg.LeaseTTL)
	if err != nil {
		return fmt.Errorf("chain %s: renew the pull lease before writing: %w", events.ChainRecordKey(rec.ChainID, rec.Datastore), err)
	}
	if !ok {
		return fmt.Errorf("chain %s: %w", events.ChainRecordKey(rec.ChainID, rec.Datastore), ErrLeaseLost)
	}
	return nil
}

// leaseLost turns the failure of work done under keepLease's context into
// ErrLeaseLost when that is why the context ended.
func leaseLost(ctx context.Context, err error) error {
	if err != nil && !errors.Is(err, ErrLeaseLost) && errors.Is(context.Cause(ctx), ErrLeaseLost) {
		return fmt.Errorf("%w (%v)", ErrLeaseLost, err)
	}
	return err
}

func newToken() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// candidates orders the datastores an image may go on: the configured list
// in its order, or every datastore mounted on the most hosts first, then
// with the most free space. restrict, when not nil, keeps only datastores
// mounted on that host, with preferred ones first.
func (s *Service) candidates(ctx context.Context, host string, preferred []string) ([]string, error) {
	inv, err := s.datastores(ctx, false)
	if err != nil {
		return nil, err
	}
	if host != "" && !slices.ContainsFunc(inv, func(d imagedisk.Datastore) bool { return slices.Contains(d.Hosts, host) }) {
		// A host we have not seen yet (added since the last refresh).
		if inv, err = s.datastores(ctx, true); err != nil {
			return nil, err
		}
	}
	var list []imagedisk.Datastore
	for _, d := range inv {
		if len(s.cfg.Datastores) > 0 && !slices.Contains(s.cfg.Datastores, d.Name) {
			continue
		}
		if host != "" && !slices.Contains(d.Hosts, host) {
			continue
		}
		list = append(list, d)
	}
	rank := func(name string, list []string) int {
		if i := slices.Index(list, name); i >= 0 {
			return i
		}
		return len(list)
	}
	sort.SliceStable(list, func(i, j int) bool {
		a, b := list[i], list[j]
		if ra, rb := rank(a.Name, preferred), rank(b.Name, preferred); ra != rb {
			return ra < rb
		}
		if ra, rb := rank(a.Name, s.cfg.Datastores), rank(b.Name, s.cfg.Datastores); ra != rb {
			return ra < rb
		}
		if len(a.Hosts) != len(b.Hosts) {
			return len(a.Hosts) > len(b.Hosts)
		}
		if a.FreeSpace != b.FreeSpace {
			return a.FreeSpace > b.FreeSpace
		}
		return a.Name < b.Name
	})
	out := make([]string, len(list))
	for i, d := range list {
		out[i] = d.Name
	}
	return out, nil
}

// visibleToAll reports whether every host of the datacenter mounts ds.
func (s *Service) visibleToAll(ctx context.Context, ds string) (bool, error) {
	inv, err := s.datastores(ctx, false)
	if err != nil {
		return false, err
	}
	hosts := map[string]bool{}
	var mounts []string
	for _, d := range inv {
		for _, h := range d.Hosts {
			hosts[h] = true
		}
		if d.Name == ds {
			mounts = d.Hosts
		}
	}
	return len(mounts) > 0 && len(mounts) == len(hosts), nil
}
