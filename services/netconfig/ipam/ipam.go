package ipam

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/record"
)

// ErrExhausted is returned (wrapped) when every usable address of a pool is
// allocated.
var ErrExhausted = errors.New("addresses exhausted")

// ErrAllocationUnderWay: another allocation for the same pod holds the
// pod's binding (two placements handled at once); try again shortly, when
// Allocate returns the address that one took.
var ErrAllocationUnderWay = errors.New("another allocation for the pod is under way")

// abandonedAfter is how old a pod binding whose address was never created
// must be before another allocation takes it over: the allocation that
// wrote it creates the address right after, unless it died in between.
const abandonedAfter = 10 * time.Second

// ErrInvalidPool is returned (wrapped) for a pool that cannot hand out
// addresses.
var ErrInvalidPool = errors.New("invalid address pool")

// maxCreateRaces bounds how many times one allocation loses a race for an
// address before it re-reads the pool; far more than a burst of concurrent
// allocations on one network needs, small enough to stop a livelock.
const maxCreateRaces = 256

// Pool is the address range of one network.
type Pool struct {
	// Network name (the key prefix in the bucket).
	Network string
	// Prefix is the network's CIDR.
	Prefix netip.Prefix
	// Gateway, when valid, is reserved and never handed out.
	Gateway netip.Addr
	// Record is the revision of the network record the pool was read
	// from: an allocation from a record older than an addressing change
	// allows is given back (fence.go). 0 (unknown) is never given back.
	Record uint64
}

// PoolOf builds the pool of a network spec.
func PoolOf(network string, spec events.NetworkSpec) (Pool, error) {
	prefix, err := netip.ParsePrefix(spec.CIDR)
	if err != nil || !prefix.Addr().Is4() || prefix.Masked() != prefix {
		return Pool{}, fmt.Errorf("network %s: cidr %q: %w: want an IPv4 subnet without host bits", network, spec.CIDR, ErrInvalidPool)
	}
	p := Pool{Network: network, Prefix: prefix}
	if spec.Gateway != "" {
		gw, err := netip.ParseAddr(spec.Gateway)
		if err != nil || !prefix.Contains(gw) {
			return Pool{}, fmt.Errorf("network %s: gateway %q: %w: must be an address inside %s", network, spec.Gateway, ErrInvalidPool, prefix)
		}
		p.Gateway = gw
	}
	return p, nil
}

// first and last usable addresses as integers: the network and broadcast
// addresses are excluded (the CIDRs events accept are /30 or larger).
func (p Pool) bounds() (first, last uint32) {
	base := toUint(p.Prefix.Addr())
	size := uint32(1) << (32 - p.Prefix.Bits())
	if size <= 2 {
		return base, base + size - 1
	}
	return base + 1, base + size - 2
}

// Usable is the number of addresses the pool can hand out.
func (p Pool) Usable() int {
	first, last := p.bounds()
	n := int(last-first) + 1
	if p.Gateway.IsValid() {
		if g := toUint(p.Gateway); g >= first && g <= last {
			n--
		}
	}
	return n
}

// Holds reports whether the pool could hand out ip: inside the prefix,
// neither its network nor its broadcast address, not the gateway. An
// address allocated from another pool that this one does not hold is
// invalid under it.
func (p Pool) Holds(ip netip.Addr) bool {
	if !ip.Is4() || !p.Prefix.Contains(ip) || ip == p.Gateway {
		return false
	}
	first, last := p.bounds()
	v := toUint(ip)
	return v >= first && v <= last
}

// Owner is the pod an address is allocated to.
type Owner struct {
	Namespace, Name, UID string
	// Host the pod's port is bound on.
	Host string
}

// Allocator hands out addresses from the `ipam` bucket. It keeps no state of
// its own, so any number of allocators (goroutines or replicas) may work on
// the same bucket at once.
type Allocator struct {
	kv jetstream.KeyValue
	// js reads the bucket's stream for Allocations (listed).
	js  jetstream.JetStream
	now func() time.Time

	// next is, per network, the address after the last one this allocator
	// took: a hint where a free address probably is, so that an allocation
	// costs one Create instead of a listing of the network's addresses.
	// Correctness never depends on it: the Create of the address key is the
	// commit, and losing it to another allocator just moves on.
	mu   sync.Mutex
	next map[string]uint32

	// scan serializes the fallback listings of one allocator: concurrent
	// scanners would all pick the same lowest free address and race for it.
	scan sync.Mutex

	// fences are, per network, the allocations waiting for the network's
	// fence write (fence.go, commit).
	fmu    sync.Mutex
	fences map[string]*fenceGroup
}

