package events

import (
	"fmt"
	"net/netip"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Native VMs (podvisor.io/v1alpha1), after VM Operator's VirtualMachine,
// VirtualMachineClass and VirtualMachineImage:
//
//	apiVersion: podvisor.io/v1alpha1
//	kind: VirtualMachineClass
//	metadata: {name: small}
//	spec: {cpus: 2, memory: 4Gi, reservations: {cpuMHz: 1000, memory: 1Gi}}
//	---
//	apiVersion: podvisor.io/v1alpha1
//	kind: VirtualMachineImage
//	metadata: {name: vmos}
//	spec: {oci: registry.local/podvisor/vmos:1.0, contentLibrary: {library: podvisor, item: vmos}}
//	---
//	apiVersion: podvisor.io/v1alpha1
//	kind: VirtualMachine
//	metadata: {name: vm1, namespace: team-a}
//	spec: {className: small, imageName: vmos, powerState: PoweredOn, networks: [default], userData: "#cloud-config ..."}
//
// Classes and images are cluster-scoped; VirtualMachines live in a
// namespace. Unlike pods, a VirtualMachine is mutable: declaring it again
// with another power state, class or networks converges the existing VM
// (a class change resizes it, which vSphere allows only while it is
// powered off: the provisioner powers it off, resizes, and restores the
// declared power state).

// Kinds of the native VM objects.
const (
	KindVirtualMachine      = "VirtualMachine"
	KindVirtualMachineClass = "VirtualMachineClass"
	KindVirtualMachineImage = "VirtualMachineImage"
)

// Power states of a VirtualMachine (spec.powerState and status.powerState),
// vSphere's own words.
const (
	PowerStatePoweredOn  = "PoweredOn"
	PowerStatePoweredOff = "PoweredOff"
	PowerStateSuspended  = "Suspended"
)

// Limits of a VM's declared hardware and data.
const (
	// MaxVMCPUs is the most vCPUs a class may give (vSphere 8's limit is
	// 768; a class beyond a host's cores would never place anyway).
	MaxVMCPUs = 768
	// MaxVMUserData bounds the cloud-init user data: it travels inside
	// vm.declared and vm.accepted (64 KiB each) and in the VM's ExtraConfig.
	MaxVMUserData = 32 << 10
	// MaxVMDisks is how many extra disks a VM may declare (SCSI controller
	// 0 has 15 usable units; unit 0 is the boot disk).
	MaxVMDisks = 14
)

// DefaultGuestID is the vSphere guest OS identifier of an image that names
// none.
const DefaultGuestID = "otherLinux64Guest"

// NamespacedMeta is the metadata of podvisor's namespaced objects
// (VirtualMachine): Meta plus the namespace, "default" when empty.
type NamespacedMeta struct {
	// Name of the object, a DNS-1123 label (it becomes a vCenter VM name
	// and a guest host name).
	Name string `json:"name"`
	// Namespace of the object; empty means "default".
	Namespace string `json:"namespace,omitempty"`
	// Labels, free for users, checked with the Kubernetes label rules.
	Labels map[string]string `json:"labels,omitempty"`
	// Annotations, free for users.
	Annotations map[string]string `json:"annotations,omitempty"`
}

// VirtualMachineClass is a VM size: vCPUs, memory and reservations.
type VirtualMachineClass struct {
	// APIVersion must be podvisor.io/v1alpha1 when set.
	APIVersion string `json:"apiVersion,omitempty"`
	// Kind must be VirtualMachineClass when set.
	Kind string `json:"kind,omitempty"`
	// Metadata holds the class name, a DNS-1123 label.
	Metadata Meta `json:"metadata"`
	// Spec is the hardware.
	Spec VirtualMachineClassSpec `json:"spec"`
}

// VirtualMachineClassSpec is the hardware of a class.
type VirtualMachineClassSpec struct {
	// CPUs is the number of vCPUs, 1 to MaxVMCPUs.
	CPUs int `json:"cpus"`
	// Memory is a Kubernetes quantity (4Gi, 512Mi); the VM gets it rounded
	// up to whole MiB and to vSphere's 4 MiB granularity.
	Memory string `json:"memory"`
	// Reservations are what vSphere guarantees the VM; zero means none.
	Reservations VMReservations `json:"reservations,omitzero"`
}

// VMReservations are vSphere CPU and memory reservations.
type VMReservations struct {
	// CPUMHz is the CPU reservation in MHz.
	CPUMHz int64 `json:"cpuMHz,omitempty"`
	// Memory is the memory reservation, a quantity no larger than the
	// class's memory.
	Memory string `json:"memory,omitempty"`
}

// VMSize is a class compiled into what vSphere and the scheduler use; the
// provisioner computes it once when it accepts a VM, so every service
// reserves and configures the same thing.
type VMSize struct {
	// CPUs is the vCPU count.
	CPUs int32 `json:"cpus"`
	// MemoryMiB is the configured memory, a multiple of 4.
	MemoryMiB int64 `json:"memoryMiB"`
	// CPUReservationMHz and MemoryReservationMiB are the reservations.
	CPUReservationMHz    int64 `json:"cpuReservationMHz,omitempty"`
	MemoryReservationMiB int64 `json:"memoryReservationMiB,omitempty"`
}

// CPUMilli is what the scheduler's ledger charges for the VM: a vCPU is a
// core, as a pod VM's vCPU is.
func (s VMSize) CPUMilli() int64 { return int64(s.CPUs) * 1000 }

// MemoryBytes is what the ledger charges: the configured memory.
func (s VMSize) MemoryBytes() int64 { return s.MemoryMiB * mib }

func (s VMSize) validate(p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if s.CPUs < 1 || s.CPUs > MaxVMCPUs {
		errs = append(errs, field.Invalid(p.Child("cpus"), s.CPUs, fmt.Sprintf("must be between 1 and %d", MaxVMCPUs)))
	}
	if s.MemoryMiB <= 0 || s.MemoryMiB%memoryMiBGranularity != 0 {
		errs = append(errs, field.Invalid(p.Child("memoryMiB"), s.MemoryMiB, "must be a positive multiple of 4"))
	}
	errs = append(errs, validateNonNegative(p.Child("cpuReservationMHz"), s.CPUReservationMHz)...)
	if s.MemoryReservationMiB < 0 || s.MemoryReservationMiB > s.MemoryMiB {
		errs = append(errs, field.Invalid(p.Child("memoryReservationMiB"), s.MemoryReservationMiB, "must be between 0 and memoryMiB"))
	}
	return errs
}

// Size compiles the class (call Validate first; a bad quantity counts 0).
func (c *VirtualMachineClass) Size() VMSize {
	mem, _ := parseMiB(c.Spec.Memory)
	res, _ := parseMiB(c.Spec.Reservations.Memory)
	return VMSize{CPUs: int32(c.Spec.CPUs), MemoryMiB: roundMiB(mem), CPUReservationMHz: c.Spec.Reservations.CPUMHz,
		MemoryReservationMiB: min(roundMiB(res), roundMiB(mem))}
}

func parseMiB(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return 0, err
	}
	b := q.Value()
	return (b + mib - 1) / mib, nil
}

