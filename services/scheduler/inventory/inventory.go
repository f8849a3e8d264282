// Package inventory observes the hosts of a vCenter: hardware, connection
// state, maintenance mode, cluster and its root resource pool, datastores,
// networks and custom attributes, as the vSphere API reports them.
//
// Watch streams changes with a property collector over a container view of
// every HostSystem (WaitForUpdatesEx, always with MaxWaitSeconds so that a
// stopped context or server is noticed). Updates are treated as hints: for
// every host an update names, the host is read again in full, so a repeated
// "enter", a lagging update or a partial change set all converge to what
// vCenter reports. List reads every host; the scheduler calls it at start and
// periodically (a full resync), because a watch can miss or lag.
package inventory

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sort"
	"sync"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// Labels every host carries, so that a nodeSelector can pin a pod to a host
// or a cluster without anyone tagging hosts. LabelHostname is Kubernetes'
// well-known label of a node's name: manifests written for Kubernetes pin
// a pod with it.
const (
	LabelHost     = "podvisor.io/host"
	LabelHostname = "kubernetes.io/hostname"
	LabelCluster  = "podvisor.io/cluster"
)

// hostProps are the HostSystem properties the scheduler reads.
var hostProps = []string{
	"name", "parent", "summary.hardware", "runtime.connectionState",
	"runtime.inMaintenanceMode", "datastore", "network", "customValue",
}

// Observation is one host as vCenter reports it.
type Observation struct {
	// Ref is the HostSystem moref value (host-21).
	Ref string
	// Info is the host; Cordoned is never set here (cordons are podvisor's,
	// not vCenter's).
	Info events.HostInfo
	// ResourcePool is the inventory path of the root resource pool of the
	// host's cluster (or standalone compute resource).
	ResourcePool string
}

// Source reads hosts from one vCenter.
type Source struct {
	c *vim25.Client

	mu       sync.Mutex
	names    map[types.ManagedObjectReference]string // datastores, networks
	clusters map[types.ManagedObjectReference]clusterInfo
	fields   map[int32]string // custom attribute key → name
	refNames map[string]string
}

type clusterInfo struct {
	name string
	pool string
}

// NewSource returns a source over a logged-in client.
func NewSource(c *vim25.Client) *Source {
	return &Source{c: c, names: map[types.ManagedObjectReference]string{},
		clusters: map[types.ManagedObjectReference]clusterInfo{}, refNames: map[string]string{}}
}

// List reads every host.
func (s *Source) List(ctx context.Context) ([]Observation, error) {
	m := view.NewManager(s.c)
	v, err := m.CreateContainerView(ctx, s.c.ServiceContent.RootFolder, []string{"HostSystem"}, true)
	if err != nil {
		return nil, fmt.Errorf("inventory: container view: %w", err)
	}
	defer v.Destroy(context.WithoutCancel(ctx))
	var hosts []mo.HostSystem
	if err := v.Retrieve(ctx, []string{"HostSystem"}, hostProps, &hosts); err != nil {
		return nil, fmt.Errorf("inventory: retrieve hosts: %w", err)
	}
	s.fields = nil // custom attribute definitions may have changed
	return s.observations(ctx, hosts)
}

// Read reads the hosts of the given moref values (host-21) in full, now:
// for a caller that cannot wait for the update stream. Hosts that vanished
// are skipped.
func (s *Source) Read(ctx context.Context, refs ...string) ([]Observation, error) {
	mors := make([]types.ManagedObjectReference, len(refs))
	for i, r := range refs {
		mors[i] = types.ManagedObjectReference{Type: "HostSystem", Value: r}
	}
	return s.read(ctx, mors)
}

// read reads some hosts in full; hosts that vanished are skipped.
func (s *Source) read(ctx context.Context, refs []types.ManagedObjectReference) ([]Observation, error) {
	pc := property.DefaultCollector(s.c)
	var hosts []mo.HostSystem
	if err := pc.Retrieve(ctx, refs, hostProps, &hosts); err != nil {
		// One vanished host fails the whole call: read them one by one.
		hosts = hosts[:0]
		for _, r := range refs {
			var h mo.HostSystem
			if err := pc.RetrieveOne(ctx, r, hostProps, &h); err == nil {
				hosts = append(hosts, h)
			}
		}
	}
	return s.observations(ctx, hosts)
}

