package nativevm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"path"
	"regexp"
	"slices"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vmdk"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// Extra disks (spec.disks) follow the declaration of a VM that exists, as
// they do in vSphere and VM Operator:
//
//   - a disk declared is created thin in the VM's directory
//     ([ds] <vm>/<disk>.vmdk) and hot-added on the VM's SCSI controller,
//     at its lowest free unit (vSphere hot-adds SCSI disks to a running
//     VM). A file of that name already there (the disk was removed from
//     the spec and is declared again, or a VM made again left it) is
//     attached as it is, with what its guest wrote, and extended first
//     when the declaration is larger;
//   - a disk grown is extended in place (vSphere hot-extends a SCSI disk);
//   - a disk shrunk is refused: vSphere never shrinks a virtual disk.
//     The declaration is refused on admission (VirtualMachineSpec.
//     ChangeRefused); a file found larger than declared (a disk removed
//     and declared again smaller) fails the update here, DiskShrinkRefused,
//     before anything is changed;
//   - a disk removed from the spec is detached and its file kept in the
//     VM's directory: the VM owns its disks, and they go with the VM (its
//     delete removes its directory, detached disks included), not with
//     an edit of its spec, as vSphere's "remove device" keeps a disk's
//     files unless asked to delete them and VM Operator keeps a volume's
//     claim. A removal is undone by declaring the disk again, data and
//     all; the space comes back when the VM is deleted. Only the disks
//     podvisor gave the VM are detached (the VM lists them in its
//     ExtraConfig, disksKey): a content library template's disks stay.
//
// The declaration is applied in one reconfigure with the rest of the
// update; HardwareSynced then reads the devices back (hardwareDiffers).

// reasonDiskShrinkRefused is the HardwareSynced condition's reason when a
// disk is declared smaller than it is.
const reasonDiskShrinkRefused = "DiskShrinkRefused"

// maxSCSIUnit is the last unit of the SCSI controller the extra disks use
// (units 0-15, 7 the controller's own; events.MaxVMDisks).
const maxSCSIUnit = 15

// diskLabel is the form of an extra disk's name (a DNS-1123 label, as
// validation requires).
var diskLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// disksKey is the VM's ExtraConfig key that lists the extra disks podvisor
// gave it (a JSON array of names), set with every change of them: a
// content library template's disks are in the same directory, and only
// the disks listed are podvisor's to detach.
const disksKey = "podvisor.disks"

// disksValue is the disksKey value for the disks of spec.
func disksValue(disks []events.VMDisk) string {
	names := make([]string, 0, len(disks))
	for _, d := range disks {
		names = append(names, d.Name)
	}
	b, _ := json.Marshal(names)
	return string(b)
}

// managedDisks are the extra disks podvisor gave the VM, as its disksKey
// lists them; all says every extra disk is (a VM podvisor made before it
// listed them had no other disks than the boot disk and its extra disks,
// unless it was deployed from a content library, whose template's disks
// are not told from removed ones: then none is, and only the declared
// disks are looked at).
func managedDisks(rec *events.VMRecord, cfg *types.VirtualMachineConfigInfo) (names map[string]bool, all bool) {
	for _, o := range cfg.ExtraConfig {
		v := o.GetOptionValue()
		if v.Key != disksKey {
			continue
		}
		s, _ := v.Value.(string)
		var list []string
		if json.Unmarshal([]byte(s), &list) != nil {
			break
		}
		names = map[string]bool{}
		for _, n := range list {
			names[n] = true
		}
		return names, false
	}
	return nil, rec.Image.ContentLibrary == nil
}

// extraDisk names the extra disk d would be: a disk whose file is
// <vm>/<name>.vmdk in the VM's directory, other than the boot disk
// (root.vmdk). Whether podvisor gave it is managedDisks' to say.
func extraDisk(d *types.VirtualDisk, vmName string) (string, bool) {
	b, ok := d.Backing.(types.BaseVirtualDeviceFileBackingInfo)
	if !ok {
		return "", false
	}
	var p object.DatastorePath
	if !p.FromString(b.GetVirtualDeviceFileBackingInfo().FileName) || path.Dir(p.Path) != vmName {
		return "", false
	}
	name, ok := strings.CutSuffix(path.Base(p.Path), ".vmdk")
	if !ok || !diskLabel.MatchString(name) || name == events.VMBootDiskName {
		return "", false
	}
	return name, true
}

// extraDisks are the disks in the VM's directory by name (extraDisk).
func extraDisks(devices object.VirtualDeviceList, vmName string) map[string]*types.VirtualDisk {
	out := map[string]*types.VirtualDisk{}
	for _, d := range devices.SelectByType((*types.VirtualDisk)(nil)) {
		disk := d.(*types.VirtualDisk)
		if name, ok := extraDisk(disk, vmName); ok {
			out[name] = disk
		}
	}
	return out
}

