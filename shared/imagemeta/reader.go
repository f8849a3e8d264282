package imagemeta

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/redis/go-redis/v9"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/redisclient"
)

// Reader reads the image cache's metadata. It never writes.
type Reader struct {
	c redis.UniversalClient
}

// NewReader reads through c (a client, a cluster client or a ring).
func NewReader(c redis.UniversalClient) *Reader { return &Reader{c: c} }

// Digest returns the manifest digest imageRef last resolved to, or "" when
// the image cache has not seen it.
func (r *Reader) Digest(ctx context.Context, imageRef string) (string, error) {
	d, err := r.c.Get(ctx, RefKey(imageRef)).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read digest of %s: %w", imageRef, err)
	}
	return d, nil
}

// Manifest returns the stored manifest of a digest.
func (r *Reader) Manifest(ctx context.Context, digest string) (Manifest, bool, error) {
	b, err := r.c.Get(ctx, ManifestKey(digest)).Bytes()
	if errors.Is(err, redis.Nil) {
		return Manifest{}, false, nil
	}
	if err != nil {
		return Manifest{}, false, fmt.Errorf("read manifest %s: %w", digest, err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return Manifest{}, false, fmt.Errorf("manifest %s: %w", digest, err)
	}
	return m, true, nil
}

// locations returns, per chainID, datastore → state.
func (r *Reader) locations(ctx context.Context, chainIDs []string) (map[string]map[string]string, error) {
	pipe := r.c.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(chainIDs))
	for i, id := range chainIDs {
		cmds[i] = pipe.HGetAll(ctx, ChainLocsKey(id))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read chain locations: %w", err)
	}
	out := make(map[string]map[string]string, len(chainIDs))
	for i, id := range chainIDs {
		out[id] = cmds[i].Val()
	}
	return out, nil
}

// Locality returns, for every datastore holding part of the images, the
// fraction (0..1] of the images' distinct layer bytes it holds in a ready or
// pulling chain. Images the cache has never seen are left out of the total;
// when none is known the map is empty.
func (r *Reader) Locality(ctx context.Context, images []string) (map[string]float64, error) {
	sizes := map[string]int64{} // chainID → layer size, distinct over all images
	var order []string
	seenDigest := map[string]bool{}
	for _, img := range images {
		d, err := r.Digest(ctx, img)
		if err != nil {
			return nil, err
		}
		if d == "" || seenDigest[d] {
			continue
		}
		seenDigest[d] = true
		m, ok, err := r.Manifest(ctx, d)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		for _, l := range m.Layers {
			if _, dup := sizes[l.ChainID]; !dup {
				order = append(order, l.ChainID)
			}
			sizes[l.ChainID] = l.Size
		}
	}
	out := map[string]float64{}
	if len(order) == 0 {
		return out, nil
	}
	locs, err := r.locations(ctx, order)
	if err != nil {
		return nil, err
	}
	var total int64
	held := map[string]int64{}
	for _, id := range order {
		// An empty layer still counts a little, so an image made of empty
		// layers is not "nowhere".
		size := max(sizes[id], 1)
		total += size
		for ds, state := range locs[id] {
			if state == events.ChainStateReady || state == events.ChainStatePulling {
				held[ds] += size
			}
		}
	}
	for ds, n := range held {
		out[ds] = float64(n) / float64(total)
	}
	return out, nil
}

// Chains returns every chain record, sorted by datastore, then depth, then chainID.
func (r *Reader) Chains(ctx context.Context) ([]events.ChainRecord, error) {
	members, err := r.c.SMembers(ctx, IndexChains).Result()
	if err != nil {
		return nil, fmt.Errorf("read chain index: %w", err)
	}
	pipe := r.c.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, 0, len(members))
	for _, m := range members {
		id, ds, ok := ParseIndexMember(m)
		if !ok {
			continue
		}
		cmds = append(cmds, pipe.HGetAll(ctx, ChainKey(id, ds)))
	}
	if len(cmds) == 0 {
		return nil, nil
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read chain records: %w", err)
	}
	var out []events.ChainRecord
	for _, c := range cmds {
		rec, ok, err := DecodeChain(c.Val())
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, rec)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Datastore != b.Datastore {
			return a.Datastore < b.Datastore
		}
		if a.Depth != b.Depth {
			return a.Depth < b.Depth
		}
		return a.ChainID < b.ChainID
	})
	return out, nil
}

// stateRank orders states from least to most advanced for ImageRecord.State.
var stateRank = map[string]int{
	events.ImageStateMissing:  0,
	events.ChainStateFailed:   1,
	events.ChainStatePulling:  2,
	events.ChainStateEvicting: 3,
	events.ChainStateReady:    4,
}

// Images lists every known image on every datastore holding any of its
// layers, sorted by image then datastore.
func (r *Reader) Images(ctx context.Context) ([]events.ImageRecord, error) {
	digests, err := r.c.SMembers(ctx, IndexImages).Result()
	if err != nil {
		return nil, fmt.Errorf("read image index: %w", err)
	}
	chains, err := r.Chains(ctx)
	if err != nil {
		return nil, err
	}
	byKey := make(map[string]events.ChainRecord, len(chains))
	datastoresOf := map[string][]string{}
	for _, c := range chains {
		byKey[IndexMember(c.ChainID, c.Datastore)] = c
		datastoresOf[c.ChainID] = append(datastoresOf[c.ChainID], c.Datastore)
	}
	var out []events.ImageRecord
	for _, d := range digests {
		m, ok, err := r.Manifest(ctx, d)
		if err != nil {
			return nil, err
		}
		if !ok || len(m.Layers) == 0 {
			continue
		}
		dss := map[string]bool{}
		for _, l := range m.Layers {
			for _, ds := range datastoresOf[l.ChainID] {
				dss[ds] = true
			}
		}
		for ds := range dss {
			rec := events.ImageRecord{Image: m.Image, Digest: m.Digest, Layers: len(m.Layers), Datastore: ds,
				Size: m.Size(), State: events.ChainStateReady}
			for _, l := range m.Layers {
				rec.Chain = append(rec.Chain, l.ChainID)
				c, ok := byKey[IndexMember(l.ChainID, ds)]
				state := events.ImageStateMissing
				if ok {
					state = c.State
				}
				if stateRank[state] < stateRank[rec.State] {
					rec.State = state
				}
			}
			if top, ok := byKey[IndexMember(m.Layers[len(m.Layers)-1].ChainID, ds)]; ok {
				rec.Refs = top.Refs
				if rec.State == events.ChainStateReady {
					rec.TopDisk = top.Disk
				}
			}
			out = append(out, rec)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Image != out[j].Image {
			return out[i].Image < out[j].Image
		}
		return out[i].Datastore < out[j].Datastore
	})
	return out, nil
}

// ListImages connects to the Redis at url (redis:// or rediss://, as
// PODVISOR_REDIS_URL; caFile as PODVISOR_REDIS_CA), lists the images and
// disconnects: what `podvisor get images` calls.
func ListImages(ctx context.Context, url, caFile string) ([]events.ImageRecord, error) {
	opts, err := redisclient.Options(url, caFile)
	if err != nil {
		return nil, err
	}
	c := redis.NewClient(opts)
	defer c.Close()
	return NewReader(c).Images(ctx)
}