func roundMiB(m int64) int64 {
	return (m + memoryMiBGranularity - 1) / memoryMiBGranularity * memoryMiBGranularity
}

// Validate checks the class; paths start at the object root.
func (c *VirtualMachineClass) Validate() error { return asError(c.validate(nil)) }

func (c *VirtualMachineClass) validate(p *field.Path) field.ErrorList {
	errs := validateTypeMeta(p, c.APIVersion, c.Kind, APIVersion, KindVirtualMachineClass)
	errs = append(errs, validateDNSLabel(p.Child("metadata", "name"), c.Metadata.Name)...)
	errs = append(errs, validateLabels(p.Child("metadata", "labels"), c.Metadata.Labels)...)
	sp := p.Child("spec")
	if c.Spec.CPUs < 1 || c.Spec.CPUs > MaxVMCPUs {
		errs = append(errs, field.Invalid(sp.Child("cpus"), c.Spec.CPUs, fmt.Sprintf("must be between 1 and %d", MaxVMCPUs)))
	}
	mem, merrs := validateMemory(sp.Child("memory"), c.Spec.Memory, true)
	errs = append(errs, merrs...)
	errs = append(errs, validateNonNegative(sp.Child("reservations", "cpuMHz"), c.Spec.Reservations.CPUMHz)...)
	res, rerrs := validateMemory(sp.Child("reservations", "memory"), c.Spec.Reservations.Memory, false)
	errs = append(errs, rerrs...)
	if len(merrs) == 0 && len(rerrs) == 0 && res > mem {
		errs = append(errs, field.Invalid(sp.Child("reservations", "memory"), c.Spec.Reservations.Memory,
			"must not exceed spec.memory "+c.Spec.Memory))
	}
	return errs
}

