package podvm

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"sort"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"
)

// Spec is the desired shape of one pod VM.
type Spec struct {
	// Name is the VM name, pv-<uid>.
	Name string
	// VCPUs and MemoryMiB come from the shared sizing (events.SizePodVM).
	VCPUs     int32
	MemoryMiB int64
	// GuestID is the vSphere guest OS identifier; empty means
	// otherLinux64Guest, what a minimal pod VM kernel reports.
	GuestID string
	// NICs are attached in order: the first is the pod's primary network.
	NICs []NIC
	// EphemeralDiskMiB is the capacity of disk 0, the pod's ephemeral disk
	// (thin: it takes only what the containers write). 0 means
	// DefaultEphemeralDiskMiB.
	EphemeralDiskMiB int64
	// EphemeralTemplate is the datastore path of a pre-formatted disk of
	// disk 0's capacity (see ephemeral.go): disk 0 is created as its child
	// and starts formatted. Empty: disk 0 is created blank and the guest's
	// agent formats it.
	EphemeralTemplate string
	// ImageDisks are the datastore paths of the image chain disks the
	// pod's containers use, each once, attached read-only after disk 0 in
	// this order (DiskDevice(1), DiskDevice(2), ...).
	ImageDisks []string
	// ExtraConfig is written verbatim (guestinfo.podvisor.* keys).
	ExtraConfig map[string]string
	// ChannelURI, when set, gives the VM two serial ports (ChannelPorts):
	// its console in a file beside its other files, and the network
	// serial port its agent talks on, which the host connects to this
	// address (ParseChannelURI).
	ChannelURI string
	// BootDisk is the datastore path of the pod VM boot image's disk
	// (`podvisor install` uploads it as "[DS] podvisor/boot-<digest12>/
	// podvm.vmdk"): attached on SATA 0:0, independent-nonpersistent (one
	// file shared read-only by every pod VM; what a VM writes to it goes
	// to a redo log vSphere discards at power-off) and made the first boot
	// device, as in the template `podvisor install` makes. Empty: no boot
	// disk, what the simulated datacenter's guests need (they run the
	// agent without booting a kernel).
	BootDisk string
}

// ephemeralMiB is disk 0's capacity.
func (s Spec) ephemeralMiB() int64 {
	if s.EphemeralDiskMiB == 0 {
		return DefaultEphemeralDiskMiB
	}
	return s.EphemeralDiskMiB
}

// DefaultEphemeralDiskMiB is disk 0's capacity when the spec names none:
// 8 GiB, thin.
const DefaultEphemeralDiskMiB = 8 << 10

// portGroups are the port groups of the spec's NICs, in order.
func (s Spec) portGroups() []string {
	out := make([]string, len(s.NICs))
	for i, n := range s.NICs {
		out[i] = n.PortGroup
	}
	return out
}

// NIC is one network attachment of the pod.
type NIC struct {
	// Network is the logical network name (informational).
	Network string
	// PortGroup is the distributed port group, pv-<network>.
	PortGroup string
	// MAC is the address network-config allocated; empty lets vCenter
	// generate one.
	MAC string
}

// Placement says where a pod VM goes.
type Placement struct {
	// Host is the ESXi host's inventory name.
	Host string
	// Pool is the inventory path of a resource pool; empty means the root
	// pool of the host's cluster.
	Pool string
	// Folder is the VM folder path below the datacenter's VM folder, for
	// example "podvisor/default" or "podvisor/default/shard-3".
	Folder string
	// Datastore holds the VM's files and its ephemeral disk; empty means
	// the datastore of the first image disk.
	Datastore string
	// RemoveLeftovers deletes files left under the VM's directory before
	// creating it. Set when the pod had a VM (or a create attempt) before:
	// a first creation has nothing to remove and skips the extra call.
	RemoveLeftovers bool
}

// DefaultGuestID is what a pod VM declares when Spec.GuestID is empty.
const DefaultGuestID = "otherLinux64Guest"

// disksPerController is the number of disks a SCSI controller takes: units
// 0-15 minus unit 7, which the controller itself occupies.
const disksPerController = 15

// maxControllers is the number of SCSI controllers a VM may have.
const maxControllers = 4