func (s *Source) observations(ctx context.Context, hosts []mo.HostSystem) ([]Observation, error) {
	out := make([]Observation, 0, len(hosts))
	for i := range hosts {
		o, err := s.observe(ctx, &hosts[i])
		if err != nil {
			return nil, err
		}
		out = append(out, o)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Info.Name < out[j].Info.Name })
	return out, nil
}

func (s *Source) observe(ctx context.Context, h *mo.HostSystem) (Observation, error) {
	s.mu.Lock()
	s.refNames[h.Self.Value] = h.Name
	s.mu.Unlock()
	o := Observation{Ref: h.Self.Value}
	info := &o.Info
	info.Name = h.Name
	info.ConnectionState = string(h.Runtime.ConnectionState)
	if info.ConnectionState == "" {
		info.ConnectionState = events.HostDisconnected
	}
	info.Maintenance = h.Runtime.InMaintenanceMode
	if hw := h.Summary.Hardware; hw != nil {
		info.CPUCores = int32(hw.NumCpuCores)
		info.CPUMHz = hw.CpuMhz
		info.MemoryBytes = hw.MemorySize
	}
	if h.Parent != nil {
		ci, err := s.cluster(ctx, *h.Parent)
		if err != nil {
			return o, err
		}
		info.Cluster, o.ResourcePool = ci.name, ci.pool
	}
	var err error
	if info.Datastores, err = s.namesOf(ctx, h.Datastore); err != nil {
		return o, err
	}
	if info.Networks, err = s.namesOf(ctx, h.Network); err != nil {
		return o, err
	}
	info.Labels = map[string]string{LabelHost: labelValue(info.Name), LabelHostname: labelValue(info.Name), LabelCluster: labelValue(info.Cluster)}
	if len(h.CustomValue) > 0 {
		fields, err := s.customFields(ctx)
		if err != nil {
			return o, err
		}
		for _, cv := range h.CustomValue {
			sv, ok := cv.(*types.CustomFieldStringValue)
			if !ok {
				continue
			}
			name := fields[sv.Key]
			// Attributes that are not valid Kubernetes labels are skipped
			// rather than mangled: a nodeSelector could never name them.
			if name == "" || len(validation.IsQualifiedName(name)) > 0 || len(validation.IsValidLabelValue(sv.Value)) > 0 {
				continue
			}
			info.Labels[name] = sv.Value
		}
	}
	return o, nil
}

// labelValue makes a name usable as a label value (63 characters of
// alphanumerics, '-', '_' or '.'); the simulator's and most vCenter names
// already are.
func labelValue(s string) string {
	if len(validation.IsValidLabelValue(s)) == 0 {
		return s
	}
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			b[i] = '_'
		}
	}
	if len(b) > 63 {
		b = b[:63]
	}
	return string(b)
}

func (s *Source) cluster(ctx context.Context, ref types.ManagedObjectReference) (clusterInfo, error) {
	s.mu.Lock()
	ci, ok := s.clusters[ref]
	s.mu.Unlock()
	if ok {
		return ci, nil
	}
	var cr mo.ComputeResource
	if err := property.DefaultCollector(s.c).RetrieveOne(ctx, ref, []string{"name", "resourcePool"}, &cr); err != nil {
		return ci, fmt.Errorf("inventory: read compute resource %s: %w", ref, err)
	}
	ci.name = cr.Name
	if cr.ResourcePool != nil {
		p, err := find.InventoryPath(ctx, s.c, *cr.ResourcePool)
		if err != nil {
			return ci, fmt.Errorf("inventory: path of %s: %w", cr.ResourcePool, err)
		}
		ci.pool = p
	}
	s.mu.Lock()
	s.clusters[ref] = ci
	s.mu.Unlock()
	return ci, nil
}