func validateMemory(p *field.Path, v string, mandatory bool) (int64, field.ErrorList) {
	if v == "" {
		if mandatory {
			return 0, field.ErrorList{field.Required(p, "a quantity such as 4Gi")}
		}
		return 0, nil
	}
	q, err := resource.ParseQuantity(v)
	if err != nil {
		return 0, field.ErrorList{field.Invalid(p, v, "must be a quantity such as 4Gi or 512Mi")}
	}
	if q.Sign() <= 0 || (mandatory && q.Value() < 4*mib) {
		return 0, field.ErrorList{field.Invalid(p, v, "must be at least 4Mi")}
	}
	if q.Value() > 24<<40 {
		return 0, field.ErrorList{field.Invalid(p, v, "must be at most 24Ti (vSphere's VM limit)")}
	}
	return q.Value(), nil
}

// VirtualMachineImage names where a VM's disk and OS come from.
type VirtualMachineImage struct {
	// APIVersion must be podvisor.io/v1alpha1 when set.
	APIVersion string `json:"apiVersion,omitempty"`
	// Kind must be VirtualMachineImage when set.
	Kind string `json:"kind,omitempty"`
	// Metadata holds the image name, a DNS-1123 label.
	Metadata Meta `json:"metadata"`
	// Spec says where the image is.
	Spec VirtualMachineImageSpec `json:"spec"`
}

// VirtualMachineImageSpec names the image's sources; at least one is set.
// With a content library item the VM is deployed from that OVF template;
// with an OCI image a simulated guest boots the image's root filesystem
// (its /sbin/init runs as the guest's PID 1). Both may be set: the VM is
// deployed from the library and its simulated guest boots the OCI root.
type VirtualMachineImageSpec struct {
	// ContentLibrary is an OVF template in a vCenter content library.
	ContentLibrary *ContentLibraryItem `json:"contentLibrary,omitempty"`
	// OCI is an image reference whose root filesystem holds /sbin/init.
	OCI string `json:"oci,omitempty"`
	// GuestID is the vSphere guest OS identifier; empty means
	// otherLinux64Guest.
	GuestID string `json:"guestId,omitempty"`
}

// ContentLibraryItem names an item of a vCenter content library.
type ContentLibraryItem struct {
	// Library is the content library's name.
	Library string `json:"library"`
	// Item is the library item's name (an OVF template).
	Item string `json:"item"`
}

// EffectiveGuestID is GuestID with the default applied.
func (s VirtualMachineImageSpec) EffectiveGuestID() string {
	if s.GuestID == "" {
		return DefaultGuestID
	}
	return s.GuestID
}

// Validate checks the image; paths start at the object root.
func (m *VirtualMachineImage) Validate() error { return asError(m.validate(nil)) }

func (m *VirtualMachineImage) validate(p *field.Path) field.ErrorList {
	errs := validateTypeMeta(p, m.APIVersion, m.Kind, APIVersion, KindVirtualMachineImage)
	errs = append(errs, validateDNSLabel(p.Child("metadata", "name"), m.Metadata.Name)...)
	errs = append(errs, validateLabels(p.Child("metadata", "labels"), m.Metadata.Labels)...)
	errs = append(errs, m.Spec.validate(p.Child("spec"))...)
	return errs
}

