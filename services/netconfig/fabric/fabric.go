package fabric

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/task"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// ErrSwitchNotFound is returned (wrapped) for a distributed switch that does
// not exist.
var ErrSwitchNotFound = errors.New("distributed switch not found")

// Connection states of a host as vSphere reports them.
const (
	Connected     = string(types.HostSystemConnectionStateConnected)
	NotResponding = string(types.HostSystemConnectionStateNotResponding)
	Disconnected  = string(types.HostSystemConnectionStateDisconnected)
)

// Host is a host of the datacenter as the fabric sees it.
type Host struct {
	Name    string
	Cluster string
	Ref     types.ManagedObjectReference
	// ConnectionState is connected, notResponding or disconnected.
	ConnectionState string
	Maintenance     bool
}

// PortGroupSpec is the desired configuration of a network's port group.
type PortGroupSpec struct {
	// Name of the port group (pv-<network>).
	Name string
	// VLAN ID, 0 for untagged.
	VLAN int32
	// Security policy; nil means "inherit the switch's setting".
	AllowPromiscuous, ForgedTransmits, MACChanges *bool
	// MTU the network needs; the switch's maximum MTU is raised to it.
	MTU int32
	// Description is stored on the port group. network-config writes the
	// network name and version there so that a read-back of vCenter alone
	// tells which version a port group carries.
	Description string
}

// PortGroup is a port group as read back from vCenter.
type PortGroup struct {
	Ref  types.ManagedObjectReference
	Name string
	// Key is the port group's key on its switch (what hosts know it by).
	Key         string
	Switch      types.ManagedObjectReference
	VLAN        int32
	Description string
	// Security policy as configured on the port group; nil = inherited.
	AllowPromiscuous, ForgedTransmits, MACChanges *bool
}

// Matches reports whether the port group carries spec's settings.
func (pg PortGroup) Matches(spec PortGroupSpec) bool {
	return pg.Name == spec.Name && pg.VLAN == spec.VLAN && pg.Description == spec.Description &&
		sameBool(pg.AllowPromiscuous, spec.AllowPromiscuous) &&
		sameBool(pg.ForgedTransmits, spec.ForgedTransmits) &&
		sameBool(pg.MACChanges, spec.MACChanges)
}

func sameBool(a, b *bool) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

// Fabric reads and changes distributed switches, their member hosts and their
// port groups through the vSphere API. It is safe for concurrent use: changes
// to one switch are serialized in-process (vCenter rejects concurrent
// reconfigurations of one switch with ConcurrentAccess; vcsim does not check),
// while work on different switches and per-host reads run in parallel.
type Fabric struct {
	c  *vim25.Client
	dc *object.Datacenter

	mu       sync.Mutex
	switchMu map[string]*sync.Mutex
}

// New returns a fabric over the datacenter.
func New(c *vim25.Client, dc *object.Datacenter) *Fabric {
	return &Fabric{c: c, dc: dc, switchMu: map[string]*sync.Mutex{}}
}

func (f *Fabric) lockSwitch(name string) func() {
	f.mu.Lock()
	m, ok := f.switchMu[name]
	if !ok {
		m = &sync.Mutex{}
		f.switchMu[name] = m
	}
	f.mu.Unlock()
	m.Lock()
	return m.Unlock
}

// retrieve loads properties of every object of a type in the datacenter.
func (f *Fabric) retrieve(ctx context.Context, kind string, props []string, dst any) error {
	m := view.NewManager(f.c)
	v, err := m.CreateContainerView(ctx, f.dc.Reference(), []string{kind}, true)
	if err != nil {
		return fmt.Errorf("view %s: %w", kind, err)
	}
	defer v.Destroy(context.WithoutCancel(ctx))
	if err := v.Retrieve(ctx, []string{kind}, props, dst); err != nil {
		return fmt.Errorf("retrieve %s: %w", kind, err)
	}
	return nil
}

