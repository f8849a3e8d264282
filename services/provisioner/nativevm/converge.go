package nativevm

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"path"
	"reflect"
	"slices"
	"strings"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/record"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// Guestinfo keys cloud-init's VMware datasource reads.
const (
	GuestinfoUserData         = "guestinfo.userdata"
	GuestinfoUserDataEncoding = "guestinfo.userdata.encoding"
	GuestinfoMetadata         = "guestinfo.metadata"
	GuestinfoMetadataEncoding = "guestinfo.metadata.encoding"
)

// ready reports whether the latest generation is placed and attached.
func ready(r *events.VMRecord) bool {
	return r.DeletionRequestedAt.IsZero() && r.Status.Host != "" &&
		r.ScheduledGeneration == r.Generation && r.AttachedGeneration == r.Generation
}

// converge makes the vCenter VM match the record, then records and
// announces the status. It does nothing until the latest generation is
// placed and attached.
func (c *Controller) converge(ctx context.Context, cause *event.Event, rec *events.VMRecord) error {
	if !ready(rec) {
		c.publishStatus(ctx, cause, rec)
		return nil
	}
	if rec.StaleVM != "" {
		// An evicted VM is made again on its new host from the disks it
		// left, as vSphere HA restarts a VM: the one it left (same name,
		// same files) leaves vCenter's inventory first, its files stay.
		if err := c.removeStale(ctx, rec); err != nil {
			return err
		}
		out, err := c.mutateVM(ctx, rec.Namespace, rec.Name, rec.UID, func(r *events.VMRecord) error {
			if r.DisksOn == "" && len(r.Status.Datastores) > 0 {
				r.DisksOn = r.Status.Datastores[0]
			}
			r.StaleVM, r.StaleHost = "", ""
			return nil
		})
		if err != nil || out == nil {
			return err
		}
		rec = out
	}
	vm, err := c.findVM(ctx, events.NativeVMName(rec.UID))
	if err != nil {
		return err
	}
	phase := events.VMPhaseReady
	if vm == nil {
		if rec, err = c.followImage(ctx, rec); err != nil || rec == nil {
			return err
		}
		if err := c.markPhase(ctx, cause, rec, events.VMPhaseCreating); err != nil {
			return err
		}
		if vm, err = c.create(ctx, rec); err != nil {
			return c.failed(ctx, cause, rec, events.VMConditionCreated, reasonCreateFailed, err)
		}
	} else if err := c.update(ctx, rec, vm); err != nil {
		return c.failed(ctx, cause, rec, events.VMConditionHardwareSynced, bus.ReasonOf(err, "UpdateFailed"), err)
	}
	booted, err := c.power(ctx, rec, vm, rec.Spec.PowerState)
	if err != nil {
		return c.failed(ctx, cause, rec, events.VMConditionPowerStateSynced, "PowerFailed", err)
	}
	var mvm mo.VirtualMachine
	if err := vm.Properties(ctx, vm.Reference(), []string{"runtime.powerState", "runtime.host", "summary.runtime.bootTime", "config.hardware", "config.extraConfig", "datastore"}, &mvm); err != nil {
		return fmt.Errorf("read VM %s: %w", vm.Reference().Value, err)
	}
	datastores, err := c.datastoreNames(ctx, mvm.Datastore)
	if err != nil {
		return fmt.Errorf("datastores of VM %s: %w", vm.Reference().Value, err)
	}
	power := powerStateName(mvm.Runtime.PowerState)
	host, err := c.hostName(ctx, mvm.Runtime.Host)
	if err != nil {
		return err
	}
	// HardwareSynced says what vCenter reports now, not that a reconfigure
	// was sent: a device it did not take is a difference, retried.
	differs := hardwareDiffers(rec, mvm.Config)
	if differs != "" {
		phase = events.VMPhaseUpdating
	}
	out, err := c.mutateVM(ctx, rec.Namespace, rec.Name, rec.UID, func(r *events.VMRecord) error {
		now := c.now().UTC()
		r.Status.VM, r.Status.PowerState, r.Status.Phase = vm.Reference().Value, power, phase
		r.Status.Datastores, r.DisksOn = datastores, ""
		if host != "" {
			r.Status.Host = host
		}
		r.Status.Size = events.VMSize{CPUs: mvm.Config.Hardware.NumCPU, MemoryMiB: int64(mvm.Config.Hardware.MemoryMB),
			CPUReservationMHz: r.Size.CPUReservationMHz, MemoryReservationMiB: r.Size.MemoryReservationMiB}
		// The addresses are those the guest has configured, not those
		// allocated: a NIC hot-added to the running VM waits for its
		// next boot (guestnet.go).
		setGuestNetwork(r, &mvm, booted, now)
		r.SetCondition(events.VMConditionCreated, events.ConditionTrue, "", vm.Reference().Value, now)
		if differs == "" {
			r.SetCondition(events.VMConditionHardwareSynced, events.ConditionTrue, "", "", now)
		} else {
			r.SetCondition(events.VMConditionHardwareSynced, events.ConditionFalse, reasonHardwareDiffers, differs, now)
		}
		if power == r.Spec.PowerState {
			r.SetCondition(events.VMConditionPowerStateSynced, events.ConditionTrue, "", power, now)
		} else {
			r.SetCondition(events.VMConditionPowerStateSynced, events.ConditionFalse, "PowerStateDiffers", "vCenter reports "+power, now)
		}
		return nil
	})
	if err != nil || out == nil {
		return err
	}
	c.publishStatus(ctx, cause, out)
	if differs != "" {
		return fmt.Errorf("VM %s after its update: %s", vm.Reference().Value, differs)
	}
	return nil
}