// capacityOf is a disk's capacity in bytes (vCenter fills both fields;
// older ones only the KB one).
func capacityOf(d *types.VirtualDisk) int64 {
	if d.CapacityInBytes > 0 {
		return d.CapacityInBytes
	}
	return d.CapacityInKB << 10
}

// vmDatastore is the datastore of the VM's directory, where its extra
// disks are.
func vmDatastore(cfg *types.VirtualMachineConfigInfo) (string, error) {
	var p object.DatastorePath
	if !p.FromString(cfg.Files.VmPathName) || p.Datastore == "" {
		return "", fmt.Errorf("VM %s: no datastore in its path %q", cfg.Name, cfg.Files.VmPathName)
	}
	return p.Datastore, nil
}

// diskPlan is what brings a VM's extra disks to the declaration: device
// changes for one reconfigure, and the detached files to extend before it
// attaches them.
type diskPlan struct {
	changes []types.BaseVirtualDeviceConfigSpec
	// extend is each detached file to grow before it is attached, with
	// its new capacity in bytes.
	extend map[string]int64
	// added, attached, grown and removed name the disks, for the log.
	added, attached, grown, removed []string
}

func (p *diskPlan) empty() bool { return len(p.changes) == 0 }

// planDisks compares the VM's extra disks with spec.disks. It only reads:
// a refusal (a disk declared smaller than it is) leaves the VM as it is.
func (c *Controller) planDisks(ctx context.Context, rec *events.VMRecord, cfg *types.VirtualMachineConfigInfo) (*diskPlan, error) {
	name := events.NativeVMName(rec.UID)
	devices := object.VirtualDeviceList(cfg.Hardware.Device)
	have := extraDisks(devices, name)
	managed, all := managedDisks(rec, cfg)
	plan := &diskPlan{extend: map[string]int64{}}
	var shrunk []error
	var missing []events.VMDisk
	wanted := map[string]bool{}
	for _, d := range rec.Spec.Disks {
		wanted[d.Name] = true
		disk, ok := have[d.Name]
		if !ok {
			missing = append(missing, d)
			continue
		}
		want, is := d.SizeMiB()<<20, capacityOf(disk)
		switch {
		case want > is:
			grown := *disk
			grown.CapacityInBytes, grown.CapacityInKB = want, want>>10
			plan.changes = append(plan.changes, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationEdit, Device: &grown})
			plan.grown = append(plan.grown, d.Name)
		case want < is:
			shrunk = append(shrunk, shrinkError(d, is))
		}
	}
	// Removals before additions: a unit they free may take a disk added
	// in the same reconfigure. Only disks podvisor gave the VM go.
	removed := map[int32]bool{}
	for _, n := range slices.Sorted(maps.Keys(have)) {
		if wanted[n] || !all && !managed[n] {
			continue
		}
		disk := have[n]
		// No file operation: the file stays in the VM's directory (see
		// above), so declaring the disk again brings its data back.
		plan.changes = append(plan.changes, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationRemove, Device: disk})
		plan.removed = append(plan.removed, n)
		if disk.UnitNumber != nil {
			removed[*disk.UnitNumber] = true
		}
	}
	if len(missing) > 0 {
		ctrl, err := devices.FindSCSIController("")
		if err != nil {
			return nil, fmt.Errorf("VM %s has no SCSI controller for its disks: %w", name, err)
		}
		ds, err := vmDatastore(cfg)
		if err != nil {
			return nil, err
		}
		used := map[int32]bool{7: true} // unit 7 is the controller's own
		for _, d := range devices {
			if v := d.GetVirtualDevice(); v.ControllerKey == ctrl.Key && v.UnitNumber != nil && !removed[*v.UnitNumber] {
				used[*v.UnitNumber] = true
			}
		}
		unit := int32(0)
		for _, d := range missing {
			for used[unit] {
				unit++
			}
			if unit > maxSCSIUnit {
				return nil, bus.Permanent(fmt.Errorf("VM %s: no free unit on its SCSI controller for disk %s", name, d.Name))
			}
			used[unit] = true
			file := fmt.Sprintf("[%s] %s/%s.vmdk", ds, name, d.Name)
			want := d.SizeMiB() << 20
			if !c.diskExists(ctx, file) {
				plan.changes = append(plan.changes, diskChange(file, want, ctrl.Key, unit, types.VirtualDeviceConfigSpecFileOperationCreate))
				plan.added = append(plan.added, d.Name)
				continue
			}
			is, err := c.fileCapacity(ctx, ds, fmt.Sprintf("%s/%s.vmdk", name, d.Name))
			if err != nil {
				return nil, err
			}
			switch {
			case want < is:
				shrunk = append(shrunk, shrinkError(d, is))
				continue
			case want > is:
				plan.extend[file] = want
			}
			plan.changes = append(plan.changes, diskChange(file, want, ctrl.Key, unit, ""))
			plan.attached = append(plan.attached, d.Name)
		}
	}
	if len(shrunk) > 0 {
		return nil, bus.Permanent(bus.WithReason(reasonDiskShrinkRefused, fmt.Errorf("VM %s: %w", rec.Key(), errors.Join(shrunk...))))
	}
	return plan, nil
}

