package sim

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vmdk"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/shared/sim/guest"
	"github.com/podvisor/podvisor/shared/sim/segment"
)

// startGuests turns simulated guests on when the configuration asks for
// them and this machine can run them; otherwise it records why not (or,
// with GuestsRequired, fails).
func (d *Datacenter) startGuests(dir string) error {
	if d.cfg.Guests == nil {
		d.guestsOff = "simulated guests were not asked for"
		return nil
	}
	gcfg := *d.cfg.Guests
	if gcfg.Dir == "" {
		gcfg.Dir = filepath.Join(dir, "guests")
	}
	var fabric *segment.Fabric
	if gcfg.Fabric == nil && guest.Check(gcfg) == nil {
		f, err := segment.New()
		if err != nil {
			return fmt.Errorf("sim: network segments: %w", err)
		}
		fabric, gcfg.Fabric = f, f
	}
	m, err := guest.New(gcfg)
	if err != nil {
		if fabric != nil {
			_ = fabric.Close()
		}
		if d.cfg.GuestsRequired {
			return fmt.Errorf("sim: guests: %w", err)
		}
		d.guestsOff = err.Error()
		return nil
	}
	d.segMu.Lock()
	d.guests, d.fabric = m, fabric
	d.segMu.Unlock()
	d.model.Map().AddHandler(&guestBridge{d: d})
	if err := d.reconcileSegments(context.Background()); err != nil {
		return err
	}
	return nil
}

// Guests is the manager of the simulated guests, nil when they are off
// (GuestsOff says why).
func (d *Datacenter) Guests() *guest.Manager { return d.guests }

// GuestsOff says why powered-on VMs run no guest here, "" when they do.
func (d *Datacenter) GuestsOff() string { return d.guestsOff }

// guestBridge is a registry observer that does what a hypervisor does with
// a VM's guest: power-on starts it, power-off stops it (the power-off task
// ends once no process of the guest is left), a relocation re-routes its
// channel, destroying the VM removes its directory.
//
// Only VMs carrying guestinfo.podvisor.spec (pod VMs) get a guest: other
// VMs have nothing for an agent to run.
type guestBridge struct{ d *Datacenter }

var guestBridgeRef = types.ManagedObjectReference{Type: "PodvisorGuestBridge", Value: "guests"}

func (b *guestBridge) Reference() types.ManagedObjectReference { return guestBridgeRef }

func (b *guestBridge) PutObject(*simulator.Context, mo.Reference) {}

func (b *guestBridge) RemoveObject(_ *simulator.Context, ref types.ManagedObjectReference) {
	if ref.Type != "VirtualMachine" {
		return
	}
	if err := b.d.guests.Destroy(ref.Value); err != nil {
		b.d.guestLog("destroy guest", ref.Value, err)
	}
}

// UpdateObject runs inside the task that changed the VM, with the VM's lock
// held: it reads the VM directly and never takes another lock.
func (b *guestBridge) UpdateObject(_ *simulator.Context, obj mo.Reference, changes []types.PropertyChange) {
	vm, ok := obj.(*mo.VirtualMachine)
	if !ok {
		return
	}
	for _, ch := range changes {
		switch ch.Name {
		case "runtime.powerState":
			switch ch.Val {
			case types.VirtualMachinePowerStatePoweredOn:
				spec, ok := b.d.guestVM(vm)
				if !ok {
					continue
				}
				// The power-on task ends when the VM runs, not when its
				// guest has booted (as on a real host, whose power-on
				// does not wait for the guest's OS): the VM is not kept
				// locked through the boot, and the guest's own reports
				// say when it runs.
				booted, name := b.d.guests.BeginPowerOn(spec), vm.Name
				go func() {
					if err := <-booted; err != nil {
						b.d.guestLog("power on guest", name, err)
					}
				}()
			default:
				if err := b.d.guests.PowerOff(vm.Self.Value); err != nil {
					b.d.guestLog("power off guest", vm.Name, err)
				}
			}
		case "config.hardware.device", "config.extraConfig":
			// A reconfigure of a running VM: its guest follows once the
			// task has made every change (the guestinfo comes before the
			// devices within one reconfigure, and the agent must find its
			// cards moved when it hears of the new spec). A native VM's
			// guest gets its disks hot-added, removed or grown.
			if vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
				b.d.reconfigureGuest(vm.Self)
			}
		case "runtime.host":
			if ref, ok := ch.Val.(types.ManagedObjectReference); ok {
				b.d.guests.Move(vm.Self.Value, b.d.hostName(ref))
			} else if ref, ok := ch.Val.(*types.ManagedObjectReference); ok && ref != nil {
				b.d.guests.Move(vm.Self.Value, b.d.hostName(*ref))
			}
		}
	}
}