// Reasons of the Created condition when the create failed: while it is
// retried (its handler's deliveries), and once nothing but the drift
// repair retries it (the VM Failed; RepairCreate at each pass).
const (
	reasonCreateFailed           = "CreateFailed"
	ReasonCreateRetriesExhausted = "CreateRetriesExhausted"
)

// giveUpCreate records that no delivery retries the failed create of a VM
// never made (its handler's last delivery failed, or a drift repair pass
// did): Failed, Created False CreateRetriesExhausted with the create's
// error and note, so the status does not go on claiming a create under
// way; the drift repair tries it again at its next pass (RepairCreate), as
// what failed (a registry down or moved) may pass. A record that moved on
// meanwhile (made, declared again, failed for good) is left alone. It says
// whether it recorded the failure.
func (c *Controller) giveUpCreate(ctx context.Context, cause *event.Event, ns, name, uid, note string) (bool, error) {
	var gaveUp bool
	out, err := c.mutateVM(ctx, ns, name, uid, func(r *events.VMRecord) error {
		cond, _ := r.Condition(events.VMConditionCreated)
		// CreateRetriesExhausted while Creating: a drift repair's claim,
		// whose converge failed before it tried the create.
		gaveUp = r.Status.VM == "" && r.Status.Phase == events.VMPhaseCreating && cond.Status == events.ConditionFalse &&
			(cond.Reason == reasonCreateFailed || cond.Reason == ReasonCreateRetriesExhausted)
		if !gaveUp {
			return record.ErrUnchanged
		}
		r.Status.Phase = events.VMPhaseFailed
		if cond.Reason == reasonCreateFailed {
			r.SetCondition(events.VMConditionCreated, events.ConditionFalse, ReasonCreateRetriesExhausted, cond.Message+" ("+note+")", c.now().UTC())
		}
		return nil
	})
	if err != nil || out == nil || !gaveUp {
		return false, err
	}
	c.log.Warn("VM create given up; the drift repair tries again", "vm", out.Key(), "uid", uid, "note", note)
	c.publishStatus(ctx, cause, out)
	return true, nil
}

