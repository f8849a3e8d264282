package fabric

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// KindSwitchConfig is the kind of an exported switch configuration.
const KindSwitchConfig = "DistributedSwitchConfig"

// SwitchConfigAPIVersion is the apiVersion of an exported switch
// configuration.
const SwitchConfigAPIVersion = "podvisor.io/v1alpha1"

// SwitchConfig is a distributed switch as vCenter holds it, read back from
// the switch and its port groups (not from podvisor's records): what
// ExportSwitch writes to a file and ImportSwitch applies to a new or an
// existing switch. vSphere's own DVSManagerExportEntity is not used: the
// simulator does not implement it, and its blob can only be read back by
// vCenter; this document is readable, diffable and applies anywhere.
type SwitchConfig struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	// Name of the switch it was read from.
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// MaxMTU of the switch (0: vCenter's default).
	MaxMTU int32 `json:"maxMTU,omitempty"`
	// ConfigVersion is vCenter's configuration version at export time
	// (informational: a switch's version moves with every change).
	ConfigVersion string `json:"configVersion,omitempty"`
	// Hosts are the member hosts' names, sorted.
	Hosts []string `json:"hosts,omitempty"`
	// PortGroups are the switch's port groups, sorted by name (the uplink
	// port group vCenter makes with a switch is left out: it is not
	// configured, it comes with the switch).
	PortGroups []PortGroupConfig `json:"portGroups,omitempty"`
	// ExportedAt is when the switch was read.
	ExportedAt time.Time `json:"exportedAt"`
}

// PortGroupConfig is one port group of an exported switch.
type PortGroupConfig struct {
	Name        string `json:"name"`
	VLAN        int32  `json:"vlan"`
	Description string `json:"description,omitempty"`
	// Security policy set on the port group; absent = inherited from the
	// switch.
	AllowPromiscuous *bool `json:"allowPromiscuous,omitempty"`
	ForgedTransmits  *bool `json:"forgedTransmits,omitempty"`
	MACChanges       *bool `json:"macChanges,omitempty"`
}

// Spec is the port group spec that re-creates the exported port group.
func (p PortGroupConfig) Spec() PortGroupSpec {
	return PortGroupSpec{Name: p.Name, VLAN: p.VLAN, Description: p.Description,
		AllowPromiscuous: p.AllowPromiscuous, ForgedTransmits: p.ForgedTransmits, MACChanges: p.MACChanges}
}

// Validate checks a switch configuration read from a file; every error
// names its field.
func (c *SwitchConfig) Validate() error {
	var errs []error
	if c.APIVersion != SwitchConfigAPIVersion {
		errs = append(errs, fmt.Errorf("apiVersion %q: want %s", c.APIVersion, SwitchConfigAPIVersion))
	}
	if c.Kind != KindSwitchConfig {
		errs = append(errs, fmt.Errorf("kind %q: want %s", c.Kind, KindSwitchConfig))
	}
	if strings.TrimSpace(c.Name) == "" {
		errs = append(errs, errors.New("name: required"))
	}
	if c.MaxMTU != 0 && (c.MaxMTU < 1280 || c.MaxMTU > 9000) {
		errs = append(errs, fmt.Errorf("maxMTU %d: must be between 1280 and 9000", c.MaxMTU))
	}
	seen := map[string]bool{}
	for i, pg := range c.PortGroups {
		switch {
		case strings.TrimSpace(pg.Name) == "":
			errs = append(errs, fmt.Errorf("portGroups[%d].name: required", i))
		case seen[pg.Name]:
			errs = append(errs, fmt.Errorf("portGroups[%d].name %q: duplicate", i, pg.Name))
		}
		seen[pg.Name] = true
		if pg.VLAN < 0 || pg.VLAN > 4094 {
			errs = append(errs, fmt.Errorf("portGroups[%d].vlan %d: must be between 0 and 4094", i, pg.VLAN))
		}
	}
	return errors.Join(errs...)
}