// Validate checks a spec before anything is sent to vCenter: a malformed
// spec is the caller's bug and must not become a half-created VM.
func (s Spec) Validate() error {
	var errs []error
	if !strings.HasPrefix(s.Name, "pv-") || len(s.Name) > 80 {
		errs = append(errs, fmt.Errorf("name %q: must start with pv- and be at most 80 characters", s.Name))
	}
	if s.VCPUs <= 0 {
		errs = append(errs, fmt.Errorf("vcpus %d: must be greater than zero", s.VCPUs))
	}
	if s.MemoryMiB <= 0 {
		errs = append(errs, fmt.Errorf("memoryMiB %d: must be greater than zero", s.MemoryMiB))
	}
	if s.EphemeralDiskMiB < 0 {
		errs = append(errs, fmt.Errorf("ephemeralDiskMiB %d: must not be negative (0 means %d)", s.EphemeralDiskMiB, DefaultEphemeralDiskMiB))
	}
	if s.EphemeralTemplate != "" {
		if _, err := parseDatastorePath(s.EphemeralTemplate); err != nil {
			errs = append(errs, fmt.Errorf("ephemeralTemplate: %w", err))
		}
	}
	if s.BootDisk != "" {
		if _, err := ParseBootDisk(s.BootDisk); err != nil {
			errs = append(errs, fmt.Errorf("bootDisk: %w", err))
		}
	}
	if len(s.ImageDisks) == 0 {
		errs = append(errs, errors.New("imageDisks: a pod VM needs at least one image disk"))
	}
	if n := 1 + len(s.ImageDisks); n > disksPerController*maxControllers {
		errs = append(errs, fmt.Errorf("imageDisks: %d disks with the ephemeral one, a pod VM holds at most %d", n, disksPerController*maxControllers))
	}
	seen := map[string]bool{}
	for i, d := range s.ImageDisks {
		if _, err := parseDatastorePath(d); err != nil {
			errs = append(errs, fmt.Errorf("imageDisks[%d]: %w", i, err))
		}
		if seen[d] {
			errs = append(errs, fmt.Errorf("imageDisks[%d] %q: attached twice (containers of one image share its disks)", i, d))
		}
		seen[d] = true
	}
	for i, n := range s.NICs {
		if n.PortGroup == "" {
			errs = append(errs, fmt.Errorf("nics[%d].portGroup: required", i))
		}
	}
	return errors.Join(errs...)
}

// ParseBootDisk reads a boot disk's datastore path (Spec.BootDisk, the
// provisioner's setting): a datastore and a .vmdk descriptor in it.
func ParseBootDisk(p string) (object.DatastorePath, error) {
	dp, err := parseDatastorePath(p)
	if err == nil && !strings.HasSuffix(dp.Path, ".vmdk") {
		err = fmt.Errorf("%q does not name a disk descriptor (.vmdk), such as \"[datastore1] podvisor/boot-0123456789ab/podvm.vmdk\"", p)
	}
	return dp, err
}

func parseDatastorePath(p string) (object.DatastorePath, error) {
	var dp object.DatastorePath
	if !dp.FromString(p) || dp.Datastore == "" || dp.Path == "" {
		return dp, fmt.Errorf("%q is not a datastore path such as \"[datastore1] dir/disk.vmdk\"", p)
	}
	return dp, nil
}