// followImage brings the image of a VM that was never made up to its
// VirtualMachineImage's record: the record copies the image's spec when a
// declaration is accepted, and an image re-applied since (the registry
// moved) is what the VM is made from, though its own declaration is
// unchanged. A VM made once keeps the image it was made from (its boot
// disk is of it; ImageDigest builds it again). The change is written by
// compare-and-set, so a declaration accepted meanwhile wins; nil when the
// record is gone.
func (c *Controller) followImage(ctx context.Context, rec *events.VMRecord) (*events.VMRecord, error) {
	if made(rec) {
		return rec, nil
	}
	img, _, err := c.images.Get(ctx, rec.Spec.ImageName)
	if err != nil || img == nil || reflect.DeepEqual(img.Image.Spec, rec.Image) {
		return rec, err // an image in use is not deleted (onImageDeleteRequested)
	}
	spec, was := img.Image.Spec, rec.Image
	out, err := c.mutateVM(ctx, rec.Namespace, rec.Name, rec.UID, func(r *events.VMRecord) error {
		if made(r) || r.Spec.ImageName != rec.Spec.ImageName || reflect.DeepEqual(r.Image, spec) {
			return record.ErrUnchanged
		}
		if r.Image.OCI != spec.OCI {
			r.ImageDigest = "" // the digest of the reference before
		}
		r.Image = spec
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("VM %s: follow image %s: %w", rec.Key(), rec.Spec.ImageName, err)
	}
	if out != nil && !reflect.DeepEqual(out.Image, was) {
		c.log.Info("VM not made yet follows its image's record", "vm", rec.Key(), "image", rec.Spec.ImageName, "oci", out.Image.OCI)
	}
	return out, nil
}

// made says the record's VM was made once: vCenter has it, or had it (an
// eviction left its disks), or the record said so.
func made(r *events.VMRecord) bool {
	cond, _ := r.Condition(events.VMConditionCreated)
	return r.Status.VM != "" || r.StaleVM != "" || r.DisksOn != "" || cond.Status == events.ConditionTrue
}

// reasonHardwareDiffers is the HardwareSynced condition's reason when the
// VM's devices, read back, are not the declared ones.
const reasonHardwareDiffers = "HardwareDiffers"

func (c *Controller) markPhase(ctx context.Context, cause *event.Event, rec *events.VMRecord, phase string) error {
	out, err := c.mutateVM(ctx, rec.Namespace, rec.Name, rec.UID, func(r *events.VMRecord) error {
		if r.Status.Phase == phase {
			return record.ErrUnchanged
		}
		r.Status.Phase = phase
		return nil
	})
	if err == nil && out != nil {
		c.publishStatus(ctx, cause, out)
	}
	return err
}

// failed records why converging failed. A permanent failure (bad input
// the next delivery cannot fix) leaves the VM Failed until it is declared
// again; anything else is retried.
func (c *Controller) failed(ctx context.Context, cause *event.Event, rec *events.VMRecord, cond, reason string, err error) error {
	out, merr := c.mutateVM(ctx, rec.Namespace, rec.Name, rec.UID, func(r *events.VMRecord) error {
		r.SetCondition(cond, events.ConditionFalse, reason, err.Error(), c.now().UTC())
		if bus.IsPermanent(err) {
			r.Status.Phase = events.VMPhaseFailed
		}
		return nil
	})
	if merr == nil && out != nil {
		c.publishStatus(ctx, cause, out)
	}
	if bus.IsPermanent(err) {
		c.log.Warn("VM cannot converge", "vm", rec.Key(), "err", err)
		return nil
	}
	return err
}

func powerStateName(s types.VirtualMachinePowerState) string {
	switch s {
	case types.VirtualMachinePowerStatePoweredOn:
		return events.PowerStatePoweredOn
	case types.VirtualMachinePowerStateSuspended:
		return events.PowerStateSuspended
	}
	return events.PowerStatePoweredOff
}

// findVM looks a VM up by name in the datacenter (names are unique by
// construction: nv-<uid>; vCenter would accept a duplicate, so the
// controller always looks before it creates).
func (c *Controller) findVM(ctx context.Context, name string) (*object.VirtualMachine, error) {
	refs, err := c.find(ctx, "VirtualMachine", name)
	if err != nil || len(refs) == 0 {
		return nil, err
	}
	return object.NewVirtualMachine(c.vc, refs[0]), nil
}

func (c *Controller) find(ctx context.Context, kind, name string) ([]types.ManagedObjectReference, error) {
	v, err := view.NewManager(c.vc).CreateContainerView(ctx, c.dc.Reference(), []string{kind}, true)
	if err != nil {
		return nil, fmt.Errorf("find %s %s: %w", kind, name, err)
	}
	defer func() { _ = v.Destroy(context.WithoutCancel(ctx)) }()
	refs, err := v.Find(ctx, []string{kind}, property.Match{"name": name})
	if err != nil {
		return nil, fmt.Errorf("find %s %s: %w", kind, name, err)
	}
	return refs, nil
}

func (c *Controller) hostName(ctx context.Context, ref *types.ManagedObjectReference) (string, error) {
	if ref == nil {
		return "", nil
	}
	var h mo.HostSystem
	if err := property.DefaultCollector(c.vc).RetrieveOne(ctx, *ref, []string{"name"}, &h); err != nil {
		return "", fmt.Errorf("host %s: %w", ref.Value, err)
	}
	return h.Name, nil
}

func (c *Controller) host(ctx context.Context, name string) (*object.HostSystem, error) {
	refs, err := c.find(ctx, "HostSystem", name)
	if err != nil {
		return nil, err
	}
	if len(refs) != 1 {
		return nil, bus.Permanent(fmt.Errorf("host %s not found in datacenter %s", name, c.dc.Name()))
	}
	return object.NewHostSystem(c.vc, refs[0]), nil
}

// placement resolves the record's host, pool and datastore.
func (c *Controller) placement(ctx context.Context, rec *events.VMRecord) (*object.HostSystem, *object.ResourcePool, string, error) {
	h, err := c.host(ctx, rec.Status.Host)
	if err != nil {
		return nil, nil, "", err
	}
	var pool *object.ResourcePool
	if rec.ResourcePool != "" {
		pool, err = find.NewFinder(c.vc).SetDatacenter(c.dc).ResourcePool(ctx, rec.ResourcePool)
	}
	if pool == nil || err != nil {
		if pool, err = h.ResourcePool(ctx); err != nil {
			return nil, nil, "", fmt.Errorf("resource pool of %s: %w", rec.Status.Host, err)
		}
	}
	var mh mo.HostSystem
	if err := h.Properties(ctx, h.Reference(), []string{"datastore"}, &mh); err != nil {
		return nil, nil, "", fmt.Errorf("datastores of %s: %w", rec.Status.Host, err)
	}
	mounted, err := c.datastoreNames(ctx, mh.Datastore)
	if err != nil {
		return nil, nil, "", fmt.Errorf("datastores of %s: %w", rec.Status.Host, err)
	}
	// A datastore the host does not mount crashes vcsim and fails late on
	// vCenter: only a mounted one is used.
	for _, want := range append([]string{rec.DisksOn}, rec.Datastores...) {
		if want != "" && slices.Contains(mounted, want) {
			return h, pool, want, nil
		}
	}
	if len(mounted) == 0 {
		return nil, nil, "", bus.Permanent(fmt.Errorf("host %s mounts no datastore", rec.Status.Host))
	}
	slices.Sort(mounted)
	return h, pool, mounted[0], nil
}

// create makes the VM on its host: hardware from the class, the boot disk a
// copy of the image's, extra disks, NICs, cloud-init data.
func (c *Controller) create(ctx context.Context, rec *events.VMRecord) (*object.VirtualMachine, error) {
	h, pool, ds, err := c.placement(ctx, rec)
	if err != nil {
		return nil, err
	}
	name := events.NativeVMName(rec.UID)
	folder, err := c.ensureFolder(ctx, path.Join(c.cfg.FolderRoot, rec.Namespace))
	if err != nil {
		return nil, err
	}
	// Made again (vCenter lost the VM, or an eviction removed it from
	// the inventory): its disks are taken up where they are, and its
	// configuration and log are in the way of the new one's.
	again := rec.Status.VM != "" || rec.DisksOn == ds
	if rec.DisksOn != "" && rec.DisksOn != ds {
		// The scheduler places an evicted VM only where its disks are;
		// a placement elsewhere is never taken at the price of its data.
		return nil, fmt.Errorf("host %s does not mount datastore %s, where the disks of VM %s are: waiting for a placement on a host that does", rec.Status.Host, rec.DisksOn, rec.Key())
	}
	if rec.DisksOn != "" && rec.Image.ContentLibrary != nil {
		// A VM deployed from a content library is deployed again whole.
		c.log.Warn("the disks of the VM an eviction left are not taken up (deployed from a content library)", "vm", rec.Key(), "datastore", rec.DisksOn)
		c.removeDirectory(ctx, rec.DisksOn, name)
		again = rec.Status.VM != ""
	}
	if rec.Image.ContentLibrary != nil {
		return c.deploy(ctx, rec, h, pool, ds, folder, name)
	}
	devices, err := c.devices(ctx, rec, ds, name, again)
	if err != nil {
		return nil, err
	}
	if again {
		c.removeLeftovers(ctx, ds, name)
	}
	spec := types.VirtualMachineConfigSpec{
		Name:         name,
		GuestId:      rec.Image.EffectiveGuestID(),
		NumCPUs:      rec.Size.CPUs,
		MemoryMB:     rec.Size.MemoryMiB,
		Files:        &types.VirtualMachineFileInfo{VmPathName: fmt.Sprintf("[%s] %s", ds, name)},
		DeviceChange: devices,
		ExtraConfig:  extraConfig(rec),
		Annotation:   fmt.Sprintf("podvisor native VM %s (uid %s)", rec.Key(), rec.UID),
	}
	allocation(&spec, rec.Size)
	task, err := folder.CreateVM(ctx, spec, pool, h)
	if err != nil {
		return nil, fmt.Errorf("create VM %s on %s: %w", name, rec.Status.Host, err)
	}
	info, err := task.WaitForResult(ctx)
	if err != nil {
		return nil, fmt.Errorf("create VM %s on %s: %w", name, rec.Status.Host, err)
	}
	ref, ok := info.Result.(types.ManagedObjectReference)
	if !ok {
		return nil, fmt.Errorf("create VM %s: task result is %T", name, info.Result)
	}
	c.log.Info("native VM created", "vm", rec.Key(), "name", name, "ref", ref.Value, "host", rec.Status.Host)
	return object.NewVirtualMachine(c.vc, ref), nil
}

// allocation sets the class's reservations on a config spec.
func allocation(spec *types.VirtualMachineConfigSpec, size events.VMSize) {
	spec.CpuAllocation = &types.ResourceAllocationInfo{Reservation: types.NewInt64(size.CPUReservationMHz)}
	spec.MemoryAllocation = &types.ResourceAllocationInfo{Reservation: types.NewInt64(size.MemoryReservationMiB)}
}

const (
	scsiKey  int32 = -100
	diskKey0 int32 = -200
	nicKey0  int32 = -300
)

// devices is the device list of a new VM: a paravirtual SCSI controller,
// the boot disk at scsi0:0, extra disks after it, one NIC per network.
//
// A VM made again (again: vCenter lost the VM made before, a vCenter
// rebuilt from nothing, or an eviction removed it from the inventory) may
// have left its disks on the datastore: it keeps them, and what its guest
// wrote (a guest cluster's etcd data) with them.
func (c *Controller) devices(ctx context.Context, rec *events.VMRecord, ds, name string, again bool) ([]types.BaseVirtualDeviceConfigSpec, error) {
	changes := []types.BaseVirtualDeviceConfigSpec{scsiControllerAdd()}
	boot, capacity, err := c.bootDisk(ctx, rec, ds, name, again)
	if err != nil {
		return nil, err
	}
	unit := int32(0)
	changes = append(changes, diskChange(boot, capacity, scsiKey, unit, ""))
	for i, d := range rec.Spec.Disks {
		unit = int32(i + 1)
		if unit >= 7 {
			unit++ // unit 7 is the controller's own
		}
		file := fmt.Sprintf("[%s] %s/%s.vmdk", ds, name, d.Name)
		op := types.VirtualDeviceConfigSpecFileOperationCreate
		if again && c.diskExists(ctx, file) {
			op = "" // the lost VM's disk, kept
		}
		changes = append(changes, diskChange(file, d.SizeMiB()<<20, scsiKey, unit, op))
	}
	nics, err := c.nicChanges(ctx, rec.Status.NICs, nicKey0)
	if err != nil {
		return nil, err
	}
	return append(changes, nics...), nil
}

// scsiControllerAdd adds the paravirtual SCSI controller the disks hang on.
func scsiControllerAdd() *types.VirtualDeviceConfigSpec {
	return &types.VirtualDeviceConfigSpec{
		Operation: types.VirtualDeviceConfigSpecOperationAdd,
		Device: &types.ParaVirtualSCSIController{VirtualSCSIController: types.VirtualSCSIController{
			VirtualController: types.VirtualController{VirtualDevice: types.VirtualDevice{Key: scsiKey}},
			SharedBus:         types.VirtualSCSISharingNoSharing,
		}},
	}
}

func diskChange(file string, capacity int64, ctrl, unit int32, op types.VirtualDeviceConfigSpecFileOperation) *types.VirtualDeviceConfigSpec {
	return &types.VirtualDeviceConfigSpec{
		Operation:     types.VirtualDeviceConfigSpecOperationAdd,
		FileOperation: op,
		Device: &types.VirtualDisk{
			VirtualDevice: types.VirtualDevice{
				Key: diskKey0 - unit, ControllerKey: ctrl, UnitNumber: types.NewInt32(unit),
				Backing: &types.VirtualDiskFlatVer2BackingInfo{
					VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: file},
					DiskMode:                     string(types.VirtualDiskModePersistent), ThinProvisioned: types.NewBool(true),
				},
			},
			CapacityInKB:    capacity >> 10,
			CapacityInBytes: capacity,
		},
	}
}

