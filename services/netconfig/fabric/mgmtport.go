package fabric

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"
)

// ManagementNIC is the VMkernel NIC that carries a host's management
// traffic.
const ManagementNIC = "vmk0"

// PortConfig is the part of a distributed port's setting that decides
// whether traffic flows: its access VLAN (0: none) and whether the port is
// blocked.
type PortConfig struct {
	VLAN    int32
	Blocked bool
}

func (c PortConfig) String() string {
	if c.Blocked {
		return fmt.Sprintf("vlan %d, blocked", c.VLAN)
	}
	return fmt.Sprintf("vlan %d", c.VLAN)
}

// ManagementPort is a distributed port a host's management NIC uses: the
// port its vmk0 is connected to (Clone false), or a port scoped to that
// host alone and marked as a clone by its name (an alternate management
// channel, see ClonePortName).
type ManagementPort struct {
	Key    string
	Name   string
	Host   types.ManagedObjectReference
	Config PortConfig
	Clone  bool
}

// cloneSuffix ends the name of a management port's clone.
const cloneSuffix = " (clone)"

// ClonePortName is the name of the clone of a management port.
func ClonePortName(original string) string { return original + cloneSuffix }

// ManagementPorts lists the management ports on a switch, sorted by key.
func (f *Fabric) ManagementPorts(ctx context.Context, switchName string) ([]ManagementPort, error) {
	sw, err := f.existingSwitch(ctx, switchName)
	if err != nil {
		return nil, err
	}
	ports, err := object.NewDistributedVirtualSwitch(f.c, sw.Ref).FetchDVPorts(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("read the ports of switch %s: %w", switchName, err)
	}
	var out []ManagementPort
	for _, p := range ports {
		mp := ManagementPort{Key: p.Key, Name: p.Config.Name, Config: portConfig(p.Config.Setting)}
		switch {
		case p.Connectee != nil && p.Connectee.ConnectedEntity != nil && p.Connectee.NicKey == ManagementNIC &&
			p.Connectee.Type == string(types.DistributedVirtualSwitchPortConnecteeConnecteeTypeHostVmkVnic):
			mp.Host = *p.Connectee.ConnectedEntity
		case p.Connectee == nil && len(p.Config.Scope) == 1 && strings.HasSuffix(p.Config.Name, cloneSuffix):
			mp.Host, mp.Clone = p.Config.Scope[0], true
		default:
			continue
		}
		out = append(out, mp)
	}
	slices.SortFunc(out, func(a, b ManagementPort) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// AddPort adds a standalone port scoped to one host with a configuration.
func (f *Fabric) AddPort(ctx context.Context, switchName, key, name, description string, host types.ManagedObjectReference, cfg PortConfig) error {
	return f.reconfigurePorts(ctx, switchName, types.DVPortConfigSpec{
		Operation: string(types.ConfigSpecOperationAdd), Key: key, Name: name, Description: description,
		Scope: []types.ManagedObjectReference{host}, Setting: portSetting(cfg),
	})
}

// ConfigurePort sets a port's configuration.
func (f *Fabric) ConfigurePort(ctx context.Context, switchName, key string, cfg PortConfig) error {
	return f.reconfigurePorts(ctx, switchName, types.DVPortConfigSpec{
		Operation: string(types.ConfigSpecOperationEdit), Key: key, Setting: portSetting(cfg),
	})
}

// RemovePort removes a port.
func (f *Fabric) RemovePort(ctx context.Context, switchName, key string) error {
	return f.reconfigurePorts(ctx, switchName, types.DVPortConfigSpec{Operation: string(types.ConfigSpecOperationRemove), Key: key})
}

func (f *Fabric) reconfigurePorts(ctx context.Context, switchName string, spec types.DVPortConfigSpec) error {
	defer f.lockSwitch(switchName)()
	sw, err := f.existingSwitch(ctx, switchName)
	if err != nil {
		return err
	}
	t, err := object.NewDistributedVirtualSwitch(f.c, sw.Ref).ReconfigureDVPort(ctx, []types.DVPortConfigSpec{spec})
	if err == nil {
		err = t.Wait(ctx)
	}
	if err != nil {
		return fmt.Errorf("%s port %s on switch %s: %w", spec.Operation, spec.Key, switchName, err)
	}
	return nil
}

func portSetting(cfg PortConfig) *types.VMwareDVSPortSetting {
	return &types.VMwareDVSPortSetting{
		DVPortSetting: types.DVPortSetting{Blocked: &types.BoolPolicy{Value: types.NewBool(cfg.Blocked)}},
		Vlan:          &types.VmwareDistributedVirtualSwitchVlanIdSpec{VlanId: cfg.VLAN},
	}
}

func portConfig(setting types.BaseDVPortSetting) PortConfig {
	var c PortConfig
	if setting == nil {
		return c
	}
	if s := setting.GetDVPortSetting(); s != nil && s.Blocked != nil && s.Blocked.Value != nil {
		c.Blocked = *s.Blocked.Value
	}
	if s, ok := setting.(*types.VMwareDVSPortSetting); ok && s.Vlan != nil {
		if id, ok := s.Vlan.(*types.VmwareDistributedVirtualSwitchVlanIdSpec); ok {
			c.VLAN = id.VlanId
		}
	}
	return c
}
