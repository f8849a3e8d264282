package events

import (
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// The vm.* domain (stream VMS, subjects pv.vm.>). Requests come from any
// client (the CLI, a guest cluster's supervisor); the provisioner's native
// VM controller owns the VM, class and image records and publishes the
// facts about them; the scheduler places VMs in the same ledger as pods;
// network-config attaches their NICs from the same IPAM; the migration
// service evicts them from lost hosts. ObjectKey is <namespace>/<name> for
// VMs and the name for classes and images.

// VMDeclared creates a native VM or changes an existing one (VMs are
// mutable: the provisioner converges the VM to the newest declaration).
type VMDeclared struct {
	// VM is the declared object; its status is ignored.
	VM VirtualMachine `json:"vm"`
}

// Validate checks the declaration.
func (e *VMDeclared) Validate() error { return asError(e.VM.validate(field.NewPath("vm"))) }

// ObjectKey is the VM key <namespace>/<name>.
func (e *VMDeclared) ObjectKey() string { return e.VM.Key() }

// VMDeleteRequested asks to power off and destroy a native VM.
type VMDeleteRequested struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// Validate checks the reference.
func (e *VMDeleteRequested) Validate() error {
	return asError(validateVMRef(e.Namespace, e.Name, "", false))
}

// ObjectKey is the VM key <namespace>/<name>.
func (e *VMDeleteRequested) ObjectKey() string { return PodKey(e.Namespace, e.Name) }

// VMClassDeclared creates or changes a VirtualMachineClass. VMs already
// using the class are resized to it (when powered off, as any resize).
type VMClassDeclared struct {
	Class VirtualMachineClass `json:"class"`
}

// Validate checks the class.
func (e *VMClassDeclared) Validate() error {
	return asError(e.Class.validate(field.NewPath("class")))
}

// ObjectKey is the class name.
func (e *VMClassDeclared) ObjectKey() string { return e.Class.Metadata.Name }

// VMImageDeclared creates or changes a VirtualMachineImage.
type VMImageDeclared struct {
	Image VirtualMachineImage `json:"image"`
}

// Validate checks the image.
func (e *VMImageDeclared) Validate() error {
	return asError(e.Image.validate(field.NewPath("image")))
}

// ObjectKey is the image name.
func (e *VMImageDeclared) ObjectKey() string { return e.Image.Metadata.Name }

// VMClassDeleteRequested removes a class; refused (vm.rejected, reason
// InUse) while a VM uses it.
type VMClassDeleteRequested struct {
	Name string `json:"name"`
}

// Validate checks the name.
func (e *VMClassDeleteRequested) Validate() error {
	return asError(validateDNSLabel(field.NewPath("name"), e.Name))
}

// ObjectKey is the class name.
func (e *VMClassDeleteRequested) ObjectKey() string { return e.Name }

// VMImageDeleteRequested removes an image; refused while a VM uses it.
type VMImageDeleteRequested struct {
	Name string `json:"name"`
}

// Validate checks the name.
func (e *VMImageDeleteRequested) Validate() error {
	return asError(validateDNSLabel(field.NewPath("name"), e.Name))
}

// ObjectKey is the image name.
func (e *VMImageDeleteRequested) ObjectKey() string { return e.Name }

// VMMigrateRequested asks to move a native VM to another host (vMotion).
type VMMigrateRequested struct {
	// ID names this migration in later events.
	ID        string `json:"id"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// TargetHost, when set, is where to go; otherwise the scheduler picks.
	TargetHost string `json:"targetHost,omitempty"`
}

// Validate checks the reference and target.
func (e *VMMigrateRequested) Validate() error {
	errs := validateToken(field.NewPath("id"), e.ID, true)
	errs = append(errs, validateVMRef(e.Namespace, e.Name, "", false)...)
	if e.TargetHost != "" {
		errs = append(errs, validateHostName(field.NewPath("targetHost"), e.TargetHost)...)
	}
	return asError(errs)
}

// ObjectKey is the VM key <namespace>/<name>.
func (e *VMMigrateRequested) ObjectKey() string { return PodKey(e.Namespace, e.Name) }

// VMRejected says a request about a VM, class or image was refused and
// why; nothing changed.
type VMRejected struct {
	// Kind is VirtualMachine, VirtualMachineClass or VirtualMachineImage.
	Kind string `json:"kind"`
	// Namespace of a VirtualMachine; empty for classes and images.
	Namespace string `json:"namespace,omitempty"`
	// Name of the object.
	Name string `json:"name"`
	// Reason is a CamelCase word: Invalid, NotFound, InUse, ...
	Reason string `json:"reason"`
	// Message explains for a person, naming every bad field.
	Message string `json:"message"`
	// Field is the path of the first offending field, when there is one.
	Field string `json:"field,omitempty"`
}

// Validate checks the fields.
func (e *VMRejected) Validate() error {
	var errs field.ErrorList
	switch e.Kind {
	case KindVirtualMachine:
		errs = append(errs, validateDNSLabel(field.NewPath("namespace"), e.Namespace)...)
	case KindVirtualMachineClass, KindVirtualMachineImage:
		if e.Namespace != "" {
			errs = append(errs, field.Forbidden(field.NewPath("namespace"), e.Kind+" is cluster-scoped"))
		}
	default:
		errs = append(errs, field.NotSupported(field.NewPath("kind"), e.Kind,
			[]string{KindVirtualMachine, KindVirtualMachineClass, KindVirtualMachineImage}))
	}
	errs = append(errs, required(field.NewPath("name"), e.Name)...)
	errs = append(errs, validateFailure(e.Reason, e.Message)...)
	return asError(errs)
}

// ObjectKey is <namespace>/<name> for a VM, the name otherwise.
func (e *VMRejected) ObjectKey() string {
	if e.Kind == KindVirtualMachine {
		return PodKey(e.Namespace, e.Name)
	}
	return e.Name
}

// VMAccepted says the provisioner admitted a declaration (a new VM or a new
// generation of one): what the scheduler places and network-config
// attaches. Published once per generation.
type VMAccepted struct {
	VMRef
	// Generation of this declaration.
	Generation int64 `json:"generation"`
	// Spec is the declared spec (defaults applied: powerState, networks).
	Spec VirtualMachineSpec `json:"spec"`
	// Size is the class compiled at acceptance.
	Size VMSize `json:"size"`
	// Labels of the VM (the scheduler's spread and anti-affinity read them).
	Labels map[string]string `json:"labels,omitempty"`
}

// Validate checks identity, spec and size.
func (e *VMAccepted) Validate() error {
	errs := e.VMRef.validate()
	errs = append(errs, validatePositive(field.NewPath("generation"), e.Generation)...)
	errs = append(errs, e.Spec.validate(field.NewPath("spec"))...)
	if e.Spec.PowerState == "" {
		errs = append(errs, field.Required(field.NewPath("spec", "powerState"), "defaults are applied before publishing"))
	}
	if len(e.Spec.Networks) == 0 {
		errs = append(errs, field.Required(field.NewPath("spec", "networks"), "defaults are applied before publishing"))
	}
	errs = append(errs, e.Size.validate(field.NewPath("size"))...)
	return asError(errs)
}

// VMScheduled binds a VM to a host: the scheduler reserved its size in the
// host's ledger entry (the same entries pods are charged to).
type VMScheduled struct {
	VMRef
	// Generation the placement was made for (a resize re-checks the room).
	Generation int64 `json:"generation"`
	// Host, Cluster, ResourcePool and Datastores as in pod.scheduled.
	Host         string   `json:"host"`
	Cluster      string   `json:"cluster"`
	ResourcePool string   `json:"resourcePool,omitempty"`
	Datastores   []string `json:"datastores,omitempty"`
}

// Validate checks identity and placement.
func (e *VMScheduled) Validate() error {
	errs := e.VMRef.validate()
	errs = append(errs, validatePositive(field.NewPath("generation"), e.Generation)...)
	errs = append(errs, validateHostName(field.NewPath("host"), e.Host)...)
	errs = append(errs, validateObjectName(field.NewPath("cluster"), e.Cluster)...)
	errs = append(errs, validateNames(field.NewPath("datastores"), e.Datastores, validateObjectName)...)
	return asError(errs)
}

// VMUnschedulable says no host can take the VM (or its new size) now; the
// scheduler retries by itself as room frees up.
type VMUnschedulable struct {
	VMRef
	Generation int64 `json:"generation"`
	// Message, Reasons and Hosts as in pod.unschedulable.
	Message string         `json:"message"`
	Reasons map[string]int `json:"reasons,omitempty"`
	Hosts   int            `json:"hosts"`
}

// Validate checks identity and the message.
func (e *VMUnschedulable) Validate() error {
	errs := e.VMRef.validate()
	errs = append(errs, required(field.NewPath("message"), e.Message)...)
	errs = append(errs, validateNonNegative(field.NewPath("hosts"), int64(e.Hosts))...)
	for _, r := range sortedKeys(e.Reasons) {
		errs = append(errs, validateReason(field.NewPath("reasons").Key(r), r)...)
	}
	return asError(errs)
}

// VMNetworkAttached says every network of the VM (at Generation) is
// realized on its host and each NIC has an address.
type VMNetworkAttached struct {
	VMRef
	Generation int64  `json:"generation"`
	Host       string `json:"host"`
	// Attachments, one per network in spec.networks order (NIC order).
	Attachments []NetworkAttachment `json:"attachments"`
}

// Validate checks identity and each attachment.
func (e *VMNetworkAttached) Validate() error {
	errs := e.VMRef.validate()
	errs = append(errs, validatePositive(field.NewPath("generation"), e.Generation)...)
	errs = append(errs, validateHostName(field.NewPath("host"), e.Host)...)
	errs = append(errs, validateAttachments(e.Attachments)...)
	return asError(errs)
}

// VMNetworkFailed says a network of the VM could not be attached.
type VMNetworkFailed struct {
	VMRef
	Generation int64  `json:"generation"`
	Host       string `json:"host,omitempty"`
	Network    string `json:"network"`
	Reason     string `json:"reason"`
	Message    string `json:"message"`
}

// Validate checks identity and the reason.
func (e *VMNetworkFailed) Validate() error {
	errs := e.VMRef.validate()
	errs = append(errs, validateOptionalHost(field.NewPath("host"), e.Host)...)
	errs = append(errs, validateDNSLabel(field.NewPath("network"), e.Network)...)
	errs = append(errs, validateFailure(e.Reason, e.Message)...)
	return asError(errs)
}

// VMStatusChanged publishes a VM's new observed status whenever its phase,
// power state, host or addresses change (the record in KV `vms` holds the
// same; this event is for those who follow the stream).
type VMStatusChanged struct {
	Namespace string               `json:"namespace"`
	Name      string               `json:"name"`
	Status    VirtualMachineStatus `json:"status"`
}

// Validate checks identity and the status.
func (e *VMStatusChanged) Validate() error {
	errs := validateVMRef(e.Namespace, e.Name, e.Status.UID, true)
	switch e.Status.Phase {
	case VMPhasePending, VMPhaseCreating, VMPhaseReady, VMPhaseUpdating, VMPhaseMigrating, VMPhaseFailed, VMPhaseDeleting:
	default:
		errs = append(errs, field.NotSupported(field.NewPath("status", "phase"), e.Status.Phase,
			[]string{VMPhasePending, VMPhaseCreating, VMPhaseReady, VMPhaseUpdating, VMPhaseMigrating, VMPhaseFailed, VMPhaseDeleting}))
	}
	switch e.Status.PowerState {
	case "", PowerStatePoweredOn, PowerStatePoweredOff, PowerStateSuspended:
	default:
		errs = append(errs, field.NotSupported(field.NewPath("status", "powerState"), e.Status.PowerState,
			[]string{PowerStatePoweredOn, PowerStatePoweredOff, PowerStateSuspended}))
	}
	if e.Status.Host != "" {
		errs = append(errs, validateHostName(field.NewPath("status", "host"), e.Status.Host)...)
	}
	for i, ip := range e.Status.IPs {
		errs = append(errs, validateIPv4(field.NewPath("status", "ips").Index(i), ip, true)...)
	}
	errs = append(errs, e.Status.Network.validate(field.NewPath("status", "network"))...)
	return asError(errs)
}

// ObjectKey is the VM key <namespace>/<name>.
func (e *VMStatusChanged) ObjectKey() string { return PodKey(e.Namespace, e.Name) }

// VMMigrationTargetReserved says the scheduler reserved room for a VM on
// the target of a migration (as migration.target.reserved does for pods).
type VMMigrationTargetReserved struct {
	ID string `json:"id"`
	VMRef
	SourceHost   string `json:"sourceHost"`
	TargetHost   string `json:"targetHost"`
	Cluster      string `json:"cluster"`
	ResourcePool string `json:"resourcePool,omitempty"`
}

// Validate checks identity and both hosts.
func (e *VMMigrationTargetReserved) Validate() error {
	errs := validateToken(field.NewPath("id"), e.ID, true)
	errs = append(errs, e.VMRef.validate()...)
	errs = append(errs, validateHostMove(e.SourceHost, e.TargetHost)...)
	errs = append(errs, validateObjectName(field.NewPath("cluster"), e.Cluster)...)
	return asError(errs)
}

// VMMigrationAdmitted says a VM's migration, its target reserved, has room
// under the migration limits (the migration service's queue, shared with
// pods' migrations: it counts against its source host, its source cluster
// and its target's cluster): the native VM controller relocates it now.
type VMMigrationAdmitted struct {
	VMMigrationTargetReserved
}

// VMMigrated says a VM now runs on TargetHost (or, with Reason set, that
// the migration failed and it stayed on SourceHost); the scheduler frees
// the room it no longer uses and network-config moves the port bindings.
type VMMigrated struct {
	ID string `json:"id"`
	VMRef
	SourceHost string `json:"sourceHost"`
	TargetHost string `json:"targetHost"`
	// Reason is empty on success, a CamelCase word on failure (the
	// migration was rejected or the relocation failed).
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

// Failed reports whether the VM stayed where it was.
func (e *VMMigrated) Failed() bool { return e.Reason != "" }

// Validate checks identity and hosts.
func (e *VMMigrated) Validate() error {
	errs := validateToken(field.NewPath("id"), e.ID, true)
	errs = append(errs, e.VMRef.validate()...)
	errs = append(errs, validateHostName(field.NewPath("sourceHost"), e.SourceHost)...)
	if e.Reason == "" || e.TargetHost != "" {
		errs = append(errs, validateHostName(field.NewPath("targetHost"), e.TargetHost)...)
	}
	if e.Reason != "" {
		errs = append(errs, validateFailure(e.Reason, e.Message)...)
	}
	return asError(errs)
}

// VMEvicted says a VM lost its host (host lost or drained without a
// migration); it is placed again and re-created there.
type VMEvicted struct {
	VMRef
	Host    string `json:"host"`
	Reason  string `json:"reason"`
	Message string `json:"message,omitempty"`
}

// Validate checks identity, host and reason.
func (e *VMEvicted) Validate() error {
	errs := e.VMRef.validate()
	errs = append(errs, validateHostName(field.NewPath("host"), e.Host)...)
	errs = append(errs, validateReason(field.NewPath("reason"), e.Reason)...)
	return asError(errs)
}

// VMDeleted says the VM is gone and its record removed; the scheduler frees
// its ledger allocation and network-config its addresses.
type VMDeleted struct {
	VMRef
	// Host the VM was bound to; empty if it never was.
	Host string `json:"host,omitempty"`
	// IPs the VM held.
	IPs []NetworkIP `json:"ips,omitempty"`
}

// Validate checks identity and what is to be released.
func (e *VMDeleted) Validate() error {
	errs := e.VMRef.validate()
	errs = append(errs, validateOptionalHost(field.NewPath("host"), e.Host)...)
	for i, ip := range e.IPs {
		p := field.NewPath("ips").Index(i)
		errs = append(errs, validateDNSLabel(p.Child("network"), ip.Network)...)
		errs = append(errs, validateIPv4(p.Child("ip"), ip.IP, true)...)
	}
	return asError(errs)
}

// validateVMRef checks the namespace/name/uid triple of VM events. VM
// names are DNS labels (they become guest host names).
func validateVMRef(namespace, name, uid string, uidRequired bool) field.ErrorList {
	errs := validateDNSLabel(field.NewPath("namespace"), namespace)
	errs = append(errs, validateDNSLabel(field.NewPath("name"), name)...)
	errs = append(errs, validateToken(field.NewPath("uid"), uid, uidRequired)...)
	return errs
}