func (c *Controller) nicChanges(ctx context.Context, nics []events.NetworkAttachment, key int32) ([]types.BaseVirtualDeviceConfigSpec, error) {
	var out []types.BaseVirtualDeviceConfigSpec
	for i, n := range nics {
		refs, err := c.find(ctx, "DistributedVirtualPortgroup", n.PortGroup)
		if err != nil {
			return nil, err
		}
		if len(refs) != 1 {
			return nil, fmt.Errorf("port group %s of network %s: not found", n.PortGroup, n.Network)
		}
		backing, err := object.NewDistributedVirtualPortgroup(c.vc, refs[0]).EthernetCardBackingInfo(ctx)
		if err != nil {
			return nil, fmt.Errorf("port group %s: %w", n.PortGroup, err)
		}
		out = append(out, &types.VirtualDeviceConfigSpec{
			Operation: types.VirtualDeviceConfigSpecOperationAdd,
			Device: &types.VirtualVmxnet3{VirtualVmxnet: types.VirtualVmxnet{VirtualEthernetCard: types.VirtualEthernetCard{
				VirtualDevice: types.VirtualDevice{Key: key - int32(i), Backing: backing,
					Connectable: &types.VirtualDeviceConnectInfo{StartConnected: true, Connected: true}},
				AddressType: string(types.VirtualEthernetCardMacTypeManual),
				MacAddress:  n.MAC,
			}}},
		})
	}
	return out, nil
}