func shrinkError(d events.VMDisk, is int64) error {
	return fmt.Errorf("disk %s is %d MiB and cannot shrink to %s (%d MiB): vSphere never shrinks a virtual disk; declare %dMi or more, or a disk of another name",
		d.Name, is>>20, d.Size, d.SizeMiB(), (is+1<<20-1)>>20)
}

// extendFiles grows the detached files the plan attaches to their declared
// size (a disk attached is extended by the reconfigure; a detached one
// through the virtual disk manager).
func (c *Controller) extendFiles(ctx context.Context, plan *diskPlan) error {
	vdm := object.NewVirtualDiskManager(c.vc)
	for _, file := range slices.Sorted(maps.Keys(plan.extend)) {
		t, err := vdm.ExtendVirtualDisk(ctx, file, c.dc, plan.extend[file]>>10, nil)
		if err == nil {
			err = t.Wait(ctx)
		}
		if err != nil {
			return fmt.Errorf("extend disk %s: %w", file, err)
		}
	}
	return nil
}

// fileCapacity is the capacity of the virtual disk whose descriptor is rel
// on datastore ds, read from the descriptor through the datastore file
// API (what vCenter reads when it attaches the disk).
func (c *Controller) fileCapacity(ctx context.Context, ds, rel string) (int64, error) {
	store, err := c.vs.DatastoreByName(ctx, ds)
	if err != nil {
		return 0, err
	}
	rc, _, err := store.Download(ctx, rel, &soap.DefaultDownload)
	if err != nil {
		return 0, fmt.Errorf("read disk [%s] %s: %w", ds, rel, err)
	}
	defer rc.Close()
	desc, err := vmdk.ParseDescriptor(io.LimitReader(rc, 64<<10))
	if err != nil {
		return 0, fmt.Errorf("read disk [%s] %s: %w", ds, rel, err)
	}
	return desc.Capacity(), nil
}

// hardwareDiffers says how the VM's hardware, as vCenter reports it,
// differs from what the record declares ("" when it matches): CPUs and
// memory of the class, a NIC per attached network (by MAC), and each
// extra disk attached at its declared size and no other.
func hardwareDiffers(rec *events.VMRecord, cfg *types.VirtualMachineConfigInfo) string {
	hw := &cfg.Hardware
	var diffs []string
	if hw.NumCPU != rec.Size.CPUs || int64(hw.MemoryMB) != rec.Size.MemoryMiB {
		diffs = append(diffs, fmt.Sprintf("%d vCPU and %d MiB, declared %d and %d", hw.NumCPU, hw.MemoryMB, rec.Size.CPUs, rec.Size.MemoryMiB))
	}
	devices := object.VirtualDeviceList(hw.Device)
	macs := map[string]bool{}
	for _, d := range devices.SelectByType((*types.VirtualEthernetCard)(nil)) {
		macs[strings.ToLower(d.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard().MacAddress)] = true
	}
	for _, n := range rec.Status.NICs {
		if !macs[strings.ToLower(n.MAC)] {
			diffs = append(diffs, fmt.Sprintf("no NIC %s on network %s", n.MAC, n.Network))
		}
		delete(macs, strings.ToLower(n.MAC))
	}
	for _, mac := range slices.Sorted(maps.Keys(macs)) {
		diffs = append(diffs, "NIC "+mac+" not declared")
	}
	have := extraDisks(devices, events.NativeVMName(rec.UID))
	managed, all := managedDisks(rec, cfg)
	for _, d := range rec.Spec.Disks {
		disk, ok := have[d.Name]
		switch {
		case !ok:
			diffs = append(diffs, "disk "+d.Name+" not attached")
		case capacityOf(disk) != d.SizeMiB()<<20:
			diffs = append(diffs, fmt.Sprintf("disk %s is %d MiB, declared %s", d.Name, capacityOf(disk)>>20, d.Size))
		}
		delete(have, d.Name)
	}
	for _, n := range slices.Sorted(maps.Keys(have)) {
		if all || managed[n] {
			diffs = append(diffs, "disk "+n+" attached, not declared")
		}
	}
	return strings.Join(diffs, "; ")
}
