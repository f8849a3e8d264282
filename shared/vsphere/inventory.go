package vsphere

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Host is a host as a scheduler needs it, read in one pass over the
// datacenter.
type Host struct {
	Ref  types.ManagedObjectReference
	Name string
	// Cluster and ClusterRef are the host's cluster; for a standalone host
	// Cluster is empty and ClusterRef is its ComputeResource.
	Cluster    string
	ClusterRef types.ManagedObjectReference
	// ResourcePool is the root resource pool of the host's cluster, where
	// VMs placed on the host are created.
	ResourcePool types.ManagedObjectReference
	// Datastores and Networks are the names of the datastores mounted on
	// the host and the networks (port groups) it carries.
	Datastores []string
	Networks   []string

	CPUCores   int32
	CPUThreads int32
	// CPUMHz is the speed of one core; CPUCapacityMHz = CPUCores * CPUMHz,
	// the unit vSphere reservations use.
	CPUMHz         int32
	CPUCapacityMHz int64
	MemoryBytes    int64

	ConnectionState types.HostSystemConnectionState
	InMaintenance   bool
}

// Schedulable reports whether new VMs may be placed on the host: connected
// and not in maintenance mode.
func (h Host) Schedulable() bool {
	return h.ConnectionState == types.HostSystemConnectionStateConnected && !h.InMaintenance
}

// HasDatastore reports whether the datastore is mounted on the host.
func (h Host) HasDatastore(name string) bool { return slices.Contains(h.Datastores, name) }

// HasNetwork reports whether the host carries the network.
func (h Host) HasNetwork(name string) bool { return slices.Contains(h.Networks, name) }