func (s *VirtualMachineImageSpec) validate(p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if s.ContentLibrary == nil && s.OCI == "" {
		errs = append(errs, field.Required(p, "contentLibrary (an OVF template) or oci (a root filesystem with /sbin/init)"))
	}
	if cl := s.ContentLibrary; cl != nil {
		errs = append(errs, validateObjectName(p.Child("contentLibrary", "library"), cl.Library)...)
		errs = append(errs, validateObjectName(p.Child("contentLibrary", "item"), cl.Item)...)
	}
	if s.OCI != "" {
		errs = append(errs, validateImageRef(p.Child("oci"), s.OCI)...)
	}
	if s.GuestID != "" {
		errs = append(errs, validateToken(p.Child("guestId"), s.GuestID, true)...)
	}
	return errs
}

// VirtualMachine is a native VM as a user declares it.
type VirtualMachine struct {
	// APIVersion must be podvisor.io/v1alpha1 when set.
	APIVersion string `json:"apiVersion,omitempty"`
	// Kind must be VirtualMachine when set.
	Kind string `json:"kind,omitempty"`
	// Metadata names the VM in its namespace.
	Metadata NamespacedMeta `json:"metadata"`
	// Spec is the desired state.
	Spec VirtualMachineSpec `json:"spec"`
	// Status is the observed state; ignored (and may be absent) in a
	// declaration, filled by `podvisor get vm -o json`.
	Status *VirtualMachineStatus `json:"status,omitempty"`
}

// VirtualMachineSpec is the desired state of a native VM.
type VirtualMachineSpec struct {
	// ClassName names a VirtualMachineClass.
	ClassName string `json:"className"`
	// ImageName names a VirtualMachineImage.
	ImageName string `json:"imageName"`
	// PowerState is PoweredOn (the default), PoweredOff or Suspended.
	PowerState string `json:"powerState,omitempty"`
	// Networks are logical networks, one NIC each in order; empty means
	// [default]. Each NIC gets an address from the network's IPAM.
	Networks []string `json:"networks,omitempty"`
	// Disks are extra virtual disks besides the image's boot disk.
	Disks []VMDisk `json:"disks,omitempty"`
	// UserData is cloud-init user data, delivered as guestinfo.userdata
	// (base64, guestinfo.userdata.encoding=base64), where cloud-init's
	// VMware datasource reads it; guestinfo.metadata carries the instance
	// id, host name and network configuration the same way.
	UserData string `json:"userData,omitempty"`
}

// VMDisk is an extra disk of a VM.
type VMDisk struct {
	// Name of the disk, a DNS-1123 label unique in the VM.
	Name string `json:"name"`
	// Size is a quantity such as 10Gi.
	Size string `json:"size"`
}

// SizeMiB is the disk size rounded up to whole MiB (0 if unparsable).
func (d VMDisk) SizeMiB() int64 {
	m, _ := parseMiB(d.Size)
	return m
}

// VMBootDiskName is the name of a VM's boot disk: its file is root.vmdk in
// the VM's directory, beside the extra disks' (<name>.vmdk), so no extra
// disk may take it.
const VMBootDiskName = "root"

// ChangeRefused says why a VM that exists with spec prev cannot take next,
// naming each field; nil when it can. A disk keeps its size or grows:
// vSphere extends a virtual disk in place but never shrinks one (nor could
// the guest's filesystem on it lose its end). A disk of another name, or
// one removed and declared again, is not compared here: the controller
// refuses a file it finds larger than declared.
func (next VirtualMachineSpec) ChangeRefused(prev VirtualMachineSpec) error {
	was := map[string]VMDisk{}
	for _, d := range prev.Disks {
		was[d.Name] = d
	}
	var errs field.ErrorList
	for i, d := range next.Disks {
		old, ok := was[d.Name]
		if !ok || d.SizeMiB() >= old.SizeMiB() {
			continue
		}
		errs = append(errs, field.Forbidden(field.NewPath("spec", "disks").Index(i).Child("size"), fmt.Sprintf(
			"disk %s is %s (%d MiB) and cannot shrink to %s (%d MiB): vSphere extends a virtual disk but never shrinks one; declare %s or more, or a disk of another name",
			d.Name, old.Size, old.SizeMiB(), d.Size, d.SizeMiB(), old.Size)))
	}
	return asError(errs)
}

// EffectivePowerState is PowerState with the default applied.
func (s VirtualMachineSpec) EffectivePowerState() string {
	if s.PowerState == "" {
		return PowerStatePoweredOn
	}
	return s.PowerState
}