// Hosts lists the datacenter's hosts with their cluster and state, sorted by
// name.
func (f *Fabric) Hosts(ctx context.Context) ([]Host, error) {
	var hosts []mo.HostSystem
	if err := f.retrieve(ctx, "HostSystem", []string{"name", "parent", "runtime.connectionState", "runtime.inMaintenanceMode"}, &hosts); err != nil {
		return nil, err
	}
	parents := map[types.ManagedObjectReference]string{}
	var refs []types.ManagedObjectReference
	for _, h := range hosts {
		if h.Parent != nil && h.Parent.Type == "ClusterComputeResource" {
			refs = append(refs, *h.Parent)
		}
	}
	if len(refs) > 0 {
		var clusters []mo.ClusterComputeResource
		if err := property.DefaultCollector(f.c).Retrieve(ctx, dedupe(refs), []string{"name"}, &clusters); err != nil {
			return nil, fmt.Errorf("retrieve clusters: %w", err)
		}
		for _, c := range clusters {
			parents[c.Self] = c.Name
		}
	}
	out := make([]Host, 0, len(hosts))
	for _, h := range hosts {
		host := Host{Name: h.Name, Ref: h.Self, ConnectionState: string(h.Runtime.ConnectionState), Maintenance: h.Runtime.InMaintenanceMode}
		if h.Parent != nil {
			host.Cluster = parents[*h.Parent]
		}
		out = append(out, host)
	}
	slices.SortFunc(out, func(a, b Host) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func dedupe(refs []types.ManagedObjectReference) []types.ManagedObjectReference {
	seen := map[types.ManagedObjectReference]bool{}
	var out []types.ManagedObjectReference
	for _, r := range refs {
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	return out
}

// HostConnection reads a host's connection state, the way the management
// connectivity probe sees whether vCenter can still reach the host.
func (f *Fabric) HostConnection(ctx context.Context, ref types.ManagedObjectReference) (string, error) {
	var h mo.HostSystem
	if err := property.DefaultCollector(f.c).RetrieveOne(ctx, ref, []string{"runtime.connectionState"}, &h); err != nil {
		return "", fmt.Errorf("read connection state of %s: %w", ref.Value, err)
	}
	return string(h.Runtime.ConnectionState), nil
}

// Switch is a distributed switch as read back from vCenter.
type Switch struct {
	Ref     types.ManagedObjectReference
	Name    string
	Members []types.ManagedObjectReference
	// MaxMTU is filled in by EnsureSwitch (0 from FindSwitch).
	MaxMTU int32
}

// IsMember reports whether a host is a member of the switch.
func (s *Switch) IsMember(host types.ManagedObjectReference) bool {
	return slices.Contains(s.Members, host)
}

// FindSwitch returns a distributed switch by name; ok is false when absent.
func (f *Fabric) FindSwitch(ctx context.Context, name string) (Switch, bool, error) {
	// Names and members only: a switch's config lists every member's
	// settings and is large on a big site; MaxMTU is read when needed.
	var all []mo.DistributedVirtualSwitch
	if err := f.retrieve(ctx, "DistributedVirtualSwitch", []string{"name", "summary.hostMember"}, &all); err != nil {
		return Switch{}, false, err
	}
	for _, s := range all {
		if s.Name == name {
			return Switch{Ref: s.Self, Name: s.Name, Members: s.Summary.HostMember}, true, nil
		}
	}
	return Switch{}, false, nil
}

// withMTU fills in the switch's maximum MTU.
func (f *Fabric) withMTU(ctx context.Context, sw Switch) (Switch, error) {
	var s mo.DistributedVirtualSwitch
	if err := property.DefaultCollector(f.c).RetrieveOne(ctx, sw.Ref, []string{"config"}, &s); err != nil {
		return sw, fmt.Errorf("read switch %s config: %w", sw.Name, err)
	}
	if cfg, ok := s.Config.(*types.VMwareDVSConfigInfo); ok {
		sw.MaxMTU = cfg.MaxMtu
	}
	return sw, nil
}

// EnsureSwitch returns the named switch, creating it (with the given maximum
// MTU) in the datacenter's network folder when absent.
func (f *Fabric) EnsureSwitch(ctx context.Context, name string, mtu int32) (Switch, error) {
	defer f.lockSwitch(name)()
	sw, ok, err := f.FindSwitch(ctx, name)
	if err != nil {
		return sw, err
	}
	if ok {
		return f.withMTU(ctx, sw)
	}
	folders, err := f.dc.Folders(ctx)
	if err != nil {
		return Switch{}, fmt.Errorf("datacenter folders: %w", err)
	}
	t, err := folders.NetworkFolder.CreateDVS(ctx, types.DVSCreateSpec{
		ConfigSpec: &types.VMwareDVSConfigSpec{
			DVSConfigSpec: types.DVSConfigSpec{Name: name, Description: "podvisor network scope"},
			MaxMtu:        mtu,
		},
	})
	if err != nil {
		return Switch{}, fmt.Errorf("create switch %s: %w", name, err)
	}
	if _, err := t.WaitForResult(ctx, nil); err != nil {
		return Switch{}, fmt.Errorf("create switch %s: %w", name, err)
	}
	sw, ok, err = f.FindSwitch(ctx, name)
	if err == nil && !ok {
		err = fmt.Errorf("switch %s: %w after creating it", name, ErrSwitchNotFound)
	}
	if err != nil {
		return sw, err
	}
	return f.withMTU(ctx, sw)
}

// existingSwitch is FindSwitch for a switch that must exist: a missing
// one is ErrSwitchNotFound, naming it.
func (f *Fabric) existingSwitch(ctx context.Context, name string) (Switch, error) {
	sw, ok, err := f.FindSwitch(ctx, name)
	if err == nil && !ok {
		err = fmt.Errorf("switch %s: %w", name, ErrSwitchNotFound)
	}
	return sw, err
}

// RaiseMTU sets the switch's maximum MTU to at least mtu.
func (f *Fabric) RaiseMTU(ctx context.Context, name string, mtu int32) error {
	defer f.lockSwitch(name)()
	sw, err := f.existingSwitch(ctx, name)
	if err != nil {
		return err
	}
	if sw, err = f.withMTU(ctx, sw); err != nil {
		return err
	}
	if sw.MaxMTU >= mtu {
		return nil
	}
	return f.reconfigure(ctx, sw, &types.VMwareDVSConfigSpec{MaxMtu: mtu})
}

// Join makes a host a member of the switch. It reports whether the host had
// to join (false: it already was a member).
func (f *Fabric) Join(ctx context.Context, switchName string, host types.ManagedObjectReference) (bool, error) {
	return f.membership(ctx, switchName, host, types.ConfigSpecOperationAdd)
}

// Leave removes a host from the switch. It reports whether the host had to
// leave (false: it was not a member).
func (f *Fabric) Leave(ctx context.Context, switchName string, host types.ManagedObjectReference) (bool, error) {
	return f.membership(ctx, switchName, host, types.ConfigSpecOperationRemove)
}

// JoinAll makes every listed host a member of the switch in one
// reconfiguration (one switch-wide change instead of one per host, which
// vCenter would serialize anyway). It returns the hosts that joined.
func (f *Fabric) JoinAll(ctx context.Context, switchName string, hosts []types.ManagedObjectReference) ([]types.ManagedObjectReference, error) {
	defer f.lockSwitch(switchName)()
	sw, err := f.existingSwitch(ctx, switchName)
	if err != nil {
		return nil, err
	}
	spec := &types.VMwareDVSConfigSpec{}
	var joined []types.ManagedObjectReference
	for _, h := range hosts {
		if sw.IsMember(h) || slices.Contains(joined, h) {
			continue
		}
		joined = append(joined, h)
		spec.Host = append(spec.Host, types.DistributedVirtualSwitchHostMemberConfigSpec{Operation: string(types.ConfigSpecOperationAdd), Host: h})
	}
	if len(joined) == 0 {
		return nil, nil
	}
	if err := f.reconfigure(ctx, sw, spec); err != nil {
		return nil, fmt.Errorf("add %d hosts to switch %s: %w", len(joined), switchName, err)
	}
	return joined, nil
}

func (f *Fabric) membership(ctx context.Context, switchName string, host types.ManagedObjectReference, op types.ConfigSpecOperation) (bool, error) {
	defer f.lockSwitch(switchName)()
	sw, err := f.existingSwitch(ctx, switchName)
	if err != nil {
		return false, err
	}
	member := sw.IsMember(host)
	if (op == types.ConfigSpecOperationAdd) == member {
		return false, nil
	}
	spec := &types.VMwareDVSConfigSpec{DVSConfigSpec: types.DVSConfigSpec{
		Host: []types.DistributedVirtualSwitchHostMemberConfigSpec{{Operation: string(op), Host: host}},
	}}
	if err := f.reconfigure(ctx, sw, spec); err != nil {
		return false, fmt.Errorf("%s host %s on switch %s: %w", op, host.Value, switchName, err)
	}
	return true, nil
}

// reconfigure applies a switch spec with the switch's current config version
// (vCenter rejects a stale one with ConcurrentAccess).
func (f *Fabric) reconfigure(ctx context.Context, sw Switch, spec *types.VMwareDVSConfigSpec) error {
	var cur mo.DistributedVirtualSwitch
	if err := property.DefaultCollector(f.c).RetrieveOne(ctx, sw.Ref, []string{"config.configVersion"}, &cur); err != nil {
		return fmt.Errorf("read switch %s config version: %w", sw.Name, err)
	}
	if cur.Config != nil {
		spec.ConfigVersion = cur.Config.GetDVSConfigInfo().ConfigVersion
	}
	t, err := object.NewDistributedVirtualSwitch(f.c, sw.Ref).Reconfigure(ctx, spec)
	if err != nil {
		return err
	}
	return t.Wait(ctx)
}

// PortGroups lists every distributed port group of the datacenter by name.
func (f *Fabric) PortGroups(ctx context.Context) (map[string]PortGroup, error) {
	var all []mo.DistributedVirtualPortgroup
	if err := f.retrieve(ctx, "DistributedVirtualPortgroup", []string{"name", "config"}, &all); err != nil {
		return nil, err
	}
	out := make(map[string]PortGroup, len(all))
	for _, p := range all {
		out[p.Name] = portGroupOf(p)
	}
	return out, nil
}

// FindPortGroup returns a port group by name; ok is false when absent.
func (f *Fabric) FindPortGroup(ctx context.Context, name string) (PortGroup, bool, error) {
	all, err := f.PortGroups(ctx)
	if err != nil {
		return PortGroup{}, false, err
	}
	pg, ok := all[name]
	return pg, ok, nil
}

func portGroupOf(p mo.DistributedVirtualPortgroup) PortGroup {
	pg := PortGroup{Ref: p.Self, Name: p.Name, Key: p.Config.Key, Description: p.Config.Description}
	if p.Config.DistributedVirtualSwitch != nil {
		pg.Switch = *p.Config.DistributedVirtualSwitch
	}
	if s, ok := p.Config.DefaultPortConfig.(*types.VMwareDVSPortSetting); ok && s != nil {
		if v, ok := s.Vlan.(*types.VmwareDistributedVirtualSwitchVlanIdSpec); ok && v != nil {
			pg.VLAN = v.VlanId
		}
		if sp := s.SecurityPolicy; sp != nil {
			pg.AllowPromiscuous = explicit(sp.AllowPromiscuous)
			pg.ForgedTransmits = explicit(sp.ForgedTransmits)
			pg.MACChanges = explicit(sp.MacChanges)
		}
	}
	return pg
}

// explicit turns a vSphere BoolPolicy into "set on this object" (non-nil) or
// "inherited from the switch" (nil).
func explicit(p *types.BoolPolicy) *bool {
	if p == nil || p.Value == nil || p.Inherited {
		return nil
	}
	v := *p.Value
	return &v
}

func boolPolicy(v *bool) *types.BoolPolicy {
	if v == nil {
		return &types.BoolPolicy{InheritablePolicy: types.InheritablePolicy{Inherited: true}}
	}
	return &types.BoolPolicy{InheritablePolicy: types.InheritablePolicy{Inherited: false}, Value: types.NewBool(*v)}
}

func configSpec(spec PortGroupSpec, version string) types.DVPortgroupConfigSpec {
	return types.DVPortgroupConfigSpec{
		ConfigVersion: version,
		Name:          spec.Name,
		Description:   spec.Description,
		Type:          string(types.DistributedVirtualPortgroupPortgroupTypeEarlyBinding),
		NumPorts:      128,
		AutoExpand:    types.NewBool(true),
		DefaultPortConfig: &types.VMwareDVSPortSetting{
			Vlan: &types.VmwareDistributedVirtualSwitchVlanIdSpec{VlanId: spec.VLAN},
			SecurityPolicy: &types.DVSSecurityPolicy{
				AllowPromiscuous: boolPolicy(spec.AllowPromiscuous),
				ForgedTransmits:  boolPolicy(spec.ForgedTransmits),
				MacChanges:       boolPolicy(spec.MACChanges),
			},
		},
		// Ports may override the security policy (switch → network → port).
		Policy: &types.VMwareDVSPortgroupPolicy{
			DVPortgroupPolicy:             types.DVPortgroupPolicy{BlockOverrideAllowed: true, PortConfigResetAtDisconnect: true},
			SecurityPolicyOverrideAllowed: true,
		},
	}
}

// EnsurePortGroup makes the port group exist on the switch with spec's
// settings and reports whether anything changed. A port group of that name
// on another switch is removed first (names are unique per datacenter, and a
// network whose scope changed moves to the switch of its new scope). A
// reconfiguration always sends the whole spec: a partial one would wipe the
// name and VLAN.
func (f *Fabric) EnsurePortGroup(ctx context.Context, switchName string, spec PortGroupSpec) (bool, error) {
	defer f.lockSwitch(switchName)()
	sw, err := f.existingSwitch(ctx, switchName)
	if err != nil {
		return false, err
	}
	cur, exists, err := f.FindPortGroup(ctx, spec.Name)
	if err != nil {
		return false, err
	}
	if exists && cur.Switch != sw.Ref {
		if err := f.destroy(ctx, cur); err != nil {
			return false, err
		}
		exists = false
	}
	if exists {
		if cur.Matches(spec) {
			return false, nil
		}
		var p mo.DistributedVirtualPortgroup
		if err := property.DefaultCollector(f.c).RetrieveOne(ctx, cur.Ref, []string{"config.configVersion"}, &p); err != nil {
			return false, fmt.Errorf("read port group %s: %w", spec.Name, err)
		}
		t, err := object.NewDistributedVirtualPortgroup(f.c, cur.Ref).Reconfigure(ctx, configSpec(spec, p.Config.ConfigVersion))
		if err == nil {
			err = t.Wait(ctx)
		}
		if err != nil {
			return false, fmt.Errorf("reconfigure port group %s: %w", spec.Name, err)
		}
		return true, nil
	}
	t, err := object.NewDistributedVirtualSwitch(f.c, sw.Ref).AddPortgroup(ctx, []types.DVPortgroupConfigSpec{configSpec(spec, "")})
	if err == nil {
		err = t.Wait(ctx)
	}
	if err != nil {
		return false, fmt.Errorf("add port group %s to switch %s: %w", spec.Name, switchName, err)
	}
	return true, nil
}

// RemovePortGroup destroys the named port group; false when it was absent.
func (f *Fabric) RemovePortGroup(ctx context.Context, name string) (bool, error) {
	cur, ok, err := f.FindPortGroup(ctx, name)
	if err != nil || !ok {
		return false, err
	}
	return true, f.destroy(ctx, cur)
}

func (f *Fabric) destroy(ctx context.Context, pg PortGroup) error {
	t, err := object.NewDistributedVirtualPortgroup(f.c, pg.Ref).Destroy(ctx)
	if err == nil {
		err = t.Wait(ctx)
	}
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("remove port group %s: %w", pg.Name, err)
	}
	return nil
}

// isNotFound reports a ManagedObjectNotFound fault: the object is already
// gone, which is what a removal wanted.
func isNotFound(err error) bool {
	var te task.Error
	if errors.As(err, &te) {
		_, ok := te.Fault().(*types.ManagedObjectNotFound)
		return ok
	}
	return strings.Contains(err.Error(), "ManagedObjectNotFound") || strings.Contains(err.Error(), "has already been deleted")
}

// HostView is what one host carries, read back from vCenter: its state and
// the port groups on its networks.
type HostView struct {
	Host
	// Networks are the references of every network on the host.
	Networks []types.ManagedObjectReference
}

// ObserveHost reads one host's connection state and networks.
func (f *Fabric) ObserveHost(ctx context.Context, ref types.ManagedObjectReference) (HostView, error) {
	var h mo.HostSystem
	if err := property.DefaultCollector(f.c).RetrieveOne(ctx, ref, []string{"name", "runtime.connectionState", "runtime.inMaintenanceMode", "network"}, &h); err != nil {
		return HostView{}, fmt.Errorf("read host %s: %w", ref.Value, err)
	}
	return HostView{
		Host:     Host{Name: h.Name, Ref: h.Self, ConnectionState: string(h.Runtime.ConnectionState), Maintenance: h.Runtime.InMaintenanceMode},
		Networks: h.Network,
	}, nil
}

// Carries reports whether the host has the port group on one of its
// networks. Callers combine it with switch membership: vcsim leaves a stale
// network reference behind on a host that left a switch.
func (v HostView) Carries(pg types.ManagedObjectReference) bool {
	return slices.Contains(v.Networks, pg)
}
