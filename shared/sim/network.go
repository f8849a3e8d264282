package sim

import (
	"context"
	"fmt"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"
)

// Network names of the simulated datacenter.
const (
	// DVSName is the distributed switch every host is a member of.
	DVSName = "pv-dvs"
	// DefaultNetwork is the standard port group every host carries.
	DefaultNetwork = "VM Network"
)

// createNetworking creates pv-dvs with every host as a member, then the
// configured port groups on it. Port groups added later by network-config
// appear on every member host, because a DVS port group is realized on all of
// its switch's members.
func (d *Datacenter) createNetworking(ctx context.Context, netFolder *object.Folder, hostObjs map[string]*object.HostSystem) error {
	task, err := netFolder.CreateDVS(ctx, types.DVSCreateSpec{
		ConfigSpec: &types.VMwareDVSConfigSpec{
			DVSConfigSpec: types.DVSConfigSpec{Name: DVSName},
			MaxMtu:        9000,
		},
	})
	if err != nil {
		return fmt.Errorf("sim: create %s: %w", DVSName, err)
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return fmt.Errorf("sim: create %s: %w", DVSName, err)
	}
	d.dvs = info.Result.(types.ManagedObjectReference)
	dvs := object.NewDistributedVirtualSwitch(netFolder.Client(), d.dvs)

	spec := &types.VMwareDVSConfigSpec{}
	for _, h := range d.hosts {
		spec.Host = append(spec.Host, types.DistributedVirtualSwitchHostMemberConfigSpec{
			Operation: string(types.ConfigSpecOperationAdd),
			Host:      hostObjs[h.Name].Reference(),
		})
	}
	task, err = dvs.Reconfigure(ctx, spec)
	if err != nil {
		return fmt.Errorf("sim: add hosts to %s: %w", DVSName, err)
	}
	if err := task.Wait(ctx); err != nil {
		return fmt.Errorf("sim: add hosts to %s: %w", DVSName, err)
	}

	if len(d.cfg.PortGroups) == 0 {
		return nil
	}
	var pgs []types.DVPortgroupConfigSpec
	for _, pg := range d.cfg.PortGroups {
		pgs = append(pgs, types.DVPortgroupConfigSpec{
			Name:     pg.Name,
			Type:     string(types.DistributedVirtualPortgroupPortgroupTypeEarlyBinding),
			NumPorts: pg.Ports,
			DefaultPortConfig: &types.VMwareDVSPortSetting{
				Vlan: &types.VmwareDistributedVirtualSwitchVlanIdSpec{VlanId: pg.VLAN},
			},
		})
	}
	task, err = dvs.AddPortgroup(ctx, pgs)
	if err != nil {
		return fmt.Errorf("sim: add port groups to %s: %w", DVSName, err)
	}
	if err := task.Wait(ctx); err != nil {
		return fmt.Errorf("sim: add port groups to %s: %w", DVSName, err)
	}
	return nil
}

// DVS returns the reference of pv-dvs.
func (d *Datacenter) DVS() types.ManagedObjectReference { return d.dvs }
