package sim

import (
	"fmt"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// vmotionRefusal is the fault of a relocation that vSphere refuses, nil
// for any other call: a vMotion (a powered-on VM to another host) of a VM
// with a connected network serial port that connects to a remote system
// directly. Such a port's connection is the host's, which cannot take it
// along; vSphere moves a port only through its proxy (ProxyURI, a
// virtual serial port concentrator), which the simulated hosts do as ESXi
// does (guest.serialLine). vcsim relocates such a VM as it does any other.
func (d *Datacenter) vmotionRefusal(ctx *simulator.Context, m *simulator.Method) types.BaseMethodFault {
	var host *types.ManagedObjectReference
	switch req := m.Body.(type) {
	case *types.RelocateVM_Task:
		host = req.Spec.Host
	case *types.MigrateVM_Task:
		host = req.Host
	default:
		return nil
	}
	vm, ok := ctx.Map.Get(m.This).(*simulator.VirtualMachine)
	if !ok || host == nil {
		return nil
	}
	var fault types.BaseMethodFault
	ctx.WithLock(vm, func() {
		if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn || vm.Runtime.Host == nil || *vm.Runtime.Host == *host {
			return
		}
		devices := object.VirtualDeviceList(vm.Config.Hardware.Device)
		for _, dev := range devices.SelectByType((*types.VirtualSerialPort)(nil)) {
			vd := dev.GetVirtualDevice()
			b, ok := vd.Backing.(*types.VirtualSerialPortURIBackingInfo)
			if !ok || b.ProxyURI != "" || (vd.Connectable != nil && !vd.Connectable.Connected) {
				continue
			}
			label := devices.Name(dev)
			fault = &types.DisallowedMigrationDeviceAttached{
				MigrationFault: types.MigrationFault{VimFault: types.VimFault{MethodFault: types.MethodFault{
					FaultMessage: []types.LocalizableMessage{{Key: "podvisor.sim.vmotionNetworkSerialPort",
						Message: fmt.Sprintf("%s connects to %s directly: a VM with a network serial port moves with vMotion only through a virtual serial port concentrator (proxyURI)", label, b.ServiceURI)}}}}},
				Fault: types.LocalizedMethodFault{Fault: &types.RemoteDeviceNotSupported{DeviceNotSupported: types.DeviceNotSupported{Device: label}},
					LocalizedMessage: label + " is a network serial port without a proxy"},
			}
			return
		}
	})
	return fault
}