// extraConfig is the cloud-init data as the VMware datasource reads it.
func extraConfig(rec *events.VMRecord) []types.BaseOptionValue {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	return []types.BaseOptionValue{
		&types.OptionValue{Key: GuestinfoMetadata, Value: b64(Metadata(rec))},
		&types.OptionValue{Key: GuestinfoMetadataEncoding, Value: "base64"},
		&types.OptionValue{Key: GuestinfoUserData, Value: b64(rec.Spec.UserData)},
		&types.OptionValue{Key: GuestinfoUserDataEncoding, Value: "base64"},
		&types.OptionValue{Key: "guestinfo.podvisor.vm", Value: rec.Key()},
		&types.OptionValue{Key: disksKey, Value: disksValue(rec.Spec.Disks)},
	}
}

// Metadata is the VM's cloud-init metadata: instance id, host name, and
// the NICs' addresses as a netplan v2 network configuration (one
// ethernets entry per NIC, matched by MAC, named eth<i>).
func Metadata(rec *events.VMRecord) string {
	var b strings.Builder
	fmt.Fprintf(&b, "instance-id: %s\nlocal-hostname: %s\n", rec.UID, rec.Name)
	if len(rec.Status.NICs) == 0 {
		return b.String()
	}
	b.WriteString("network:\n  version: 2\n  ethernets:\n")
	for i, n := range rec.Status.NICs {
		fmt.Fprintf(&b, "    nic%d:\n      match: {macaddress: %q}\n      set-name: eth%d\n      addresses: [%s/%d]\n",
			i, n.MAC, i, n.IP, n.PrefixLength)
		if n.Gateway != "" && i == 0 {
			fmt.Fprintf(&b, "      gateway4: %s\n", n.Gateway)
		}
	}
	return b.String()
}

