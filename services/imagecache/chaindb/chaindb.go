package chaindb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/podvisor/podvisor/events"
	il "github.com/podvisor/podvisor/shared/imagemeta"
)

// ErrNotReady is returned by AddRef for a chain that is not ready (missing,
// pulling, failed or being evicted).
var ErrNotReady = errors.New("chain not ready")

// Outcome of Begin.
type Outcome string

const (
	// Acquired: the caller holds the lease and must pull, then Complete or Fail.
	Acquired Outcome = "acquired"
	// Ready: the chain is ready; nothing to pull.
	Ready Outcome = "ready"
	// Busy: another puller holds the lease; wait and Begin again.
	Busy Outcome = "busy"
	// Evicting: the garbage collector is removing the chain; wait and Begin again.
	Evicting Outcome = "evicting"
)

// beginScript takes the lease of a chain that is not ready and records
// the taker's token as the record's puller: the lease says who may write
// the folder now, the puller whose pull the record describes, and a
// puller that lost its lease is told apart from its successor by it.
var beginScript = redis.NewScript(`
local state = redis.call('HGET', KEYS[1], 'state')
local now = tonumber(ARGV[4])
if state == 'ready' then return 'ready' end
if state == 'evicting' then
  local since = tonumber(redis.call('HGET', KEYS[1], 'lastUsed') or '0')
  if now - since < tonumber(ARGV[2]) then return 'evicting' end
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 'busy' end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HSET', KEYS[1], 'state', 'pulling', 'reason', '', 'lastUsed', ARGV[4], 'puller', ARGV[1])
redis.call('HSETNX', KEYS[1], 'refs', 0)
redis.call('HSET', KEYS[3], ARGV[3], 'pulling')
return 'acquired'
`)

// renewScript extends the holder's lease. A lease that is gone (expired
// with nobody taking over, or lost by Redis) is taken again only while the
// record still says the caller's pull is under way: a puller paused past
// its TTL whose successor has finished meanwhile (the chain ready or
// failed, or pulling under another token) must not get the lease back and
// then remove or mark the successor's folder. A missing record is Redis
// having lost its data: the holder is still working and nobody else
// started (a successor's Begin would have written the record).
var renewScript = redis.NewScript(`
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if holder then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then
  if redis.call('HGET', KEYS[2], 'state') ~= 'pulling' then return 0 end
  if redis.call('HGET', KEYS[2], 'puller') ~= ARGV[1] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
`)

// completeScript: 1 = now ready, 0 = the pull is not the caller's any more
// (another puller holds the lease, or the record is no longer pulling
// under the caller's token). A missing record is Redis having lost its
// data: the lease decides alone.
var completeScript = redis.NewScript(`
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'state') ~= 'pulling' then return 0 end
  if redis.call('HGET', KEYS[1], 'puller') ~= ARGV[1] then return 0 end
end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HSET', KEYS[1], 'state', 'ready', 'reason', '', 'lastUsed', ARGV[3])
redis.call('HDEL', KEYS[1], 'puller')
redis.call('HSETNX', KEYS[1], 'refs', redis.call('SCARD', KEYS[4]))
redis.call('HSET', KEYS[3], ARGV[2], 'ready')
redis.call('DEL', KEYS[2])
return 1
`)

// failScript claims a failed pull: 1 = the record is now failed and the
// caller holds the lease for ARGV[5] ms, long enough to clear the folder
// before a successor may begin; 0 = the pull is not the caller's (another
// puller holds the lease, the record is no longer pulling under the
// caller's token), or Redis lost the record: the folder may then be a
// successor's ready disk the rebuild has not restored yet, and is left to
// the next pull, which clears it.
var failScript = redis.NewScript(`
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'pulling' then return 0 end
if redis.call('HGET', KEYS[1], 'puller') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'failed', 'reason', ARGV[3], 'lastUsed', ARGV[4])
redis.call('HDEL', KEYS[1], 'puller')
redis.call('HSET', KEYS[3], ARGV[2], 'failed')
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[5])
return 1
`)

// releaseScript drops the lease if the caller holds it.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

var addRefScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'state') ~= 'ready' then return -1 end
redis.call('SADD', KEYS[2], ARGV[1])
local n = redis.call('SCARD', KEYS[2])
redis.call('HSET', KEYS[1], 'refs', n, 'lastUsed', ARGV[2])
return n
`)

var dropRefScript = redis.NewScript(`
redis.call('SREM', KEYS[2], ARGV[1])
local n = redis.call('SCARD', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'refs', n, 'lastUsed', ARGV[2])
end
return n
`)

var markEvictingScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'state') ~= 'ready' then return 0 end
if redis.call('SCARD', KEYS[2]) > 0 then return 0 end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local used = tonumber(redis.call('HGET', KEYS[1], 'lastUsed') or '0')
if used > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'state', 'evicting', 'lastUsed', ARGV[2])
redis.call('HSET', KEYS[4], ARGV[3], 'evicting')
return 1
`)

var forgetScript = redis.NewScript(`
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HDEL', KEYS[4], ARGV[1])
return 1
`)

var restoreScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HSET', KEYS[1], 'state', 'ready', 'reason', '', 'refs', redis.call('SCARD', KEYS[3]), 'lastUsed', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], 'ready')
return 1
`)

// DB writes the image cache's metadata.
type DB struct {
	c   redis.UniversalClient
	now func() time.Time
}

// New writes through c. now, when nil, is time.Now.
func New(c redis.UniversalClient, now func() time.Time) *DB {
	if now == nil {
		now = time.Now
	}
	return &DB{c: c, now: now}
}

// Client is the underlying Redis client.
func (d *DB) Client() redis.UniversalClient { return d.c }

// Reader returns a reader over the same client.
func (d *DB) Reader() *il.Reader { return il.NewReader(d.c) }

func (d *DB) nowMillis() int64 { return d.now().UnixMilli() }

func chainKeys(chainID, ds string) []string {
	return []string{il.ChainKey(chainID, ds), il.ChainLeaseKey(chainID, ds), il.ChainLocsKey(chainID), il.ChainRefsKey(chainID, ds)}
}

// Begin tries to take the pull lease of rec's chain on rec's datastore.
func (d *DB) Begin(ctx context.Context, rec events.ChainRecord, token string, ttl time.Duration) (Outcome, error) {
	rec.CreatedAt = d.now()
	args := append([]any{token, ttl.Milliseconds(), rec.Datastore, d.nowMillis()}, il.EncodeChain(rec)...)
	k := chainKeys(rec.ChainID, rec.Datastore)
	res, err := beginScript.Run(ctx, d.c, k[:3], args...).Text()
	if err != nil {
		return "", fmt.Errorf("begin pull of %s: %w", events.ChainRecordKey(rec.ChainID, rec.Datastore), err)
	}
	if Outcome(res) == Acquired {
		if err := d.c.SAdd(ctx, il.IndexChains, il.IndexMember(rec.ChainID, rec.Datastore)).Err(); err != nil {
			return "", fmt.Errorf("index %s: %w", events.ChainRecordKey(rec.ChainID, rec.Datastore), err)
		}
	}
	return Outcome(res), nil
}

// Renew extends the lease if token still holds it, or takes it again if
// nobody holds it and the record still says token's pull is under way;
// false means the pull is not token's any more (another puller has the
// lease, or a successor finished the chain while token's lease was gone).
func (d *DB) Renew(ctx context.Context, chainID, ds, token string, ttl time.Duration) (bool, error) {
	keys := []string{il.ChainLeaseKey(chainID, ds), il.ChainKey(chainID, ds)}
	n, err := renewScript.Run(ctx, d.c, keys, token, ttl.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("renew lease of %s: %w", events.ChainRecordKey(chainID, ds), err)
	}
	return n == 1, nil
}

// Complete marks the chain ready. It returns false when the pull is not
// token's any more (another puller's work then counts, not the caller's).
func (d *DB) Complete(ctx context.Context, rec events.ChainRecord, token string) (bool, error) {
	args := append([]any{token, rec.Datastore, d.nowMillis()}, il.EncodeChain(rec)...)
	n, err := completeScript.Run(ctx, d.c, chainKeys(rec.ChainID, rec.Datastore), args...).Int()
	if err != nil {
		return false, fmt.Errorf("complete %s: %w", events.ChainRecordKey(rec.ChainID, rec.Datastore), err)
	}
	if n == 1 {
		// The index entry may be missing if Redis lost its data mid-pull.
		if err := d.c.SAdd(ctx, il.IndexChains, il.IndexMember(rec.ChainID, rec.Datastore)).Err(); err != nil {
			return true, fmt.Errorf("index %s: %w", events.ChainRecordKey(rec.ChainID, rec.Datastore), err)
		}
	}
	return n == 1, nil
}

// Fail claims token's failed pull: the record turns failed with reason and
// token keeps the lease for hold, so that no successor begins on the
// folder before the caller has cleared it (Release ends the hold). False
// means the pull is not token's (a successor took it over, or finished
// it, while token was paused; or Redis lost the record): the caller must
// leave the folder alone.
func (d *DB) Fail(ctx context.Context, chainID, ds, token, reason string, hold time.Duration) (bool, error) {
	k := chainKeys(chainID, ds)
	n, err := failScript.Run(ctx, d.c, k[:3], token, ds, reason, d.nowMillis(), hold.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("fail %s: %w", events.ChainRecordKey(chainID, ds), err)
	}
	return n == 1, nil
}

// Release drops token's lease, if token holds it.
func (d *DB) Release(ctx context.Context, chainID, ds, token string) error {
	if err := releaseScript.Run(ctx, d.c, []string{il.ChainLeaseKey(chainID, ds)}, token).Err(); err != nil {
		return fmt.Errorf("release lease of %s: %w", events.ChainRecordKey(chainID, ds), err)
	}
	return nil
}

// Get reads one chain record.
func (d *DB) Get(ctx context.Context, chainID, ds string) (events.ChainRecord, bool, error) {
	h, err := d.c.HGetAll(ctx, il.ChainKey(chainID, ds)).Result()
	if err != nil {
		return events.ChainRecord{}, false, fmt.Errorf("read %s: %w", events.ChainRecordKey(chainID, ds), err)
	}
	return il.DecodeChain(h)
}

// ChainAt names a chain on a datastore.
type ChainAt struct{ ChainID, Datastore string }

// GetMany reads several chain records in one round trip; found[i] says
// whether at[i] has one.
func (d *DB) GetMany(ctx context.Context, at []ChainAt) (recs []events.ChainRecord, found []bool, err error) {
	pipe := d.c.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(at))
	for i, a := range at {
		cmds[i] = pipe.HGetAll(ctx, il.ChainKey(a.ChainID, a.Datastore))
	}
	if len(at) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, nil, fmt.Errorf("read %d chain records: %w", len(at), err)
		}
	}
	recs, found = make([]events.ChainRecord, len(at)), make([]bool, len(at))
	for i, cmd := range cmds {
		if recs[i], found[i], err = il.DecodeChain(cmd.Val()); err != nil {
			return nil, nil, err
		}
	}
	return recs, found, nil
}

// Locations returns datastore → state for a chain.
func (d *DB) Locations(ctx context.Context, chainID string) (map[string]string, error) {
	m, err := d.c.HGetAll(ctx, il.ChainLocsKey(chainID)).Result()
	if err != nil {
		return nil, fmt.Errorf("read locations of %s: %w", chainID, err)
	}
	return m, nil
}

// AddRef records that pod uid uses the chain on ds. It returns the new
// reference count, or ErrNotReady. As AddRefs, it writes the pod's own set
// first.
func (d *DB) AddRef(ctx context.Context, chainID, ds, uid string) (int, error) {
	_, counts, err := d.addRefs(ctx, uid, []events.ChainRecord{{ChainID: chainID, Datastore: ds}})
	if err != nil {
		return 0, err
	}
	return counts[0], nil
}

// AddRefs references every chain of an image (base first, all on one
// datastore) for pod uid, and returns every "<chainID>@<ds>" the pod then
// references.
//
// The pod's own set (the one pod.deleted reads to drop the pod's
// references) is written before the chains' sets, never after: whatever
// happens between the two (a chain found not ready, a lost connection, a
// crash), every chain whose set names the pod is in the pod's set. The
// two cannot be one script: the pod's set and each chain's keys have
// different hash tags, and a script over both would fail on Redis Cluster
// (CROSSSLOT). A chain that is not ready is ErrNotReady, and the chains
// refused are taken out of the pod's set again (a chain that is not ready
// never names a pod: a referenced chain is neither evicted nor failed), so
// the pod's set names the chains referenced before the refusal. Two round
// trips whatever the number of layers: the pod's set (and its members),
// then the checks-and-adds; a third when a chain is refused.
func (d *DB) AddRefs(ctx context.Context, uid string, chains []events.ChainRecord) ([]string, error) {
	members, _, err := d.addRefs(ctx, uid, chains)
	return members, err
}

// addRefs is AddRefs, also returning each chain's new reference count.
func (d *DB) addRefs(ctx context.Context, uid string, chains []events.ChainRecord) (members []string, counts []int, err error) {
	now := d.nowMillis()
	add := make([]any, len(chains))
	for i, c := range chains {
		add[i] = il.IndexMember(c.ChainID, c.Datastore)
	}
	pipe := d.c.Pipeline()
	if len(add) > 0 {
		pipe.SAdd(ctx, il.PodKey(uid), add...)
	}
	all := pipe.SMembers(ctx, il.PodKey(uid))
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, nil, fmt.Errorf("record references of pod %s: %w", uid, err)
	}
	res, err := runPipelined(ctx, d.c, addRefScript, len(chains), func(i int) ([]string, []any) {
		k := chainKeys(chains[i].ChainID, chains[i].Datastore)
		return []string{k[0], k[3]}, []any{uid, now}
	})
	if err != nil {
		return nil, nil, fmt.Errorf("reference the chains of pod %s: %w", uid, err)
	}
	counts = make([]int, len(chains))
	var refused []any
	var notReady error
	for i, c := range chains {
		n, _ := res[i].(int64)
		if n < 0 {
			refused = append(refused, add[i])
			if notReady == nil {
				notReady = fmt.Errorf("reference %s for pod %s: %w", events.ChainRecordKey(c.ChainID, c.Datastore), uid, ErrNotReady)
			}
			continue
		}
		counts[i] = int(n)
	}
	if notReady == nil {
		return all.Val(), counts, nil
	}
	if err := d.c.SRem(ctx, il.PodKey(uid), refused...).Err(); err != nil {
		return nil, nil, errors.Join(notReady, fmt.Errorf("take the refused chains out of pod %s's references: %w", uid, err))
	}
	return nil, nil, notReady
}

// runPipelined runs script n times in one round trip, the i-th with the
// keys and arguments of args(i), and returns each run's result. Scripts go
// by their hash; if Redis does not know it (restarted, flushed), the
// round goes again with the scripts' text, which loads them.
func runPipelined(ctx context.Context, c redis.UniversalClient, script *redis.Script, n int, args func(i int) ([]string, []any)) ([]any, error) {
	run := func(byHash bool) ([]*redis.Cmd, error) {
		pipe := c.Pipeline()
		cmds := make([]*redis.Cmd, n)
		for i := range n {
			keys, argv := args(i)
			if byHash {
				cmds[i] = script.EvalSha(ctx, pipe, keys, argv...)
			} else {
				cmds[i] = script.Eval(ctx, pipe, keys, argv...)
			}
		}
		_, err := pipe.Exec(ctx)
		return cmds, err
	}
	cmds, err := run(true)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		cmds, err = run(false)
	}
	if err != nil {
		return nil, err
	}
	out := make([]any, n)
	for i, cmd := range cmds {
		out[i] = cmd.Val()
	}
	return out, nil
}

// DropRef removes pod uid's reference to the chain on ds and returns the
// remaining count.
func (d *DB) DropRef(ctx context.Context, chainID, ds, uid string) (int, error) {
	k := chainKeys(chainID, ds)
	n, err := dropRefScript.Run(ctx, d.c, []string{k[0], k[3]}, uid, d.nowMillis()).Int()
	if err != nil {
		return 0, fmt.Errorf("drop reference of pod %s on %s: %w", uid, events.ChainRecordKey(chainID, ds), err)
	}
	if err := d.c.SRem(ctx, il.PodKey(uid), il.IndexMember(chainID, ds)).Err(); err != nil {
		return n, fmt.Errorf("drop reference of pod %s: %w", uid, err)
	}
	return n, nil
}

// PodRefs lists the "<chainID>@<ds>" a pod references.
func (d *DB) PodRefs(ctx context.Context, uid string) ([]string, error) {
	m, err := d.c.SMembers(ctx, il.PodKey(uid)).Result()
	if err != nil {
		return nil, fmt.Errorf("read references of pod %s: %w", uid, err)
	}
	return m, nil
}

// ForgetPod deletes a pod's reference set (after its references are dropped).
func (d *DB) ForgetPod(ctx context.Context, uid string) error {
	return d.c.Del(ctx, il.PodKey(uid)).Err()
}

// MarkEvicting claims an unreferenced chain unused since before cutoff for
// eviction. False means it is referenced, being pulled, recently used or
// not ready.
func (d *DB) MarkEvicting(ctx context.Context, chainID, ds string, cutoff time.Time) (bool, error) {
	k := chainKeys(chainID, ds)
	n, err := markEvictingScript.Run(ctx, d.c, []string{k[0], k[3], k[1], k[2]}, cutoff.UnixMilli(), d.nowMillis(), ds).Int()
	if err != nil {
		return false, fmt.Errorf("mark %s for eviction: %w", events.ChainRecordKey(chainID, ds), err)
	}
	return n == 1, nil
}

// Forget removes a chain's record from ds (after its folder is deleted).
func (d *DB) Forget(ctx context.Context, chainID, ds string) error {
	k := chainKeys(chainID, ds)
	if err := forgetScript.Run(ctx, d.c, []string{k[0], k[3], k[1], k[2]}, ds).Err(); err != nil {
		return fmt.Errorf("forget %s: %w", events.ChainRecordKey(chainID, ds), err)
	}
	return d.c.SRem(ctx, il.IndexChains, il.IndexMember(chainID, ds)).Err()
}

// Restore writes a ready record found on a datastore, unless Redis already
// has a record for it. It reports whether it wrote.
func (d *DB) Restore(ctx context.Context, rec events.ChainRecord) (bool, error) {
	k := chainKeys(rec.ChainID, rec.Datastore)
	args := append([]any{rec.Datastore, d.nowMillis()}, il.EncodeChain(rec)...)
	n, err := restoreScript.Run(ctx, d.c, []string{k[0], k[2], k[3]}, args...).Int()
	if err != nil {
		return false, fmt.Errorf("restore %s: %w", events.ChainRecordKey(rec.ChainID, rec.Datastore), err)
	}
	if err := d.c.SAdd(ctx, il.IndexChains, il.IndexMember(rec.ChainID, rec.Datastore)).Err(); err != nil {
		return n == 1, err
	}
	return n == 1, nil
}

// PutManifest stores a manifest and points ref at it.
func (d *DB) PutManifest(ctx context.Context, ref string, m il.Manifest) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	// Keys of different slots: separate commands (a pipeline splits by slot
	// on a cluster). A reader that sees the ref before the manifest finds no
	// manifest and treats the image as unknown, which is harmless.
	if err := d.c.SetNX(ctx, il.ManifestKey(m.Digest), b, 0).Err(); err != nil {
		return fmt.Errorf("store manifest %s: %w", m.Digest, err)
	}
	if ref != "" {
		if err := d.c.Set(ctx, il.RefKey(ref), m.Digest, 0).Err(); err != nil {
			return fmt.Errorf("store digest of %s: %w", ref, err)
		}
	}
	return d.c.SAdd(ctx, il.IndexImages, m.Digest).Err()
}

// Intact reports whether the metadata is complete (the epoch key exists).
func (d *DB) Intact(ctx context.Context) (bool, error) {
	n, err := d.c.Exists(ctx, il.EpochKey).Result()
	if err != nil {
		return false, fmt.Errorf("read epoch: %w", err)
	}
	return n == 1, nil
}

// MarkIntact sets the epoch key after a rebuild (or on an empty start).
func (d *DB) MarkIntact(ctx context.Context) error {
	return d.c.Set(ctx, il.EpochKey, d.now().UTC().Format(time.RFC3339Nano), 0).Err()
}