// ExportSwitch reads a switch's realized configuration back from vCenter:
// its settings, members and port groups as vCenter has them now.
func (f *Fabric) ExportSwitch(ctx context.Context, name string) (*SwitchConfig, error) {
	sw, err := f.existingSwitch(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("export %w", err)
	}
	var s mo.DistributedVirtualSwitch
	if err := property.DefaultCollector(f.c).RetrieveOne(ctx, sw.Ref, []string{"config"}, &s); err != nil {
		return nil, fmt.Errorf("export switch %s: read config: %w", name, err)
	}
	out := &SwitchConfig{APIVersion: SwitchConfigAPIVersion, Kind: KindSwitchConfig, Name: name, ExportedAt: time.Now().UTC()}
	var uplinks []types.ManagedObjectReference
	if s.Config != nil {
		info := s.Config.GetDVSConfigInfo()
		out.Description, out.ConfigVersion = info.Description, info.ConfigVersion
		uplinks = info.UplinkPortgroup
		if v, ok := s.Config.(*types.VMwareDVSConfigInfo); ok {
			out.MaxMTU = v.MaxMtu
		}
	}
	hosts, err := f.Hosts(ctx)
	if err != nil {
		return nil, err
	}
	for _, h := range hosts {
		if sw.IsMember(h.Ref) {
			out.Hosts = append(out.Hosts, h.Name)
		}
	}
	var all []mo.DistributedVirtualPortgroup
	if err := f.retrieve(ctx, "DistributedVirtualPortgroup", []string{"name", "config"}, &all); err != nil {
		return nil, err
	}
	for _, p := range all {
		pg := portGroupOf(p)
		if pg.Switch != sw.Ref || isUplink(p, uplinks) {
			continue
		}
		out.PortGroups = append(out.PortGroups, PortGroupConfig{Name: pg.Name, VLAN: pg.VLAN, Description: pg.Description,
			AllowPromiscuous: pg.AllowPromiscuous, ForgedTransmits: pg.ForgedTransmits, MACChanges: pg.MACChanges})
	}
	slices.SortFunc(out.PortGroups, func(a, b PortGroupConfig) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// isUplink reports the port group of a switch's uplinks, which comes with
// the switch: listed in the switch's uplinkPortgroup (vCenter), marked
// config.uplink, or carrying a VLAN trunk (vcsim marks it no other way;
// podvisor makes no trunk port groups).
func isUplink(p mo.DistributedVirtualPortgroup, uplinks []types.ManagedObjectReference) bool {
	if slices.Contains(uplinks, p.Self) || p.Config.Uplink != nil && *p.Config.Uplink {
		return true
	}
	if s, ok := p.Config.DefaultPortConfig.(*types.VMwareDVSPortSetting); ok && s != nil {
		_, trunk := s.Vlan.(*types.VmwareDistributedVirtualSwitchTrunkVlanSpec)
		return trunk
	}
	return false
}

// ImportResult says what ImportSwitch changed.
type ImportResult struct {
	// Created is true when the switch did not exist.
	Created bool
	// PortGroups lists the port groups created or reconfigured.
	PortGroups []string
	// Joined lists the hosts that became members.
	Joined []string
	// MissingHosts lists member hosts of the file that this datacenter
	// does not have.
	MissingHosts []string
}

// ImportSwitch applies an exported configuration to the switch named
// target (cfg.Name when empty): the switch is created when absent, its
// maximum MTU raised to the file's, every port group of the file made to
// match (created, reconfigured, or moved from another switch, since port
// group names are unique per datacenter) and, with joinHosts, the file's
// member hosts that exist here join. Nothing is removed: port groups and
// members the file does not name stay.
func (f *Fabric) ImportSwitch(ctx context.Context, cfg *SwitchConfig, target string, joinHosts bool) (ImportResult, error) {
	var res ImportResult
	if err := cfg.Validate(); err != nil {
		return res, fmt.Errorf("import switch: %w", err)
	}
	if target == "" {
		target = cfg.Name
	}
	_, existed, err := f.FindSwitch(ctx, target)
	if err != nil {
		return res, err
	}
	res.Created = !existed
	sw, err := f.EnsureSwitch(ctx, target, max(cfg.MaxMTU, 1500))
	if err != nil {
		return res, err
	}
	if cfg.MaxMTU > sw.MaxMTU {
		if err := f.RaiseMTU(ctx, target, cfg.MaxMTU); err != nil {
			return res, err
		}
	}
	for _, pg := range cfg.PortGroups {
		changed, err := f.EnsurePortGroup(ctx, target, pg.Spec())
		if err != nil {
			return res, err
		}
		if changed {
			res.PortGroups = append(res.PortGroups, pg.Name)
		}
	}
	if !joinHosts {
		return res, nil
	}
	hosts, err := f.Hosts(ctx)
	if err != nil {
		return res, err
	}
	byName := map[string]Host{}
	for _, h := range hosts {
		byName[h.Name] = h
	}
	var refs []types.ManagedObjectReference
	for _, name := range cfg.Hosts {
		h, ok := byName[name]
		if !ok {
			res.MissingHosts = append(res.MissingHosts, name)
			continue
		}
		if !sw.IsMember(h.Ref) {
			refs = append(refs, h.Ref)
		}
	}
	if len(refs) > 0 {
		joined, err := f.JoinAll(ctx, target, refs)
		if err != nil {
			return res, fmt.Errorf("import switch %s: join hosts: %w", target, err)
		}
		for _, h := range hosts {
			if slices.Contains(joined, h.Ref) {
				res.Joined = append(res.Joined, h.Name)
			}
		}
	}
	return res, nil
}