// update applies a changed declaration to an existing VM: hardware (only
// powered off), extra disks (hot-added, extended, detached: disks.go),
// NICs, cloud-init data.
func (c *Controller) update(ctx context.Context, rec *events.VMRecord, vm *object.VirtualMachine) error {
	var m mo.VirtualMachine
	if err := vm.Properties(ctx, vm.Reference(), []string{"config", "runtime.powerState", "summary.runtime.bootTime"}, &m); err != nil {
		return fmt.Errorf("read VM %s: %w", vm.Reference().Value, err)
	}
	if m.Config == nil {
		return fmt.Errorf("VM %s has no configuration yet", vm.Reference().Value)
	}
	// Disks are planned first: a refused one (declared smaller than it
	// is) leaves the VM untouched, not even powered off for a resize.
	disks, err := c.planDisks(ctx, rec, m.Config)
	if err != nil {
		return err
	}
	var spec types.VirtualMachineConfigSpec
	changed := !disks.empty()
	spec.DeviceChange = disks.changes
	resize := m.Config.Hardware.NumCPU != rec.Size.CPUs || int64(m.Config.Hardware.MemoryMB) != rec.Size.MemoryMiB
	if resize {
		// vSphere resizes a powered-off VM (no hot-add here): power off,
		// resize, and converge restores the declared state. The guest's
		// boot ends here (power forgets it): the data written below is
		// read by the next boot, not noted as the one read by this one.
		if _, err := c.power(ctx, rec, vm, events.PowerStatePoweredOff); err != nil {
			return err
		}
		m.Runtime.PowerState, m.Summary.Runtime.BootTime = types.VirtualMachinePowerStatePoweredOff, nil
		spec.NumCPUs, spec.MemoryMB = rec.Size.CPUs, rec.Size.MemoryMiB
		allocation(&spec, rec.Size)
		changed = true
	}
	want := extraConfig(rec)
	have := map[string]any{}
	for _, o := range m.Config.ExtraConfig {
		have[o.GetOptionValue().Key] = o.GetOptionValue().Value
	}
	for _, o := range want {
		// vSphere removes a key set to "": a key it does not have is
		// one set to "", not a difference to write again every time.
		v, ok := have[o.GetOptionValue().Key]
		if !ok {
			v = ""
		}
		if v != o.GetOptionValue().Value {
			spec.ExtraConfig = want
			changed = true
			break
		}
	}
	// NICs: keep those whose MAC is still wanted, remove the others, add
	// the missing ones.
	devices := object.VirtualDeviceList(m.Config.Hardware.Device)
	wantMAC := map[string]bool{}
	for _, n := range rec.Status.NICs {
		wantMAC[strings.ToLower(n.MAC)] = true
	}
	haveMAC := map[string]bool{}
	for _, d := range devices.SelectByType((*types.VirtualEthernetCard)(nil)) {
		card := d.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
		mac := strings.ToLower(card.MacAddress)
		if wantMAC[mac] {
			haveMAC[mac] = true
			continue
		}
		spec.DeviceChange = append(spec.DeviceChange, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationRemove, Device: d})
		changed = true
	}
	var missing []events.NetworkAttachment
	for _, n := range rec.Status.NICs {
		if !haveMAC[strings.ToLower(n.MAC)] {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		adds, err := c.nicChanges(ctx, missing, nicKey0)
		if err != nil {
			return err
		}
		spec.DeviceChange = append(spec.DeviceChange, adds...)
		changed = true
	}
	if !changed {
		return nil
	}
	if spec.ExtraConfig != nil {
		// The guest read the data there is now when it booted (or it is
		// off): its boot is recorded with that data before new data
		// replaces it (guestnet.go).
		if err := c.noteBoot(ctx, rec, &m); err != nil {
			return err
		}
	}
	if err := c.extendFiles(ctx, disks); err != nil {
		return err
	}
	task, err := vm.Reconfigure(ctx, spec)
	if err == nil {
		_, err = task.WaitForResult(ctx)
	}
	if err != nil {
		return fmt.Errorf("reconfigure %s: %w", vm.Reference().Value, err)
	}
	c.log.Info("native VM reconfigured", "vm", rec.Key(), "resize", resize, "nics", len(rec.Status.NICs),
		"disks_added", disks.added, "disks_attached", disks.attached, "disks_grown", disks.grown, "disks_detached", disks.removed)
	return nil
}

// power puts the record's VM in a power state as setPower does, and keeps
// the record's guest boot in step (guestnet.go): a VM this controller
// powers off has no boot any more, and booted says it powered on a VM that
// was off, whose guest booted after every write of its data.
func (c *Controller) power(ctx context.Context, rec *events.VMRecord, vm *object.VirtualMachine, want string) (booted bool, err error) {
	was, err := c.changePower(ctx, vm, want)
	if err != nil || powerStateName(was) == want {
		return false, err
	}
	switch want {
	case events.PowerStatePoweredOff:
		// Forgotten now, not at the next converge's read: a VM powered
		// on again meanwhile (by update's caller, or behind the
		// controller's back) is a new boot even where vCenter reports
		// no boot time.
		if err := c.forgetBoot(ctx, rec); err != nil {
			return false, err
		}
	case events.PowerStatePoweredOn:
		booted = was == types.VirtualMachinePowerStatePoweredOff
	}
	return booted, nil
}

