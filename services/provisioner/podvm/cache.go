package podvm

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
	"golang.org/x/sync/singleflight"
)

// lookupTTL bounds how long a looked-up host, pool or port group backing is
// reused. These change rarely (a host added, a datastore mounted, a port
// group re-created) and every create resolves them, so resolving them once
// a minute instead of once a pod VM takes about eight vSphere calls off the
// create path. A create that fails drops what it used and, when a cached
// entry may be why, is made again with fresh lookups (see StartCreate and
// CreateFailed): a stale entry costs a retry.
const lookupTTL = time.Minute

// hostInfo is what a create needs to know about its host.
type hostInfo struct {
	host       *object.HostSystem
	name       string
	datastores map[string]bool // names of the mounted datastores
	pool       *object.ResourcePool
}

type cached[T any] struct {
	val T
	at  time.Time
}

// lookups caches the placement lookups of StartCreate, by host name, pool
// path and port group name.
type lookups struct {
	mu    sync.Mutex
	now   func() time.Time
	hosts map[string]cached[*hostInfo]
	pools map[string]cached[*object.ResourcePool]
	pgs   map[string]cached[types.BaseVirtualDeviceBackingInfo]

	// hostRefs maps every host's name to its reference, from one listing
	// (listedAt) that serves every host's lookup for lookupTTL: a search
	// by name reads every host's name, so searching per host cost
	// O(hosts) per host first used (at 5,000 hosts, most of a pod's CPU in
	// the simulator and a quarter of a megabyte of names from a vCenter).
	hostRefs map[string]types.ManagedObjectReference
	listedAt time.Time
	listing  singleflight.Group
}

func newLookups() *lookups {
	return &lookups{
		now:   time.Now,
		hosts: map[string]cached[*hostInfo]{},
		pools: map[string]cached[*object.ResourcePool]{},
		pgs:   map[string]cached[types.BaseVirtualDeviceBackingInfo]{},
	}
}

func get[T any](l *lookups, m map[string]cached[T], key string) (T, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := m[key]
	if !ok || l.now().Sub(e.at) > lookupTTL {
		var zero T
		return zero, false
	}
	return e.val, true
}

func put[T any](l *lookups, m map[string]cached[T], key string, v T) {
	l.mu.Lock()
	m[key] = cached[T]{val: v, at: l.now()}
	l.mu.Unlock()
}

// forget drops what a failed create used: host, pool and port groups are
// looked up afresh by the next attempt.
func (l *lookups) forget(host, pool string, portGroups []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.hosts, host)
	delete(l.hostRefs, host) // a host re-added has a new reference
	delete(l.pools, pool)
	for _, pg := range portGroups {
		delete(l.pgs, pg)
	}
}

// hostInfo returns the host named name with its datastores and its
// cluster's root pool, and whether it came from the cache; fresh forces a
// lookup (used before reporting a datastore as not mounted, which a cached
// answer must not decide).
func (c *Client) hostInfo(ctx context.Context, name string, fresh bool) (*hostInfo, bool, error) {
	if !fresh {
		if h, ok := get(c.cache, c.cache.hosts, name); ok {
			return h, true, nil
		}
	}
	host, err := c.host(ctx, name)
	if err != nil {
		return nil, false, err
	}
	mounted, hostName, err := c.hostDatastores(ctx, host)
	if err != nil {
		return nil, false, err
	}
	pool, err := host.ResourcePool(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("resource pool of host %s: %w", name, err)
	}
	h := &hostInfo{host: host, name: hostName, datastores: mounted, pool: pool}
	put(c.cache, c.cache.hosts, name, h)
	return h, false, nil
}