// EffectiveNetworks is Networks with the default applied.
func (s VirtualMachineSpec) EffectiveNetworks() []string {
	if len(s.Networks) == 0 {
		return []string{DefaultNetwork}
	}
	return s.Networks
}

// Namespace is metadata.namespace with the default applied.
func (v *VirtualMachine) Namespace() string {
	if v.Metadata.Namespace == "" {
		return DefaultNamespace
	}
	return v.Metadata.Namespace
}

// Key is <namespace>/<name>, the VM's key on the bus and in work queues.
func (v *VirtualMachine) Key() string { return PodKey(v.Namespace(), v.Metadata.Name) }

// Validate checks the VM; paths start at the object root.
func (v *VirtualMachine) Validate() error { return asError(v.validate(nil)) }

func (v *VirtualMachine) validate(p *field.Path) field.ErrorList {
	errs := validateTypeMeta(p, v.APIVersion, v.Kind, APIVersion, KindVirtualMachine)
	errs = append(errs, validateDNSLabel(p.Child("metadata", "name"), v.Metadata.Name)...)
	if v.Metadata.Namespace != "" {
		errs = append(errs, validateDNSLabel(p.Child("metadata", "namespace"), v.Metadata.Namespace)...)
	}
	errs = append(errs, validateLabels(p.Child("metadata", "labels"), v.Metadata.Labels)...)
	errs = append(errs, v.Spec.validate(p.Child("spec"))...)
	return errs
}

func (s *VirtualMachineSpec) validate(p *field.Path) field.ErrorList {
	errs := validateDNSLabel(p.Child("className"), s.ClassName)
	errs = append(errs, validateDNSLabel(p.Child("imageName"), s.ImageName)...)
	switch s.PowerState {
	case "", PowerStatePoweredOn, PowerStatePoweredOff, PowerStateSuspended:
	default:
		errs = append(errs, field.NotSupported(p.Child("powerState"), s.PowerState,
			[]string{PowerStatePoweredOn, PowerStatePoweredOff, PowerStateSuspended}))
	}
	errs = append(errs, validateNames(p.Child("networks"), s.Networks, validateDNSLabel)...)
	if len(s.Disks) > MaxVMDisks {
		errs = append(errs, field.TooMany(p.Child("disks"), len(s.Disks), MaxVMDisks))
	}
	seen := map[string]bool{}
	for i, d := range s.Disks {
		dp := p.Child("disks").Index(i)
		errs = append(errs, validateDNSLabel(dp.Child("name"), d.Name)...)
		if d.Name == VMBootDiskName {
			errs = append(errs, field.Invalid(dp.Child("name"), d.Name,
				"is the boot disk's name (its file root.vmdk is beside the extra disks' in the VM's directory); choose another"))
		}
		if seen[d.Name] {
			errs = append(errs, field.Duplicate(dp.Child("name"), d.Name))
		}
		seen[d.Name] = true
		_, derrs := validateMemory(dp.Child("size"), d.Size, true)
		errs = append(errs, derrs...)
	}
	if len(s.UserData) > MaxVMUserData {
		errs = append(errs, field.TooLong(p.Child("userData"), field.OmitValueType{}, MaxVMUserData))
	}
	return errs
}

// VM phases (status.phase), as `podvisor get vms` prints them.
const (
	// VMPhasePending: accepted, waiting for a host (or its networks).
	VMPhasePending = "Pending"
	// VMPhaseCreating: placed; the VM is being created in vCenter.
	VMPhaseCreating = "Creating"
	// VMPhaseReady: the VM exists and is in its declared power state with
	// its declared class, networks and disks.
	VMPhaseReady = "Ready"
	// VMPhaseUpdating: a changed declaration is being applied (resize,
	// NICs, disks, power state).
	VMPhaseUpdating = "Updating"
	// VMPhaseMigrating: the VM is moving to another host.
	VMPhaseMigrating = "Migrating"
	// VMPhaseFailed: the VM cannot be converged; the conditions say why.
	VMPhaseFailed = "Failed"
	// VMPhaseDeleting: a delete was requested.
	VMPhaseDeleting = "Deleting"
)