// setPower puts the VM in a power state; being there already is fine.
func (c *Controller) setPower(ctx context.Context, vm *object.VirtualMachine, want string) error {
	_, err := c.changePower(ctx, vm, want)
	return err
}

// changePower is setPower, and returns the power state the VM had.
func (c *Controller) changePower(ctx context.Context, vm *object.VirtualMachine, want string) (types.VirtualMachinePowerState, error) {
	st, err := vm.PowerState(ctx)
	if err != nil {
		return st, fmt.Errorf("power state of %s: %w", vm.Reference().Value, err)
	}
	if powerStateName(st) == want {
		return st, nil
	}
	var task *object.Task
	switch want {
	case events.PowerStatePoweredOn:
		task, err = vm.PowerOn(ctx)
	case events.PowerStatePoweredOff:
		task, err = vm.PowerOff(ctx)
	case events.PowerStateSuspended:
		if st != types.VirtualMachinePowerStatePoweredOn {
			// Only a running VM suspends: power it on first.
			if err := c.setPower(ctx, vm, events.PowerStatePoweredOn); err != nil {
				return st, err
			}
		}
		task, err = vm.Suspend(ctx)
	}
	if err == nil {
		_, err = task.WaitForResult(ctx)
	}
	if err != nil && !fault.Is(err, &types.InvalidPowerState{}) {
		return st, fmt.Errorf("set %s to %s: %w", vm.Reference().Value, want, err)
	}
	return st, nil
}

// destroy powers the VM off and destroys it (its boot disk copy and extra
// disks go with it), then removes its directory: the disks removed from
// its spec were kept there (disks.go), and vCenter deletes only the files
// of a VM's devices. A VM that is not there counts as destroyed; the files
// it left go all the same.
func (c *Controller) destroy(ctx context.Context, rec *events.VMRecord) error {
	name := events.NativeVMName(rec.UID)
	vm, err := c.findVM(ctx, name)
	if err != nil {
		return err
	}
	if vm != nil {
		if err := c.destroyVM(ctx, vm, name); err != nil {
			return err
		}
	}
	for _, ds := range c.dirDatastores(rec) {
		c.removeDirectory(ctx, ds, name)
	}
	if vm != nil {
		c.log.Info("native VM destroyed", "vm", rec.Key())
	}
	return nil
}

// dirDatastores are the datastores where the VM's directory may be: where
// an evicted VM left its files, and those the VM used when last seen.
func (c *Controller) dirDatastores(rec *events.VMRecord) []string {
	out := slices.Clone(rec.Status.Datastores)
	if rec.DisksOn != "" && !slices.Contains(out, rec.DisksOn) {
		out = append(out, rec.DisksOn)
	}
	return out
}

// destroyVM destroys vm (named name), or removes it from the inventory when
// its host does not respond, and checks that it is gone.
func (c *Controller) destroyVM(ctx context.Context, vm *object.VirtualMachine, name string) error {
	if err := c.setPower(ctx, vm, events.PowerStatePoweredOff); err != nil && !isNotFound(err) && !hostDown(err) {
		return err
	}
	task, err := vm.Destroy(ctx)
	if err == nil {
		_, err = task.WaitForResult(ctx)
	}
	if hostDown(err) {
		// Its host does not respond (an evicted VM not made again yet):
		// vCenter lets it be removed from the inventory only; its files
		// go through the datastore (destroy).
		if uerr := vm.Unregister(ctx); uerr != nil && !isNotFound(uerr) {
			return fmt.Errorf("destroy %s: %v; unregister: %w", vm.Reference().Value, err, uerr)
		}
		err = nil
	}
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("destroy %s: %w", vm.Reference().Value, err)
	}
	if again, err := c.findVM(ctx, name); err != nil {
		return err
	} else if again != nil {
		return fmt.Errorf("destroy %s: VM still present", vm.Reference().Value)
	}
	return nil
}