// New returns an allocator over the `ipam` bucket kv of the JetStream js.
func New(kv jetstream.KeyValue, js jetstream.JetStream) *Allocator {
	return &Allocator{kv: kv, js: js, now: time.Now, next: map[string]uint32{}, fences: map[string]*fenceGroup{}}
}

// hintTries bounds the addresses tried from the hint before falling back to
// a listing (addresses taken by other allocators or before a restart).
const hintTries = 8

// Allocate returns the pod's address on the pool's network, allocating the
// lowest free one if the pod holds none. It is idempotent per (network, pod
// uid): a retried or replayed allocation returns the same address (with Host
// updated). Concurrent allocations never return the same address because an
// address is taken with a KV Create, which only one writer can win.
func (a *Allocator) Allocate(ctx context.Context, pool Pool, owner Owner) (events.IPAllocation, error) {
	if owner.UID == "" {
		return events.IPAllocation{}, errors.New("allocate: owner uid is required")
	}
	alloc, err := a.allocate(ctx, pool, owner)
	if errors.Is(err, ErrAllocationUnderWay) {
		// The other allocation may have finished meanwhile: its address
		// is the pod's.
		if cur, ok, herr := a.held(ctx, pool.Network, owner.UID); herr == nil && ok && (cur.alloc.Host == owner.Host || owner.Host == "") {
			return cur.alloc, nil
		}
	}
	return alloc, err
}

func (a *Allocator) allocate(ctx context.Context, pool Pool, owner Owner) (events.IPAllocation, error) {
	cur, ok, err := a.held(ctx, pool.Network, owner.UID)
	if err != nil {
		return events.IPAllocation{}, err
	} else if ok {
		if cur.alloc.Host != owner.Host && owner.Host != "" {
			return a.rebind(ctx, cur, owner.Host)
		}
		return cur.alloc, nil
	}
	st := bindState{absent: cur.unbound}

	first, last := pool.bounds()
	if alloc, ok, err := a.fromHint(ctx, pool, owner, first, last, &st); err != nil || ok {
		return alloc, err
	}
	a.scan.Lock()
	defer a.scan.Unlock()
	used, err := a.usedSet(ctx, pool.Network)
	if err != nil {
		return events.IPAllocation{}, err
	}
	races := 0
	for v := first; ; v++ {
		if v > last || v < first { // v < first: wrapped around 2^32
			return events.IPAllocation{}, a.exhausted(pool, len(used))
		}
		if used[v] || (pool.Gateway.IsValid() && v == toUint(pool.Gateway)) {
			continue
		}
		ip := fromUint(v).String()
		alloc := a.allocation(pool, owner, ip)
		// The binding goes first: an address key whose owner has no binding
		// pointing at it would be a leak nobody can find by pod.
		if err := a.bind(ctx, pool.Network, owner.UID, ip, &st); err != nil {
			return events.IPAllocation{}, err
		}
		data, _ := json.Marshal(alloc)
		rev, err := a.kv.Create(ctx, events.IPAllocationKey(pool.Network, ip), data)
		if err == nil {
			a.setHint(pool.Network, v+1)
			return alloc, a.commit(ctx, pool, ip, rev, owner.UID, st.rev)
		}
		if !record.Conflict(err) {
			return events.IPAllocation{}, fmt.Errorf("allocate %s on %s: %w", ip, pool.Network, err)
		}
		// Another pod won this address between our listing and our create.
		used[v] = true
		if races++; races > maxCreateRaces {
			return events.IPAllocation{}, fmt.Errorf("allocate on %s: lost %d races for addresses, giving up for now", pool.Network, races)
		}
	}
}

func (a *Allocator) exhausted(pool Pool, used int) error {
	return fmt.Errorf("network %s: all %d usable addresses of %s are allocated (%d in use): %w",
		pool.Network, pool.Usable(), pool.Prefix, used, ErrExhausted)
}

// held is a pod's current allocation found through its binding.
type held struct {
	alloc    events.IPAllocation
	revision uint64
	// unbound says the pod had no binding at all when held read it, so
	// the allocation's first bind can Create it without reading it again.
	unbound bool
}