// pool returns the resource pool at poolPath, or the host's cluster pool
// when poolPath is empty or names no pool. An absolute inventory path is
// resolved with one SearchIndex call; the finder (which lists every compute
// resource of the datacenter) is only used for relative paths. Only a
// resolved pool is cached: the fallback depends on the host.
func (c *Client) pool(ctx context.Context, h *hostInfo, poolPath string, fresh bool) (pool *object.ResourcePool, cached bool, err error) {
	if poolPath == "" {
		return h.pool, false, nil
	}
	if !fresh {
		if p, ok := get(c.cache, c.cache.pools, poolPath); ok {
			return p, true, nil
		}
	}
	if poolPath[0] == '/' {
		ref, err := object.NewSearchIndex(c.vc).FindByInventoryPath(ctx, poolPath)
		if err != nil {
			return nil, false, fmt.Errorf("resource pool %s: %w", poolPath, err)
		}
		if rp, ok := ref.(*object.ResourcePool); ok {
			pool = rp
		}
	} else {
		p, err := c.finder.ResourcePool(ctx, poolPath)
		var nf *find.NotFoundError
		switch {
		case err == nil:
			pool = p
		case !errors.As(err, &nf):
			return nil, false, fmt.Errorf("resource pool %s: %w", poolPath, err)
		}
	}
	if pool == nil {
		// A path that names no pool falls back to the host's cluster pool,
		// which is what the scheduler means by it.
		return h.pool, false, nil
	}
	put(c.cache, c.cache.pools, poolPath, pool)
	return pool, false, nil
}

// portGroupBacking returns the NIC backing of the distributed port group
// named name.
func (c *Client) portGroupBacking(ctx context.Context, name string, fresh bool) (b types.BaseVirtualDeviceBackingInfo, cached bool, err error) {
	if !fresh {
		if b, ok := get(c.cache, c.cache.pgs, name); ok {
			return b, true, nil
		}
	}
	b, err = c.lookupPortGroupBacking(ctx, name)
	if err != nil {
		return nil, false, err
	}
	put(c.cache, c.cache.pgs, name, b)
	return b, false, nil
}

// hostDatastores returns the names of the datastores the host mounts, and
// the host's name for messages.
func (c *Client) hostDatastores(ctx context.Context, host *object.HostSystem) (map[string]bool, string, error) {
	var h mo.HostSystem
	if err := host.Properties(ctx, host.Reference(), []string{"name", "datastore"}, &h); err != nil {
		return nil, "", fmt.Errorf("datastores of host: %w", err)
	}
	out := map[string]bool{}
	if len(h.Datastore) > 0 {
		var dss []mo.Datastore
		if err := property.DefaultCollector(c.vc).Retrieve(ctx, h.Datastore, []string{"name"}, &dss); err != nil {
			return nil, "", fmt.Errorf("datastores of host %s: %w", h.Name, err)
		}
		for _, d := range dss {
			out[d.Name] = true
		}
	}
	return out, h.Name, nil
}

// hostRef returns the reference of the host named name from the index of
// every host, listing the hosts again when the index is older than
// lookupTTL or does not know the name (a host added since). Concurrent
// lookups share one listing; a name missing from a listing that began
// before this call is looked for in one more.
func (c *Client) hostRef(ctx context.Context, name string) (types.ManagedObjectReference, bool, error) {
	l := c.cache
	l.mu.Lock()
	ref, ok := l.hostRefs[name]
	fresh := l.now().Sub(l.listedAt) <= lookupTTL
	l.mu.Unlock()
	if ok && fresh {
		return ref, true, nil
	}
	asked := l.now()
	for range 2 {
		v, err, _ := l.listing.Do("hosts", func() (any, error) {
			started := l.now()
			refs, err := c.listHosts(ctx)
			if err != nil {
				return nil, err
			}
			l.mu.Lock()
			l.hostRefs, l.listedAt = refs, started
			l.mu.Unlock()
			return started, nil
		})
		if err != nil {
			return types.ManagedObjectReference{}, false, err
		}
		l.mu.Lock()
		ref, ok = l.hostRefs[name]
		l.mu.Unlock()
		if ok || !v.(time.Time).Before(asked) {
			return ref, ok, nil
		}
	}
	return ref, ok, nil
}