// removeStale removes the VM an eviction left behind (on a lost host, or
// on a drained host it could not be moved from) from vCenter's inventory,
// powered off first where its host lets it be, and leaves its files on the
// datastore for the VM made again (DisksOn). vCenter refuses to power off
// or destroy a VM whose host does not respond, and lets it be unregistered.
// A VM already gone counts as removed.
func (c *Controller) removeStale(ctx context.Context, rec *events.VMRecord) error {
	vm := object.NewVirtualMachine(c.vc, types.ManagedObjectReference{Type: "VirtualMachine", Value: rec.StaleVM})
	// A vCenter rebuilt from nothing numbers its VMs from the start again:
	// the reference may name another VM by now, which is not this one's to
	// remove.
	var m mo.VirtualMachine
	switch err := vm.Properties(ctx, vm.Reference(), []string{"name"}, &m); {
	case isNotFound(err):
		return nil
	case err != nil:
		return fmt.Errorf("read the VM %s left on %s: %w", rec.StaleVM, rec.StaleHost, err)
	case m.Name != events.NativeVMName(rec.UID):
		c.log.Warn("the reference of the VM an eviction left names another VM now; left alone", "vm", rec.Key(), "ref", rec.StaleVM, "name", m.Name)
		return nil
	}
	if err := c.setPower(ctx, vm, events.PowerStatePoweredOff); err != nil && !isNotFound(err) {
		c.log.Warn("stale VM does not power off (its host does not respond?); unregistering it", "vm", rec.Key(), "ref", rec.StaleVM, "err", err)
	}
	if err := vm.Unregister(ctx); err != nil && !isNotFound(err) {
		return fmt.Errorf("remove the VM %s left on %s from the inventory: %w", rec.StaleVM, rec.StaleHost, err)
	}
	c.log.Info("stale native VM unregistered, its files kept", "vm", rec.Key(), "ref", rec.StaleVM, "host", rec.StaleHost)
	return nil
}

// removeDirectory deletes a VM's directory on datastore ds, with its files.
func (c *Controller) removeDirectory(ctx context.Context, ds, name string) {
	c.removeFile(ctx, fmt.Sprintf("[%s] %s", ds, name))
}

// removeFile deletes a datastore file or directory; one already gone is
// removed, another failure is logged (what is left is only in the way).
func (c *Controller) removeFile(ctx context.Context, file string) {
	t, err := object.NewFileManager(c.vc).DeleteDatastoreFile(ctx, file, c.dc)
	if err == nil {
		err = t.Wait(ctx)
	}
	if err != nil && !fault.Is(err, &types.FileNotFound{}) {
		c.log.Warn("a VM's file not removed", "file", file, "err", err)
	}
}

// removeLeftovers deletes what a VM that vCenter lost left beside its disks
// in its directory and would refuse a new VM of its name: its
// configuration (.vmx) and log.
func (c *Controller) removeLeftovers(ctx context.Context, ds, name string) {
	for _, f := range []string{name + ".vmx", "vmware.log"} {
		c.removeFile(ctx, fmt.Sprintf("[%s] %s/%s", ds, name, f))
	}
}

// diskExists reports whether the virtual disk file (a datastore path) is
// there.
func (c *Controller) diskExists(ctx context.Context, file string) bool {
	_, err := object.NewVirtualDiskManager(c.vc).QueryVirtualDiskUuid(ctx, file, c.dc)
	return err == nil
}

// hostDown reports whether vCenter refused a call because the VM's host
// does not respond.
func hostDown(err error) bool {
	return err != nil && fault.Is(err, &types.InvalidHostConnectionState{})
}

func isNotFound(err error) bool {
	return fault.Is(err, &types.ManagedObjectNotFound{}) || errors.Is(err, errNotFound)
}

var errNotFound = errors.New("not found")

// ensureFolder returns the VM folder at rel below the datacenter's VM
// folder, creating what is missing (DuplicateName means another worker won).
func (c *Controller) ensureFolder(ctx context.Context, rel string) (*object.Folder, error) {
	folders, err := c.dc.Folders(ctx)
	if err != nil {
		return nil, fmt.Errorf("folders of %s: %w", c.dc.Name(), err)
	}
	cur := folders.VmFolder
	for _, part := range strings.Split(strings.Trim(rel, "/"), "/") {
		next, err := c.childFolder(ctx, cur, part)
		if err != nil {
			return nil, err
		}
		if next == nil {
			next, err = cur.CreateFolder(ctx, part)
			if fault.Is(err, &types.DuplicateName{}) {
				next, err = c.childFolder(ctx, cur, part)
			}
			if err != nil || next == nil {
				return nil, fmt.Errorf("create folder %s: %v", part, err)
			}
		}
		cur = next
	}
	return cur, nil
}

func (c *Controller) childFolder(ctx context.Context, parent *object.Folder, name string) (*object.Folder, error) {
	var f mo.Folder
	if err := parent.Properties(ctx, parent.Reference(), []string{"childEntity"}, &f); err != nil {
		return nil, fmt.Errorf("folder children: %w", err)
	}
	for _, ref := range f.ChildEntity {
		if ref.Type != "Folder" {
			continue
		}
		var child mo.Folder
		if err := property.DefaultCollector(c.vc).RetrieveOne(ctx, ref, []string{"name"}, &child); err != nil {
			continue
		}
		if child.Name == name {
			return object.NewFolder(c.vc, ref), nil
		}
	}
	return nil, nil
}

// datastoreNames names the datastores refs, sorted.
func (c *Controller) datastoreNames(ctx context.Context, refs []types.ManagedObjectReference) ([]string, error) {
	byRef, err := vsphere.Names(ctx, c.vc, refs)
	if err != nil {
		return nil, err
	}
	return slices.Sorted(maps.Values(byRef)), nil
}