// VM condition types (status.conditions[].type).
const (
	VMConditionAccepted        = "Accepted"
	VMConditionScheduled       = "Scheduled"
	VMConditionNetworkAttached = "NetworkAttached"
	VMConditionCreated         = "Created"
	// VMConditionPowerStateSynced: status.powerState equals the declared one.
	VMConditionPowerStateSynced = "PowerStateSynced"
	// VMConditionHardwareSynced: the VM's devices, read back from vCenter
	// after they were applied, match the declaration: its class's CPUs
	// and memory, one NIC per attached network, and each of spec.disks
	// attached at its size (False with the reason and the difference
	// otherwise, e.g. DiskShrinkRefused).
	VMConditionHardwareSynced = "HardwareSynced"
	// VMConditionGuestNetworkConfigured: the guest has the address of
	// every NIC of status.nics configured: the VM runs, and the cloud-init
	// network data it read at its last boot gave each card its address.
	// False otherwise, with the reason of the first NIC that lacks it
	// (VMGuestNetwork* reasons) and a message naming each.
	VMConditionGuestNetworkConfigured = "GuestNetworkConfigured"
)

// Reasons a NIC's allocated address is not configured in the guest
// (status.network.interfaces[].reason, and the GuestNetworkConfigured
// condition's reason).
const (
	// VMGuestNetworkNotAttached: vCenter reports no card of the NIC's MAC
	// on the VM (HardwareSynced says why).
	VMGuestNetworkNotAttached = "NotAttached"
	// VMGuestNetworkNotRunning: the VM is not powered on; its guest
	// configures its network when it boots.
	VMGuestNetworkNotRunning = "GuestNotRunning"
	// VMGuestNetworkRebootRequired: the card (or its address) came while
	// the guest ran. A guest applies its cloud-init network data at boot,
	// not when a card is hot-added: it has the card, unconfigured, until
	// the VM is powered off and on.
	VMGuestNetworkRebootRequired = "RebootRequired"
)

// VirtualMachineStatus is the observed state of a native VM.
type VirtualMachineStatus struct {
	// UID the provisioner assigned; the vCenter VM is named nv-<uid>.
	UID string `json:"uid,omitempty"`
	// Generation of the declaration last applied (1 for the first, +1 for
	// every declaration that changed the spec).
	Generation int64 `json:"generation,omitempty"`
	// Phase is one of the VMPhase* constants.
	Phase string `json:"phase"`
	// PowerState is what vCenter reports.
	PowerState string `json:"powerState,omitempty"`
	// Host the VM runs on.
	Host string `json:"host,omitempty"`
	// VM is the managed object reference (vm-42).
	VM string `json:"vm,omitempty"`
	// Datastores hold the VM's files (its disks). A vMotion moves the VM
	// and not its storage, so a host it moves to must mount every one.
	Datastores []string `json:"datastores,omitempty"`
	// IPs are the addresses the guest has configured, in network order:
	// those of network.interfaces[].ip. An address allocated to a NIC the
	// guest has not configured (the VM is off, or the NIC was hot-added
	// to the running VM) is in nics and not here.
	IPs []string `json:"ips"`
	// NICs are the attachments (network-config's allocations), in network
	// order.
	NICs []NetworkAttachment `json:"nics,omitempty"`
	// Network is what the VM and its guest have of those NICs.
	Network VMNetworkStatus `json:"network,omitzero"`
	// Size is what the VM is configured with.
	Size VMSize `json:"size,omitzero"`
	// Conditions are the VM's progress, as on pods.
	Conditions []PodCondition `json:"conditions,omitempty"`
}

// VMNetworkStatus is what a native VM and its guest have of the VM's NICs,
// after VM Operator's status.network: each NIC attached or not, with the
// address allocated to it and the addresses its guest has configured.
//
// A VM's guest (cloud-init, with the VMware datasource) configures its
// network from the cloud-init data (guestinfo.metadata) once, when it
// boots; a card hot-added later is in the guest, unconfigured, until the
// next boot. Simulated guests and the sample image's init do the same.
// With no guest report of its addresses (VMware Tools' guest.net), what
// the guest has configured is what the data it booted with gave it
// (GuestBoot), while it runs.
type VMNetworkStatus struct {
	// Interfaces are the VM's NICs (status.nics), in network order.
	Interfaces []VMNetworkInterfaceStatus `json:"interfaces,omitempty"`
	// GuestBoot is the guest's last boot as vCenter reports it and the
	// network data it read then; nil while the VM is powered off (a
	// suspended VM's guest keeps the configuration it booted with).
	GuestBoot *VMGuestBoot `json:"guestBoot,omitempty"`
}