// reconfigureGuest brings a running VM's guest in line with the VM's
// configuration (guest.Manager.Reconfigure) once the VM's lock is free:
// after the task that changed it. One pass per VM is under way at a time,
// from its read of the VM to the guest's change: a change made meanwhile
// gets another pass after it, which reads it. (Two passes at once could
// apply their reads out of order, the older last: a guest left with the
// cards of before a reconfigure, seen once power-on stopped waiting for
// the boot.)
func (d *Datacenter) reconfigureGuest(ref types.ManagedObjectReference) {
	d.forkMu.Lock()
	if d.reconfiguring == nil {
		d.reconfiguring = map[string]*reconfigurePass{}
	}
	if p, ok := d.reconfiguring[ref.Value]; ok {
		p.again = true
		d.forkMu.Unlock()
		return
	}
	p := &reconfigurePass{}
	d.reconfiguring[ref.Value] = p
	d.forkMu.Unlock()
	go func() {
		for {
			d.reconfigureOnce(ref, p)
			d.forkMu.Lock()
			if !p.again {
				delete(d.reconfiguring, ref.Value)
				d.forkMu.Unlock()
				return
			}
			d.forkMu.Unlock()
		}
	}()
}

// reconfigurePass is a VM's reconfigure under way; again says a change came
// after its read.
type reconfigurePass struct{ again bool }

func (d *Datacenter) reconfigureOnce(ref types.ManagedObjectReference, p *reconfigurePass) {
	m := d.model.Map()
	obj, ok := m.Get(ref).(*simulator.VirtualMachine)
	var spec guest.VM
	var on bool
	if ok {
		m.WithLock(&simulator.Context{}, obj, func() {
			// Under the VM's lock: a change after this read (made under
			// it too) asks for the next pass.
			d.forkMu.Lock()
			p.again = false
			d.forkMu.Unlock()
			on = obj.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn
			spec, ok = d.guestVM(&obj.VirtualMachine)
		})
	} else {
		d.forkMu.Lock()
		p.again = false
		d.forkMu.Unlock()
	}
	if !ok || !on {
		return
	}
	if err := d.guests.Reconfigure(spec); err != nil {
		d.guestLog("reconfigure guest", spec.Name, err)
	}
}

func (d *Datacenter) guestLog(what, vm string, err error) {
	if d.cfg.Guests != nil && d.cfg.Guests.Logger != nil {
		d.cfg.Guests.Logger.Warn(what, "vm", vm, "err", err)
	}
}

// debugLog logs a step of the datacenter's own at debug level.
func (d *Datacenter) debugLog(msg string, args ...any) {
	if d.cfg.Guests != nil && d.cfg.Guests.Logger != nil {
		d.cfg.Guests.Logger.Debug(msg, args...)
	}
}

func (d *Datacenter) hostName(ref types.ManagedObjectReference) string {
	if i, ok := d.hostByRef[ref]; ok {
		return d.hosts[i].Name
	}
	return ref.Value
}

// guestVM reads what the guest needs from a VM: its spec, size, host and
// disks (unit → flat extent file on the datastore's directory).
func (d *Datacenter) guestVM(vm *mo.VirtualMachine) (guest.VM, bool) {
	if vm.Config == nil {
		return guest.VM{}, false
	}
	var spec string
	guestinfo := map[string]string{}
	for _, o := range vm.Config.ExtraConfig {
		v := o.GetOptionValue()
		if v.Key == guestchannel.GuestinfoSpec {
			spec, _ = v.Value.(string)
		}
		if s, ok := v.Value.(string); ok && strings.HasPrefix(v.Key, "guestinfo.") {
			guestinfo[v.Key] = s
		}
	}
	out := guest.VM{
		ForkOf:   d.ForkedFrom(vm.Self.Value),
		Standby:  d.standbyFor(vm.Self.Value),
		Key:      vm.Self.Value,
		Name:     vm.Name,
		UUID:     vm.Config.InstanceUuid,
		NumCPU:   vm.Config.Hardware.NumCPU,
		MemoryMB: int64(vm.Config.Hardware.MemoryMB),
		Spec:     spec,
	}
	if vm.Runtime.Host != nil {
		out.Host = d.hostName(*vm.Runtime.Host)
	}
	devices := object.VirtualDeviceList(vm.Config.Hardware.Device)
	out.NICs = vmNICs(devices)
	out.SerialURI, out.SerialService = networkSerialPort(devices)
	for _, dev := range devices {
		disk, ok := dev.(*types.VirtualDisk)
		if !ok {
			continue
		}
		backing, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if !ok {
			continue
		}
		unit, ok := diskUnit(devices, disk)
		if !ok {
			continue
		}
		file, err := d.flatExtent(backing.FileName)
		if err != nil {
			d.guestLog("guest disk "+unit, vm.Name, err)
			continue
		}
		mode := types.VirtualDiskMode(backing.DiskMode)
		var parent string
		if backing.Parent != nil {
			if parent, err = d.flatExtent(backing.Parent.FileName); err != nil {
				d.guestLog("guest disk "+unit+" parent", vm.Name, err)
				continue
			}
		}
		out.Disks = append(out.Disks, guest.Disk{
			Parent:        parent,
			Unit:          unit,
			Path:          file,
			CapacityBytes: disk.CapacityInBytes,
			ReadOnly: mode == types.VirtualDiskModeIndependent_nonpersistent || mode == types.VirtualDiskModeNonpersistent ||
				mode == types.VirtualDiskModeUndoable,
		})
	}
	if spec != "" {
		return out, true
	}
	// Not a pod VM: a VM whose first disk holds a filesystem boots it (a
	// native VM); any other VM has nothing to run.
	for _, disk := range out.Disks {
		if disk.Unit == "scsi0:0" && !disk.ReadOnly && bootable(disk.Path) {
			out.Native = &guest.Native{BootDisk: disk.Path, Guestinfo: guestinfo}
			return out, true
		}
	}
	return guest.VM{}, false
}