// BuildConfigSpec turns a spec into the CreateVM config. datastore is where
// the VM's files go; nics holds the backing of each Spec.NICs entry, resolved
// from vCenter by the caller (only the port group key and switch UUID are
// vCenter facts; everything else here is a pure function of the spec).
func BuildConfigSpec(s Spec, datastore string, nics []types.BaseVirtualDeviceBackingInfo) (types.VirtualMachineConfigSpec, error) {
	if err := s.Validate(); err != nil {
		return types.VirtualMachineConfigSpec{}, err
	}
	if len(nics) != len(s.NICs) {
		return types.VirtualMachineConfigSpec{}, fmt.Errorf("nics: %d backings for %d attachments", len(nics), len(s.NICs))
	}
	guest := s.GuestID
	if guest == "" {
		guest = DefaultGuestID
	}
	cs := types.VirtualMachineConfigSpec{
		Name:     s.Name,
		GuestId:  guest,
		NumCPUs:  s.VCPUs,
		MemoryMB: s.MemoryMiB,
		Files:    &types.VirtualMachineFileInfo{VmPathName: fmt.Sprintf("[%s]", datastore)},
		// The guest reads its spec from guestinfo; a pod VM has no use for
		// the VM's UUID changing on copy, so none of the copy/move knobs.
		ExtraConfig: extraConfig(s.extraConfig()),
	}

	// Negative keys are how a config spec refers to devices it is adding.
	key := int32(-100)
	nextKey := func() int32 { key--; return key }

	disks := 1 + len(s.ImageDisks)
	controllers := (disks + disksPerController - 1) / disksPerController
	ctrlKeys := make([]int32, controllers)
	for i := range controllers {
		ctrlKeys[i] = nextKey()
		ctrl := &types.ParaVirtualSCSIController{VirtualSCSIController: types.VirtualSCSIController{
			SharedBus: types.VirtualSCSISharingNoSharing,
			VirtualController: types.VirtualController{
				BusNumber:     int32(i),
				VirtualDevice: types.VirtualDevice{Key: ctrlKeys[i]},
			},
		}}
		cs.DeviceChange = append(cs.DeviceChange, &types.VirtualDeviceConfigSpec{
			Operation: types.VirtualDeviceConfigSpecOperationAdd,
			Device:    ctrl,
		})
	}
	disk := func(i int, b *types.VirtualDiskFlatVer2BackingInfo, capacityKB int64) *types.VirtualDisk {
		unit := int32(i % disksPerController)
		if unit >= 7 {
			unit++ // unit 7 is the controller's own
		}
		return &types.VirtualDisk{
			VirtualDevice: types.VirtualDevice{
				Key:           nextKey(),
				ControllerKey: ctrlKeys[i/disksPerController],
				UnitNumber:    types.NewInt32(unit),
				Backing:       b,
			},
			CapacityInKB: capacityKB,
		}
	}

	// Disk 0: the ephemeral disk, created with the VM in its directory and
	// destroyed with it. Thin, so a pod pays only for what it writes; with
	// a template, a child (delta) of the pre-formatted template disk, so it
	// starts formatted (the template is never written: the child holds
	// the VM's writes).
	eph := &types.VirtualDiskFlatVer2BackingInfo{
		VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: EphemeralDiskPath(datastore, s.Name)},
		DiskMode:                     string(types.VirtualDiskModePersistent),
		ThinProvisioned:              types.NewBool(true),
	}
	if s.EphemeralTemplate != "" {
		eph.Parent = &types.VirtualDiskFlatVer2BackingInfo{
			VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: s.EphemeralTemplate},
			DiskMode:                     string(types.VirtualDiskModePersistent),
			ThinProvisioned:              types.NewBool(true),
		}
	}
	cs.DeviceChange = append(cs.DeviceChange, &types.VirtualDeviceConfigSpec{
		Operation:     types.VirtualDeviceConfigSpecOperationAdd,
		FileOperation: types.VirtualDeviceConfigSpecFileOperationCreate,
		Device:        disk(0, eph, s.ephemeralMiB()*1024),
	})
	// The image disks: existing files, shared by every pod VM of the image,
	// attached independent-nonpersistent so that no write of this VM ever
	// reaches them (the guest mounts them read-only anyway).
	for i, path := range s.ImageDisks {
		cs.DeviceChange = append(cs.DeviceChange, &types.VirtualDeviceConfigSpec{
			Operation: types.VirtualDeviceConfigSpecOperationAdd,
			Device: disk(1+i, &types.VirtualDiskFlatVer2BackingInfo{
				VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: path},
				DiskMode:                     string(types.VirtualDiskModeIndependent_nonpersistent),
			}, 0),
		})
	}

	if s.BootDisk != "" {
		cs.DeviceChange = append(cs.DeviceChange, BootDiskDevices(s.BootDisk, nextKey)...)
	}
	if s.ChannelURI != "" {
		cs.DeviceChange = append(cs.DeviceChange, ChannelPorts(datastore, s.Name, s.ChannelURI, nextKey)...)
	}

	for i, n := range s.NICs {
		card := &types.VirtualVmxnet3{VirtualVmxnet: types.VirtualVmxnet{VirtualEthernetCard: types.VirtualEthernetCard{
			VirtualDevice: types.VirtualDevice{
				Key:     nextKey(),
				Backing: nics[i],
				Connectable: &types.VirtualDeviceConnectInfo{
					StartConnected:    true,
					AllowGuestControl: true,
					Connected:         true,
				},
			},
		}}}
		if n.MAC != "" {
			card.AddressType = string(types.VirtualEthernetCardMacTypeManual)
			card.MacAddress = n.MAC
		} else {
			card.AddressType = string(types.VirtualEthernetCardMacTypeGenerated)
		}
		cs.DeviceChange = append(cs.DeviceChange, &types.VirtualDeviceConfigSpec{
			Operation: types.VirtualDeviceConfigSpecOperationAdd,
			Device:    card,
		})
	}
	return cs, nil
}