// VMNetworkInterfaceStatus is one NIC of a native VM.
type VMNetworkInterfaceStatus struct {
	// Name is the NIC's network (its entry of spec.networks).
	Name string `json:"name"`
	// MACAddr is the card's MAC address (lower case).
	MACAddr string `json:"macAddr"`
	// Attached: vCenter reports a card of this MAC on the VM.
	Attached bool `json:"attached"`
	// Allocated is the address network-config allocated to the NIC, with
	// its prefix length (10.244.0.7/16): what the VM's cloud-init network
	// data gives the card (VM Operator's
	// status.network.config.interfaces[].ip.addresses).
	Allocated string `json:"allocated"`
	// IP is what the guest has configured on the card.
	IP VMNetworkInterfaceIPStatus `json:"ip,omitzero"`
	// Reason says why the guest has not configured Allocated (a
	// VMGuestNetwork* reason); "" when it has.
	Reason string `json:"reason,omitempty"`
}

// VMNetworkInterfaceIPStatus is what a guest has configured on a card.
type VMNetworkInterfaceIPStatus struct {
	// Addresses the guest has configured, with their prefix length.
	Addresses []string `json:"addresses,omitempty"`
}

// VMGuestBoot is a guest's boot and the network data it read at it.
type VMGuestBoot struct {
	// Time is the boot's time as vCenter reports it
	// (summary.runtime.bootTime): another time is another boot.
	Time time.Time `json:"time"`
	// Addresses are the addresses the network data gave each card, by
	// MAC (lower case), with their prefix length.
	Addresses map[string]string `json:"addresses,omitempty"`
}

func (n *VMNetworkStatus) validate(p *field.Path) field.ErrorList {
	var errs field.ErrorList
	for i, in := range n.Interfaces {
		ip := p.Child("interfaces").Index(i)
		errs = append(errs, validateDNSLabel(ip.Child("name"), in.Name)...)
		errs = append(errs, validateMAC(ip.Child("macAddr"), in.MACAddr)...)
		errs = append(errs, validateAddressWithPrefix(ip.Child("allocated"), in.Allocated)...)
		for j, a := range in.IP.Addresses {
			errs = append(errs, validateAddressWithPrefix(ip.Child("ip", "addresses").Index(j), a)...)
		}
		switch in.Reason {
		case "":
		case VMGuestNetworkNotAttached, VMGuestNetworkNotRunning, VMGuestNetworkRebootRequired:
			if len(in.IP.Addresses) > 0 {
				errs = append(errs, field.Invalid(ip.Child("reason"), in.Reason, "must be empty: the guest has the card's address configured"))
			}
		default:
			errs = append(errs, field.NotSupported(ip.Child("reason"), in.Reason,
				[]string{VMGuestNetworkNotAttached, VMGuestNetworkNotRunning, VMGuestNetworkRebootRequired}))
		}
	}
	if b := n.GuestBoot; b != nil {
		for mac, a := range b.Addresses {
			ap := p.Child("guestBoot", "addresses").Key(mac)
			errs = append(errs, validateMAC(ap, mac)...)
			errs = append(errs, validateAddressWithPrefix(ap, a)...)
		}
	}
	return errs
}

// validateAddressWithPrefix checks an IPv4 address with its prefix length
// (10.244.0.7/16).
func validateAddressWithPrefix(p *field.Path, v string) field.ErrorList {
	return validateWith(p, v, func(v string) bool {
		a, err := netip.ParsePrefix(v)
		return err == nil && a.Addr().Is4()
	}, "must be an IPv4 address with its prefix length, such as 10.244.0.7/16")
}

// NativeVMName is the vCenter name of a native VM: nv-<uid> (pod VMs are
// pv-<uid>), deterministic so that a retry finds the VM it created.
func NativeVMName(uid string) string { return "nv-" + uid }