// held returns the allocation the pod's binding points to, if the pod really
// holds it.
func (a *Allocator) held(ctx context.Context, network, uid string) (held, bool, error) {
	var b events.IPPodBinding
	ok, _, err := a.getJSON(ctx, events.IPPodBindingKey(network, uid), &b)
	if err != nil || !ok {
		return held{unbound: err == nil}, false, err
	}
	var alloc events.IPAllocation
	ok, rev, err := a.getJSON(ctx, events.IPAllocationKey(network, b.IP), &alloc)
	if err != nil || !ok || alloc.UID != uid {
		// A binding to an address never taken (crash between the two writes)
		// or since taken by another pod: the pod holds nothing.
		return held{}, false, err
	}
	return held{alloc: alloc, revision: rev}, true, nil
}

// rebind moves an allocation to another host with a compare-and-set.
func (a *Allocator) rebind(ctx context.Context, cur held, host string) (events.IPAllocation, error) {
	cur.alloc.Host = host
	data, _ := json.Marshal(cur.alloc)
	if _, err := a.kv.Update(ctx, events.IPAllocationKey(cur.alloc.Network, cur.alloc.IP), data, cur.revision); err != nil {
		return events.IPAllocation{}, fmt.Errorf("move %s of %s to host %s: %w", cur.alloc.IP, cur.alloc.Network, host, err)
	}
	return cur.alloc, nil
}

// Lookup returns the pod's allocation on a network, if any.
func (a *Allocator) Lookup(ctx context.Context, network, uid string) (events.IPAllocation, bool, error) {
	h, ok, err := a.held(ctx, network, uid)
	return h.alloc, ok, err
}

// Move rebinds the pod's address on a network to another host (after a
// migration). It reports false when the pod holds no address there.
func (a *Allocator) Move(ctx context.Context, network, uid, host string) (bool, error) {
	for attempt := 0; ; attempt++ {
		h, ok, err := a.held(ctx, network, uid)
		if err != nil || !ok {
			return false, err
		}
		if h.alloc.Host == host {
			return true, nil
		}
		_, err = a.rebind(ctx, h, host)
		if err == nil {
			return true, nil
		}
		if !record.Conflict(err) || attempt >= 5 {
			return false, err
		}
	}
}

// Release frees the pod's address on a network. It is idempotent and
// returns the address freed ("" when the pod held none). An address is
// deleted only if it still belongs to the pod (compare-and-set on the
// revision read), so a late release never frees a reused address.
func (a *Allocator) Release(ctx context.Context, network, uid string) (string, error) {
	for attempt := 0; ; attempt++ {
		h, ok, err := a.held(ctx, network, uid)
		if err != nil {
			return "", err
		}
		ip := ""
		if ok {
			err := a.kv.Delete(ctx, events.IPAllocationKey(network, h.alloc.IP), jetstream.LastRevision(h.revision))
			if record.Conflict(err) && attempt < 5 {
				continue // rebound to another host meanwhile: read it again
			}
			if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
				return "", fmt.Errorf("release %s on %s: %w", h.alloc.IP, network, err)
			}
			ip = h.alloc.IP
		}
		if err := a.kv.Delete(ctx, events.IPPodBindingKey(network, uid)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return ip, fmt.Errorf("release binding of %s on %s: %w", uid, network, err)
		}
		return ip, nil
	}
}

// Allocations lists the addresses allocated on a network: every address
// whose key was created before the call and not deleted by the time it is
// read. A delete and an addressing change rely on that (fence.go).
func (a *Allocator) Allocations(ctx context.Context, network string) ([]events.IPAllocation, error) {
	keys, err := a.listed(ctx, network)
	if err != nil {
		return nil, err
	}
	out := make([]events.IPAllocation, 0, len(keys))
	for _, k := range keys {
		var alloc events.IPAllocation
		ok, _, err := a.getJSON(ctx, k, &alloc)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, alloc)
		}
	}
	return out, nil
}

// Count is the number of addresses allocated on a network.
func (a *Allocator) Count(ctx context.Context, network string) (int, error) {
	keys, err := a.keys(ctx, network)
	return len(keys), err
}

// listed returns the address keys of a network from the bucket's stream:
// the subjects that hold a message when the stream answers, deleted
// addresses among them (their delete markers; the caller's read of each
// leaves them out). It is a snapshot the server takes at once, where the
// key listing of the KV client (keys) is a watcher that ends when the
// pending count the server reports with a message reaches zero; under
// concurrent writes that count can touch zero before the listing is whole
// (nats-io/nats.py#995, nats-io/nats-server#4824), and an address missed
// by a delete's or an addressing change's listing is one the network
// loses track of.
func (a *Allocator) listed(ctx context.Context, network string) ([]string, error) {
	stream, err := a.js.Stream(ctx, "KV_"+a.kv.Bucket())
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", network, err)
	}
	prefix := "$KV." + a.kv.Bucket() + "."
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(prefix+network+".*"))
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", network, err)
	}
	out := make([]string, 0, len(info.State.Subjects))
	for subject := range info.State.Subjects {
		out = append(out, strings.TrimPrefix(subject, prefix))
	}
	slices.Sort(out)
	return out, nil
}