func (s *Source) namesOf(ctx context.Context, refs []types.ManagedObjectReference) ([]string, error) {
	var missing []types.ManagedObjectReference
	s.mu.Lock()
	for _, r := range refs {
		if _, ok := s.names[r]; !ok {
			missing = append(missing, r)
		}
	}
	s.mu.Unlock()
	if len(missing) > 0 {
		names, err := vsphere.Names(ctx, s.c, missing)
		if err != nil {
			return nil, fmt.Errorf("inventory: %w", err)
		}
		s.mu.Lock()
		maps.Copy(s.names, names)
		s.mu.Unlock()
	}
	out := make([]string, 0, len(refs))
	seen := map[string]bool{}
	s.mu.Lock()
	for _, r := range refs {
		if n := s.names[r]; n != "" && !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	s.mu.Unlock()
	sort.Strings(out)
	return out, nil
}

func (s *Source) customFields(ctx context.Context) (map[int32]string, error) {
	s.mu.Lock()
	f := s.fields
	s.mu.Unlock()
	if f != nil {
		return f, nil
	}
	m, err := object.GetCustomFieldsManager(s.c)
	if err != nil {
		return nil, fmt.Errorf("inventory: custom fields manager: %w", err)
	}
	defs, err := m.Field(ctx)
	if err != nil {
		return nil, fmt.Errorf("inventory: custom fields: %w", err)
	}
	f = map[int32]string{}
	for _, d := range defs {
		f[d.Key] = d.Name
	}
	s.mu.Lock()
	s.fields = f
	s.mu.Unlock()
	return f, nil
}

// Update is one batch of host changes from Watch.
type Update struct {
	// Changed hosts, read in full after the change.
	Changed []Observation
	// Removed host names (left the inventory).
	Removed []string
}

// waitSeconds bounds each WaitForUpdatesEx call: NOTES.md measured that a
// wait without MaxWaitSeconds can hang a server's shutdown.
const waitSeconds = 5

// Watch streams host changes to fn until ctx ends. The first batch holds
// every host (the property collector "enters" each one). It returns nil
// when ctx ends and an error when the watch breaks (the caller restarts it
// after a pause).
func (s *Source) Watch(ctx context.Context, fn func(Update)) error {
	m := view.NewManager(s.c)
	v, err := m.CreateContainerView(ctx, s.c.ServiceContent.RootFolder, []string{"HostSystem"}, true)
	if err != nil {
		return fmt.Errorf("inventory: container view: %w", err)
	}
	defer v.Destroy(context.WithoutCancel(ctx))
	pc, err := property.DefaultCollector(s.c).Create(ctx)
	if err != nil {
		return fmt.Errorf("inventory: property collector: %w", err)
	}
	defer pc.Destroy(context.WithoutCancel(ctx))
	_, err = pc.CreateFilter(ctx, types.CreateFilter{Spec: types.PropertyFilterSpec{
		ObjectSet: []types.ObjectSpec{{Obj: v.Reference(), Skip: types.NewBool(true),
			SelectSet: []types.BaseSelectionSpec{&types.TraversalSpec{Type: "ContainerView", Path: "view"}}}},
		PropSet: []types.PropertySpec{{Type: "HostSystem", PathSet: hostProps}},
	}})
	if err != nil {
		return fmt.Errorf("inventory: property filter: %w", err)
	}
	req := types.WaitForUpdatesEx{This: pc.Reference(), Options: &types.WaitOptions{MaxWaitSeconds: types.NewInt32(waitSeconds)}}
	for {
		if ctx.Err() != nil {
			return nil
		}
		res, err := methods.WaitForUpdatesEx(ctx, s.c, &req)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, context.Canceled) {
				return nil
			}
			return fmt.Errorf("inventory: wait for updates: %w", err)
		}
		set := res.Returnval
		if set == nil {
			continue
		}
		req.Version = set.Version
		var changed []types.ManagedObjectReference
		var removed []string
		seen := map[types.ManagedObjectReference]bool{}
		for _, fs := range set.FilterSet {
			for _, ou := range fs.ObjectSet {
				if ou.Kind == types.ObjectUpdateKindLeave {
					s.mu.Lock()
					if n := s.refNames[ou.Obj.Value]; n != "" {
						removed = append(removed, n)
					}
					s.mu.Unlock()
					continue
				}
				if !seen[ou.Obj] {
					seen[ou.Obj] = true
					changed = append(changed, ou.Obj)
				}
			}
		}
		up := Update{Removed: removed}
		if len(changed) > 0 {
			readCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
			up.Changed, err = s.read(readCtx, changed)
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
		if len(up.Changed) > 0 || len(up.Removed) > 0 {
			fn(up)
		}
	}
}