// Hosts lists every host of the datacenter, sorted by name, with its
// cluster, pool, storage, networks, capacity and state. It costs a handful of
// property-collector calls whatever the number of hosts.
func (s *Session) Hosts(ctx context.Context) ([]Host, error) {
	v, err := s.containerView(ctx, s.Datacenter.Reference(),
		"HostSystem", "ComputeResource", "ClusterComputeResource", "Datastore", "Network", "DistributedVirtualPortgroup", "OpaqueNetwork")
	if err != nil {
		return nil, err
	}
	defer destroyView(v)

	var hosts []mo.HostSystem
	if err := v.Retrieve(ctx, []string{"HostSystem"}, []string{
		"name", "parent", "datastore", "network", "summary.hardware", "runtime.connectionState", "runtime.inMaintenanceMode",
	}, &hosts); err != nil {
		return nil, fmt.Errorf("vsphere: list hosts: %w", err)
	}
	var computes []mo.ComputeResource
	if err := v.Retrieve(ctx, []string{"ComputeResource", "ClusterComputeResource"}, []string{"name", "resourcePool"}, &computes); err != nil {
		return nil, fmt.Errorf("vsphere: list clusters: %w", err)
	}
	names, err := entityNames(ctx, v, "Datastore", "Network", "DistributedVirtualPortgroup", "OpaqueNetwork")
	if err != nil {
		return nil, err
	}

	byRef := map[types.ManagedObjectReference]mo.ComputeResource{}
	for _, c := range computes {
		byRef[c.Self] = c
	}
	out := make([]Host, 0, len(hosts))
	for _, h := range hosts {
		host := Host{
			Ref:             h.Self,
			Name:            h.Name,
			ConnectionState: h.Runtime.ConnectionState,
			InMaintenance:   h.Runtime.InMaintenanceMode,
		}
		if h.Parent != nil {
			host.ClusterRef = *h.Parent
			if c, ok := byRef[*h.Parent]; ok {
				if h.Parent.Type == "ClusterComputeResource" {
					host.Cluster = c.Name
				}
				if c.ResourcePool != nil {
					host.ResourcePool = *c.ResourcePool
				}
			}
		}
		if hw := h.Summary.Hardware; hw != nil {
			host.CPUCores, host.CPUThreads = int32(hw.NumCpuCores), int32(hw.NumCpuThreads)
			host.CPUMHz, host.MemoryBytes = hw.CpuMhz, hw.MemorySize
			host.CPUCapacityMHz = int64(hw.NumCpuCores) * int64(hw.CpuMhz)
		}
		for _, ref := range h.Datastore {
			if n, ok := names[ref]; ok {
				host.Datastores = append(host.Datastores, n)
			}
		}
		// vcsim (and a vCenter mid-change) can list a removed port group
		// in host.network; only networks that still exist are reported.
		for _, ref := range h.Network {
			if n, ok := names[ref]; ok && !slices.Contains(host.Networks, n) {
				host.Networks = append(host.Networks, n)
			}
		}
		slices.Sort(host.Datastores)
		slices.Sort(host.Networks)
		out = append(out, host)
	}
	slices.SortFunc(out, func(a, b Host) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// ResourcePoolOfCluster returns the root resource pool of a cluster.
func (s *Session) ResourcePoolOfCluster(ctx context.Context, cluster string) (*object.ResourcePool, error) {
	ref, err := s.findByName(ctx, "cluster", cluster, "ClusterComputeResource")
	if err != nil {
		return nil, err
	}
	var c mo.ClusterComputeResource
	if err := s.Client.RetrieveOne(ctx, ref, []string{"resourcePool"}, &c); err != nil {
		return nil, fmt.Errorf("vsphere: resource pool of cluster %s: %w", cluster, err)
	}
	if c.ResourcePool == nil {
		return nil, fmt.Errorf("vsphere: cluster %s has no resource pool: %w", cluster, ErrNotFound)
	}
	return object.NewResourcePool(s.Vim(), *c.ResourcePool), nil
}

// DatastoreByName returns a datastore of the datacenter, after checking the
// name. Use it before building any "[datastore] path" from outside input:
// vcsim crashes on a datastore that does not exist, and vCenter's own error
// names the path rather than the datastore.
func (s *Session) DatastoreByName(ctx context.Context, name string) (*object.Datastore, error) {
	if err := checkName("datastore", name); err != nil {
		return nil, err
	}
	ref, err := s.findByName(ctx, "datastore", name, "Datastore")
	if err != nil {
		return nil, err
	}
	ds := object.NewDatastore(s.Vim(), ref)
	ds.InventoryPath = s.Datacenter.InventoryPath + "/datastore/" + name
	return ds, nil
}

// DVSByName returns a distributed switch of the datacenter.
func (s *Session) DVSByName(ctx context.Context, name string) (*object.DistributedVirtualSwitch, error) {
	ref, err := s.findByName(ctx, "distributed switch", name, "VmwareDistributedVirtualSwitch", "DistributedVirtualSwitch")
	if err != nil {
		return nil, err
	}
	return object.NewDistributedVirtualSwitch(s.Vim(), ref), nil
}

// FindVM returns the VM with this name anywhere in the datacenter, nil (and
// no error) when there is none, and ErrDuplicateName when there are several.
// It reads every VM's name; when the folder is known, FindVMIn is one call.
func (s *Session) FindVM(ctx context.Context, name string) (*object.VirtualMachine, error) {
	if err := checkName("VM", name); err != nil {
		return nil, err
	}
	ref, err := s.findByName(ctx, "VM", name, "VirtualMachine")
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return object.NewVirtualMachine(s.Vim(), ref), nil
}

// FindVMIn returns the VM with this name directly in folder, nil (and no
// error) when there is none.
func (s *Session) FindVMIn(ctx context.Context, folder *object.Folder, name string) (*object.VirtualMachine, error) {
	if err := checkName("VM", name); err != nil {
		return nil, err
	}
	ref, err := object.NewSearchIndex(s.Vim()).FindChild(ctx, folder, name)
	if err != nil {
		return nil, fmt.Errorf("vsphere: find VM %s in %s: %w", name, folder.Reference().Value, err)
	}
	if ref == nil {
		return nil, nil
	}
	vm, ok := ref.(*object.VirtualMachine)
	if !ok {
		return nil, fmt.Errorf("vsphere: %s in %s is a %s, not a VM: %w", name, folder.Reference().Value, ref.Reference().Type, ErrDuplicateName)
	}
	return vm, nil
}

// EnsureFolder returns the VM folder at path (e.g. "podvisor/default"),
// relative to the datacenter's VM folder, creating what is missing. It is
// idempotent and safe to call concurrently: a folder created by someone else
// between the lookup and the create is used as is.
func (s *Session) EnsureFolder(ctx context.Context, path string) (*object.Folder, error) {
	parts, err := splitFolderPath(path)
	if err != nil {
		return nil, err
	}
	folders, err := s.Datacenter.Folders(ctx)
	if err != nil {
		return nil, fmt.Errorf("vsphere: folders of %s: %w", s.Datacenter.Name(), err)
	}
	index := object.NewSearchIndex(s.Vim())
	parent := folders.VmFolder
	for i, name := range parts {
		sub := strings.Join(parts[:i+1], "/")
		child, err := findFolder(ctx, index, parent, name, sub)
		if err != nil {
			return nil, err
		}
		if child == nil {
			child, err = parent.CreateFolder(ctx, name)
			if fault.Is(err, &types.DuplicateName{}) {
				child, err = findFolder(ctx, index, parent, name, sub)
				if err == nil && child == nil {
					err = fmt.Errorf("vsphere: folder %s: reported as duplicate but not found", sub)
				}
			}
			if err != nil {
				return nil, fmt.Errorf("vsphere: create folder %s: %w", sub, err)
			}
		}
		child.InventoryPath = parent.InventoryPath + "/" + name
		parent = child
	}
	return parent, nil
}

func findFolder(ctx context.Context, index *object.SearchIndex, parent *object.Folder, name, sub string) (*object.Folder, error) {
	ref, err := index.FindChild(ctx, parent, name)
	if err != nil {
		return nil, fmt.Errorf("vsphere: look up folder %s: %w", sub, err)
	}
	if ref == nil {
		return nil, nil
	}
	f, ok := ref.(*object.Folder)
	if !ok {
		return nil, fmt.Errorf("vsphere: folder path %s: %s is a %s, not a folder: %w", sub, name, ref.Reference().Type, ErrDuplicateName)
	}
	return f, nil
}

func splitFolderPath(path string) ([]string, error) {
	if strings.TrimSpace(path) == "" {
		return nil, fmt.Errorf("vsphere: folder path: empty: %w", ErrInvalidName)
	}
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for _, p := range parts {
		if err := checkName("folder", p); err != nil {
			return nil, fmt.Errorf("vsphere: folder path %q: %w", path, err)
		}
		if p == "." || p == ".." {
			return nil, fmt.Errorf("vsphere: folder path %q: %q is not a folder name: %w", path, p, ErrInvalidName)
		}
	}
	return parts, nil
}

// checkName applies vSphere's entity name rules that a caller can break:
// non-empty, at most 80 characters, and (for datastores) free of the
// characters that delimit datastore paths.
func checkName(kind, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%s name: empty: %w", kind, ErrInvalidName)
	case len(name) > 80:
		return fmt.Errorf("%s name %q: longer than 80 characters: %w", kind, name, ErrInvalidName)
	case name != strings.TrimSpace(name):
		return fmt.Errorf("%s name %q: leading or trailing space: %w", kind, name, ErrInvalidName)
	case kind == "datastore" && strings.ContainsAny(name, "[]/"):
		return fmt.Errorf("datastore name %q: must not contain '[', ']' or '/': %w", name, ErrInvalidName)
	}
	return nil
}

// findByName finds the one object of the given kinds named name in the
// datacenter.
func (s *Session) findByName(ctx context.Context, what, name string, kinds ...string) (types.ManagedObjectReference, error) {
	if err := checkName(what, name); err != nil {
		return types.ManagedObjectReference{}, fmt.Errorf("vsphere: %w", err)
	}
	v, err := s.containerView(ctx, s.Datacenter.Reference(), kinds...)
	if err != nil {
		return types.ManagedObjectReference{}, err
	}
	defer destroyView(v)
	names, err := entityNames(ctx, v, kinds...)
	if err != nil {
		return types.ManagedObjectReference{}, err
	}
	var found []types.ManagedObjectReference
	for ref, n := range names {
		if n == name {
			found = append(found, ref)
		}
	}
	switch len(found) {
	case 0:
		return types.ManagedObjectReference{}, fmt.Errorf("vsphere: %s %q in datacenter %s: %w", what, name, s.Datacenter.Name(), ErrNotFound)
	case 1:
		return found[0], nil
	}
	slices.SortFunc(found, func(a, b types.ManagedObjectReference) int { return strings.Compare(a.Value, b.Value) })
	return types.ManagedObjectReference{}, fmt.Errorf("vsphere: %s %q names %d objects %v: %w", what, name, len(found), found, ErrDuplicateName)
}

func (s *Session) containerView(ctx context.Context, root types.ManagedObjectReference, kinds ...string) (*view.ContainerView, error) {
	v, err := view.NewManager(s.Vim()).CreateContainerView(ctx, root, kinds, true)
	if err != nil {
		return nil, fmt.Errorf("vsphere: container view of %v: %w", kinds, err)
	}
	return v, nil
}

func destroyView(v *view.ContainerView) {
	// A fresh context: the caller's may be the reason we are leaving.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = v.Destroy(ctx)
}

// entityNames maps every object of the given kinds in the view to its name.
func entityNames(ctx context.Context, v *view.ContainerView, kinds ...string) (map[types.ManagedObjectReference]string, error) {
	var networkKinds, otherKinds []string
	for _, k := range kinds {
		if isNetworkKind(k) {
			networkKinds = append(networkKinds, k)
		} else {
			otherKinds = append(otherKinds, k)
		}
	}
	out := map[types.ManagedObjectReference]string{}
	if len(otherKinds) > 0 {
		var entities []mo.ManagedEntity
		if err := v.Retrieve(ctx, otherKinds, []string{"name"}, &entities); err != nil {
			return nil, fmt.Errorf("vsphere: names of %v: %w", otherKinds, err)
		}
		for _, e := range entities {
			out[e.Self] = e.Name
		}
	}
	if len(networkKinds) > 0 {
		// mo.Network declares its own Name, which shadows ManagedEntity's:
		// decoded as a ManagedEntity a network would have no name.
		var networks []mo.Network
		if err := v.Retrieve(ctx, networkKinds, []string{"name"}, &networks); err != nil {
			return nil, fmt.Errorf("vsphere: names of %v: %w", networkKinds, err)
		}
		for _, n := range networks {
			out[n.Self] = n.Name
		}
	}
	return out, nil
}

func isNetworkKind(kind string) bool {
	switch kind {
	case "Network", "DistributedVirtualPortgroup", "OpaqueNetwork":
		return true
	}
	return false
}

// Names reads the name of every object refs names, of any kind, in one
// round trip. The names are read as raw properties: decoded as a
// ManagedEntity, a Network or a port group (whose type declares its own
// Name field, shadowing the entity's) would have none.
func Names(ctx context.Context, c *vim25.Client, refs []types.ManagedObjectReference) (map[types.ManagedObjectReference]string, error) {
	out := make(map[types.ManagedObjectReference]string, len(refs))
	if len(refs) == 0 {
		return out, nil
	}
	var ocs []types.ObjectContent
	if err := property.DefaultCollector(c).Retrieve(ctx, refs, []string{"name"}, &ocs); err != nil {
		return nil, fmt.Errorf("vsphere: names of %v: %w", refs, err)
	}
	for _, oc := range ocs {
		for _, p := range oc.PropSet {
			if name, ok := p.Val.(string); ok && p.Name == "name" {
				out[oc.Obj] = name
			}
		}
	}
	return out, nil
}