// keys lists the address keys of a network (<network>.* has exactly the
// two-token address keys; bindings have three tokens) with the KV client's
// listing: cheap, but it may miss a key written concurrently (listed), so
// it serves only counts and the scan for a free address, whose create is
// what decides.
func (a *Allocator) keys(ctx context.Context, network string) ([]string, error) {
	lister, err := a.kv.ListKeysFiltered(ctx, network+".*")
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("list addresses of %s: %w", network, err)
	}
	var out []string
	for k := range lister.Keys() {
		out = append(out, k)
	}
	return out, nil
}

func (a *Allocator) usedSet(ctx context.Context, network string) (map[uint32]bool, error) {
	keys, err := a.keys(ctx, network)
	if err != nil {
		return nil, err
	}
	used := make(map[uint32]bool, len(keys))
	for _, k := range keys {
		if _, ip, err := events.ParseIPAllocationKey(k); err == nil {
			used[toUint(ip)] = true
		}
	}
	return used, nil
}

func (a *Allocator) getJSON(ctx context.Context, key string, v any) (bool, uint64, error) {
	e, err := a.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, fmt.Errorf("read %s: %w", key, err)
	}
	if err := json.Unmarshal(e.Value(), v); err != nil {
		return false, 0, fmt.Errorf("decode %s: %w", key, err)
	}
	return true, e.Revision(), nil
}

// MAC is the deterministic MAC address of a pod's NIC on a network, in
// VMware's range for manually assigned addresses (00:50:56:00:00:00 to
// 00:50:56:3f:ff:ff), so a re-created pod VM keeps its address and vCenter
// accepts it as a static MAC.
func MAC(network, uid string) string {
	sum := sha256.Sum256([]byte(network + "\x00" + uid))
	return net.HardwareAddr{0x00, 0x50, 0x56, sum[0] & 0x3f, sum[1], sum[2]}.String()
}

func toUint(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func fromUint(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// allocation is the record of ip allocated from pool to owner, now.
func (a *Allocator) allocation(pool Pool, owner Owner, ip string) events.IPAllocation {
	return events.IPAllocation{
		Network: pool.Network, IP: ip,
		Namespace: owner.Namespace, Name: owner.Name, UID: owner.UID, Host: owner.Host,
		MAC: MAC(pool.Network, owner.UID), AllocatedAt: a.now().UTC(),
	}
}

// fromHint tries a few addresses from the network's hint on, in order, with
// no listing. ok is false when none was free there (or the hint ran past the
// end of the pool); the caller then scans from the first address.
//
// Each candidate is taken from the hint under the allocator's mutex, so
// concurrent allocations of one process try different addresses instead of
// racing for the same one.
//
// st is the allocation's knowledge of the pod's binding (bind), shared
// with the scan that may follow.
func (a *Allocator) fromHint(ctx context.Context, pool Pool, owner Owner, first, last uint32, st *bindState) (events.IPAllocation, bool, error) {
	for range hintTries {
		a.mu.Lock()
		v, known := a.next[pool.Network]
		if known && v >= first && v <= last {
			a.next[pool.Network] = v + 1
		}
		a.mu.Unlock()
		if !known || v < first || v > last {
			return events.IPAllocation{}, false, nil
		}
		if pool.Gateway.IsValid() && v == toUint(pool.Gateway) {
			continue
		}
		ip := fromUint(v).String()
		alloc := a.allocation(pool, owner, ip)
		if err := a.bind(ctx, pool.Network, owner.UID, ip, st); err != nil {
			return events.IPAllocation{}, false, err
		}
		data, _ := json.Marshal(alloc)
		rev, err := a.kv.Create(ctx, events.IPAllocationKey(pool.Network, ip), data)
		if err == nil {
			return alloc, true, a.commit(ctx, pool, ip, rev, owner.UID, st.rev)
		}
		if !record.Conflict(err) {
			return events.IPAllocation{}, false, fmt.Errorf("allocate %s on %s: %w", ip, pool.Network, err)
		}
	}
	return events.IPAllocation{}, false, nil
}

func (a *Allocator) setHint(network string, v uint32) {
	a.mu.Lock()
	a.next[network] = v
	a.mu.Unlock()
}