// BootDiskDevices adds the boot image's disk on a SATA controller of its
// own (BootDiskUnit), apart from the pod's SCSI disks whose units the guest
// spec names: the existing file, independent-nonpersistent, no file
// operation. nextKey gives each new device its (negative) key. BootOrderKey
// and HDDOrderKey make it the disk the BIOS boots from. `podvisor install`
// builds its template with it too.
func BootDiskDevices(path string, nextKey func() int32) []types.BaseVirtualDeviceConfigSpec {
	ctrl := &types.VirtualAHCIController{VirtualSATAController: types.VirtualSATAController{
		VirtualController: types.VirtualController{BusNumber: 0, VirtualDevice: types.VirtualDevice{Key: nextKey()}}}}
	disk := &types.VirtualDisk{VirtualDevice: types.VirtualDevice{
		Key:           nextKey(),
		ControllerKey: ctrl.Key,
		UnitNumber:    types.NewInt32(0),
		Backing: &types.VirtualDiskFlatVer2BackingInfo{
			VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: path},
			DiskMode:                     string(types.VirtualDiskModeIndependent_nonpersistent),
		},
	}}
	return []types.BaseVirtualDeviceConfigSpec{
		&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: ctrl},
		&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: disk},
	}
}

// ChannelDevice is the channel a pod VM's agent is told (guestinfo) when
// the VM has ChannelPorts: its second serial port.
const ChannelDevice = "serial:/dev/ttyS1"

// ChannelSchemes are the schemes of the channel addresses a vSphere host
// connects a network serial port to that a concentrator serves: TCP, and
// TLS over TCP (ssl:// is tcp+ssl://), the port's own connection; and
// ProxySchemes.
var ChannelSchemes = append([]string{"tcp://", "tcp4://", "tcp6://", "ssl://", "tcp+ssl://", "tcp4+ssl://", "tcp6+ssl://"}, ProxySchemes...)

// ProxySchemes are the schemes of a concentrator that serves as the ports'
// virtual serial port concentrator (vSPC): the host speaks the VMware telnet
// extension to it (telnets: over TLS), says which VM the port is, and asks
// it before a vMotion. vSphere vMotions a VM with a network serial port
// only through such a proxy.
var ProxySchemes = []string{"telnet://", "telnets://"}

// ProxyServiceURI is the service URI of a channel port behind a proxy: the
// port's name, which the host passes on to the proxy (DO-PROXY).
const ProxyServiceURI = "podvisor-channel"

// IsProxyURI reports whether a channel address names a proxy (ProxySchemes).
func IsProxyURI(uri string) bool {
	for _, scheme := range ProxySchemes {
		if strings.HasPrefix(uri, scheme) {
			return true
		}
	}
	return false
}

// ParseChannelURI checks a channel address: a TCP address the VM's host
// connects its network serial port to, "tcp://host:port", with TLS
// "ssl://host:port", or a proxy's, "telnet://host:port" or
// "telnets://host:port" (ChannelSchemes).
func ParseChannelURI(uri string) error {
	for _, scheme := range ChannelSchemes {
		if rest, ok := strings.CutPrefix(uri, scheme); ok {
			if host, port, err := net.SplitHostPort(rest); err != nil || host == "" || port == "" {
				break
			}
			return nil
		}
	}
	return fmt.Errorf("%q: want telnet://host:port (telnets:// to a concentrator serving TLS) or tcp://host:port (ssl://), the address of a host agent's concentrator that every host can reach", uri)
}