// networkSerialPort is where the host connects the VM's first network
// serial port: its proxy's URI (the port's service URI beside it), or the
// service URI of a port with direction client and no proxy; "" when the VM
// has neither.
func networkSerialPort(devices object.VirtualDeviceList) (uri, service string) {
	for _, dev := range devices.SelectByType((*types.VirtualSerialPort)(nil)) {
		b, ok := dev.GetVirtualDevice().Backing.(*types.VirtualSerialPortURIBackingInfo)
		switch {
		case !ok:
		case b.ProxyURI != "":
			return b.ProxyURI, b.ServiceURI
		case b.Direction == string(types.VirtualDeviceURIBackingOptionDirectionClient):
			return b.ServiceURI, ""
		}
	}
	return "", ""
}

// bootable reports whether a disk's extent starts with a filesystem a
// kernel mounts as a root: ext2/3/4 (magic 0xEF53 at byte 1080) or erofs
// (0xE0F5E1E2 at byte 1024).
func bootable(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var b [60]byte
	if _, err := f.ReadAt(b[:], 1024); err != nil {
		return false
	}
	return b[56] == 0x53 && b[57] == 0xEF || b[0] == 0xE2 && b[1] == 0xE1 && b[2] == 0xF5 && b[3] == 0xE0
}

// diskUnit is a disk's address, "<bus kind><bus number>:<unit>", such as
// "scsi0:1".
func diskUnit(devices object.VirtualDeviceList, disk *types.VirtualDisk) (string, bool) {
	if disk.UnitNumber == nil {
		return "", false
	}
	ctrl := devices.FindByKey(disk.ControllerKey)
	c, ok := ctrl.(types.BaseVirtualController)
	if !ok {
		return "", false
	}
	var kind string
	switch ctrl.(type) {
	case types.BaseVirtualSCSIController:
		kind = "scsi"
	case *types.VirtualIDEController:
		kind = "ide"
	case types.BaseVirtualSATAController:
		kind = "sata"
	case *types.VirtualNVMEController:
		kind = "nvme"
	default:
		return "", false
	}
	return fmt.Sprintf("%s%d:%d", kind, c.GetVirtualController().BusNumber, *disk.UnitNumber), true
}

// flatExtent maps a disk's datastore path ("[ds] dir/disk.vmdk") to the
// file on this machine that holds its bytes: the extent its descriptor
// names (disk-flat.vmdk).
func (d *Datacenter) flatExtent(dsPath string) (string, error) {
	var p object.DatastorePath
	if !p.FromString(dsPath) {
		return "", fmt.Errorf("disk path %q is not a datastore path", dsPath)
	}
	var dsDir string
	for _, ds := range d.datastores {
		if ds.Name == p.Datastore {
			dsDir = ds.Dir
		}
	}
	if dsDir == "" {
		return "", fmt.Errorf("disk %s: datastore %q: %w", dsPath, p.Datastore, ErrNotFound)
	}
	desc := filepath.Join(dsDir, filepath.FromSlash(p.Path))
	f, err := os.Open(desc)
	if err != nil {
		return "", fmt.Errorf("disk %s: %w", dsPath, err)
	}
	defer f.Close()
	conventional := filepath.Join(filepath.Dir(desc), strings.Replace(filepath.Base(desc), ".vmdk", "-flat.vmdk", 1))
	if parsed, err := vmdk.ParseDescriptor(f); err == nil && len(parsed.Extent) > 0 {
		if name := strings.Trim(parsed.Extent[0].Info, `"`); name != "" {
			named := filepath.Join(filepath.Dir(desc), filepath.FromSlash(path.Clean(name)))
			// vcsim's MoveVirtualDisk renames the descriptor and its
			// extent but leaves the descriptor naming the old extent
			// (ESXi rewrites it): a moved disk's extent is found under
			// the descriptor's new name.
			if _, err := os.Stat(named); err != nil && errors.Is(err, fs.ErrNotExist) {
				if _, err := os.Stat(conventional); err == nil {
					return conventional, nil
				}
			}
			return named, nil
		}
	}
	return conventional, nil
}

// freezeGuests and thawGuests follow a host's failure and recovery.
func (d *Datacenter) freezeGuests(host string, frozen bool) {
	if d.guests == nil {
		return
	}
	if frozen {
		d.guests.FreezeHost(host)
	} else {
		d.guests.ThawHost(host)
	}
}