// ChannelPorts are a pod VM's two serial ports where its channel is a
// network serial port: COM1 (the guest's ttyS0, where the boot image's
// kernel writes its console) backed by console.log in the VM's directory,
// and COM2 (ttyS1, ChannelDevice) backed by uri, direction client: the
// host the VM runs on connects to it, again after a relocation. Where uri
// names a proxy (IsProxyURI) the port is the proxy's: direction server (the
// VM's side is the port; the proxy stands for the remote system), service
// URI ProxyServiceURI; its host connects it to the proxy and moves it with
// the VM. The console has a port of its own so that nothing but frames is
// written on the channel's.
func ChannelPorts(datastore, vmName, uri string, nextKey func() int32) []types.BaseVirtualDeviceConfigSpec {
	port := func(unit int32, b types.BaseVirtualDeviceBackingInfo) *types.VirtualDeviceConfigSpec {
		return &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: &types.VirtualSerialPort{
			VirtualDevice: types.VirtualDevice{Key: nextKey(), UnitNumber: types.NewInt32(unit), Backing: b,
				Connectable: &types.VirtualDeviceConnectInfo{StartConnected: true, Connected: true}},
			// The guest polls its ports; without this a VM spinning on an
			// idle port takes a whole core of its host.
			YieldOnPoll: true,
		}}
	}
	return []types.BaseVirtualDeviceConfigSpec{
		port(0, &types.VirtualSerialPortFileBackingInfo{VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{
			FileName: fmt.Sprintf("[%s] %s/console.log", datastore, vmName)}}),
		port(1, channelBacking(uri)),
	}
}

// channelBacking is the channel port's backing for uri.
func channelBacking(uri string) *types.VirtualSerialPortURIBackingInfo {
	if IsProxyURI(uri) {
		return &types.VirtualSerialPortURIBackingInfo{VirtualDeviceURIBackingInfo: types.VirtualDeviceURIBackingInfo{
			ServiceURI: ProxyServiceURI, ProxyURI: uri, Direction: string(types.VirtualDeviceURIBackingOptionDirectionServer)}}
	}
	return &types.VirtualSerialPortURIBackingInfo{VirtualDeviceURIBackingInfo: types.VirtualDeviceURIBackingInfo{
		ServiceURI: uri, Direction: string(types.VirtualDeviceURIBackingOptionDirectionClient)}}
}

// EphemeralDiskPath is where a pod VM's disk 0 lives: in the VM's own
// directory, so that destroying the VM (or removing leftovers of a VM
// vCenter forgot) removes it.
func EphemeralDiskPath(datastore, vmName string) string {
	return fmt.Sprintf("[%s] %s/ephemeral.vmdk", datastore, vmName)
}

// The VMX settings that make a VM's BIOS boot from the boot disk: a BIOS
// boots from one hard disk only, and without them it may pick the pod's
// disk 0 (SCSI), which has no boot sector. They name the disk by its
// unit, so they hold in the CreateVM spec itself; the API's
// BootOptions.BootOrder names a device by its key, which a create only
// knows as a placeholder.
const (
	BootOrderKey = "bios.bootOrder"
	HDDOrderKey  = "bios.hddOrder"
	BootDiskUnit = "sata0:0"
	// BootOrderHDD is BootOrderKey's value: hard disks only.
	BootOrderHDD = "hdd"
)

// extraConfig is the VM's ExtraConfig at create: the spec's, and the boot
// order when it has a boot disk (an instant clone's child inherits it).
func (s Spec) extraConfig() map[string]string {
	if s.BootDisk == "" {
		return s.ExtraConfig
	}
	m := maps.Clone(s.ExtraConfig)
	if m == nil {
		m = map[string]string{}
	}
	m[BootOrderKey], m[HDDOrderKey] = BootOrderHDD, BootDiskUnit
	return m
}

// extraConfig renders the map sorted by key, so that two builds of the same
// spec are identical (useful in tests and when diffing a VM's config).
func extraConfig(m map[string]string) []types.BaseOptionValue {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]types.BaseOptionValue, 0, len(keys))
	for _, k := range keys {
		out = append(out, &types.OptionValue{Key: k, Value: m[k]})
	}
	return out
}

// DiskDevice is the unit of the VM's i-th disk (0 = the ephemeral disk, then
// ImageDisks in order) in the layout BuildConfigSpec uses: 15 disks per SCSI
// controller, unit 7 skipped. The guest spec names disks by it.
func DiskDevice(i int) string {
	unit := i % disksPerController
	if unit >= 7 {
		unit++
	}
	return fmt.Sprintf("scsi%d:%d", i/disksPerController, unit)
}
