package events

import (
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Reasons of PodRejected. Other reasons are allowed (CamelCase words); these
// are the ones the provisioner's admission produces.
const (
	// ReasonInvalid: the manifest failed validation; Field names the first
	// offending field and Message lists all of them.
	ReasonInvalid = "Invalid"
	// ReasonAlreadyExists: a pod of that name exists with a different spec
	// (pods are immutable: delete first).
	ReasonAlreadyExists = "AlreadyExists"
	// ReasonNotFound: a delete or migration named a pod that does not exist.
	ReasonNotFound = "NotFound"
	// ReasonUIDMismatch: a delete named a pod by uid and the current pod of
	// that name has another uid (it was deleted and re-created meanwhile).
	ReasonUIDMismatch = "UIDMismatch"
)

// PodRequested asks podvisor to run a pod. Any client may publish it.
type PodRequested struct {
	// Pod is the Kubernetes v1 Pod manifest, accepted as-is and checked with
	// ValidatePod. An empty metadata.namespace means "default".
	Pod corev1.Pod `json:"pod"`
	// UID must be empty: the provisioner assigns every pod its uid (derived
	// from the request's event id, so a redelivered request gets the same
	// one). A uid chosen by a client could name another pod's VM
	// (pv-<uid>) and, on delete, free its address or destroy it.
	UID string `json:"uid,omitempty"`
}

// uidAssigned is why a client's uid is refused.
const uidAssigned = "podvisor assigns pod uids; remove it"

// Validate checks the manifest and refuses a uid chosen by the client.
func (e *PodRequested) Validate() error {
	errs := validatePod(&e.Pod, field.NewPath("pod"))
	if e.UID != "" {
		errs = append(errs, field.Forbidden(field.NewPath("uid"), uidAssigned))
	}
	if e.Pod.UID != "" {
		errs = append(errs, field.Forbidden(field.NewPath("pod", "metadata", "uid"), uidAssigned))
	}
	return asError(errs)
}

// ObjectKey is the pod key <namespace>/<name>.
func (e *PodRequested) ObjectKey() string { return PodKey(e.Pod.Namespace, e.Pod.Name) }

// PodAccepted records that the provisioner admitted a pod: its record exists
// and every other service may start working on it.
type PodAccepted struct {
	// PodRef names the pod; its namespace is never empty (the pod was
	// normalized) and the pod VM is named pv-<uid>.
	PodRef
	// Pod is the normalized manifest (NormalizePod applied, status cleared).
	Pod corev1.Pod `json:"pod"`
	// Size is SizePodVM(Pod), computed once at admission so every service
	// reserves and creates exactly the same thing.
	Size PodVMSize `json:"size"`
	// Networks is PodNetworks(Pod): the logical networks the pod attaches to,
	// in NIC order.
	Networks []string `json:"networks"`
	// Images lists the container images in PodContainers order (init
	// containers first; one entry per container, duplicates kept so that
	// index i is container i's image).
	Images []string `json:"images"`
}

// Validate checks the identity, the manifest and that the derived fields are
// consistent with it.
func (e *PodAccepted) Validate() error {
	errs := e.PodRef.validate()
	errs = append(errs, validatePod(&e.Pod, field.NewPath("pod"))...)
	if e.Pod.Name != e.Name {
		errs = append(errs, field.Invalid(field.NewPath("pod", "metadata", "name"), e.Pod.Name, "must equal name "+e.Name))
	}
	if e.Pod.Namespace != e.Namespace {
		errs = append(errs, field.Invalid(field.NewPath("pod", "metadata", "namespace"), e.Pod.Namespace, "must equal namespace "+e.Namespace+" (normalize the pod)"))
	}
	errs = append(errs, e.Size.validate(field.NewPath("size"))...)
	if len(e.Networks) == 0 {
		errs = append(errs, field.Required(field.NewPath("networks"), "at least the default network"))
	}
	errs = append(errs, validateNames(field.NewPath("networks"), e.Networks, validateDNSLabel)...)
	if cs := PodContainers(&e.Pod); len(e.Images) != len(cs) {
		errs = append(errs, field.Invalid(field.NewPath("images"), len(e.Images), "must have one image per init container and container"))
	} else {
		for i, img := range e.Images {
			if img != cs[i].Image {
				errs = append(errs, field.Invalid(field.NewPath("images").Index(i), img, "must equal the image of container "+cs[i].Name))
			}
		}
	}
	return asError(errs)
}

// PodRejected says a request about a pod was refused and why. Nothing was
// changed.
type PodRejected struct {
	// Namespace of the pod as requested ("default" when it was empty).
	Namespace string `json:"namespace"`
	// Name of the pod as requested; empty when the manifest had none.
	Name string `json:"name,omitempty"`
	// UID of the request, when it had one.
	UID string `json:"uid,omitempty"`
	// Reason is a CamelCase word: Invalid, AlreadyExists, NotFound, ...
	Reason string `json:"reason"`
	// Message explains the refusal for a person, naming every bad field.
	Message string `json:"message"`
	// Field is the path of the first offending field for Reason Invalid,
	// for example "pod.spec.containers[1].resources.requests.memory".
	Field string `json:"field,omitempty"`
}

// Validate checks the reason and message; the name may be missing because a
// manifest without a name is itself a reason for rejection.
func (e *PodRejected) Validate() error {
	var errs field.ErrorList
	errs = append(errs, validateDNSLabel(field.NewPath("namespace"), e.Namespace)...)
	if e.Name != "" {
		errs = append(errs, validateDNSSubdomain(field.NewPath("name"), e.Name)...)
	}
	errs = append(errs, validateToken(field.NewPath("uid"), e.UID, false)...)
	errs = append(errs, validateFailure(e.Reason, e.Message)...)
	return asError(errs)
}

// ObjectKey is the pod key <namespace>/<name>.
func (e *PodRejected) ObjectKey() string { return PodKey(e.Namespace, e.Name) }

// PodScheduled binds a pod to a host: the scheduler has reserved the pod's
// size in the host's ledger.
type PodScheduled struct {
	PodRef
	// Host is the vSphere host name the pod VM will run on.
	Host string `json:"host"`
	// Cluster is the compute cluster of Host.
	Cluster string `json:"cluster"`
	// ResourcePool is the inventory path of the resource pool to create the
	// pod VM in (the cluster's pool unless configured otherwise).
	ResourcePool string `json:"resourcePool,omitempty"`
	// Datastores are the datastores of Host the scheduler considered, best
	// first; the pod VM's files go on the first one.
	Datastores []string `json:"datastores,omitempty"`
	// Refusals are the candidate hosts that refused one of the pod's
	// networks before this placement (network-config's availability query
	// said it is not available there), in the order they were asked.
	Refusals []HostRefusal `json:"refusals,omitempty"`
}

// Validate checks identity and placement.
func (e *PodScheduled) Validate() error {
	errs := e.PodRef.validate()
	errs = append(errs, validateHostName(field.NewPath("host"), e.Host)...)
	errs = append(errs, validateObjectName(field.NewPath("cluster"), e.Cluster)...)
	errs = append(errs, validateNames(field.NewPath("datastores"), e.Datastores, validateObjectName)...)
	errs = append(errs, validateRefusals(field.NewPath("refusals"), e.Refusals)...)
	return asError(errs)
}

// PodUnschedulable says no host can take the pod now. The scheduler retries
// by itself when inventory, ledger or networks change.
type PodUnschedulable struct {
	PodRef
	// Message summarizes for a person, in the style of kube-scheduler:
	// "0/16 hosts: 10 insufficient memory, 6 network backend not on host".
	Message string `json:"message"`
	// Reasons counts hosts per filter reason (CamelCase words such as
	// InsufficientMemory); a host counts once, under its first failing filter.
	Reasons map[string]int `json:"reasons,omitempty"`
	// Hosts is the number of hosts considered.
	Hosts int `json:"hosts"`
}

// Validate checks identity and that the counts add up.
func (e *PodUnschedulable) Validate() error {
	errs := e.PodRef.validate()
	errs = append(errs, required(field.NewPath("message"), e.Message)...)
	errs = append(errs, validateNonNegative(field.NewPath("hosts"), int64(e.Hosts))...)
	sum := 0
	for _, r := range sortedKeys(e.Reasons) {
		p := field.NewPath("reasons").Key(r)
		errs = append(errs, validateReason(p, r)...)
		if e.Reasons[r] <= 0 {
			errs = append(errs, field.Invalid(p, e.Reasons[r], "must be greater than zero"))
		}
		sum += e.Reasons[r]
	}
	if sum > e.Hosts {
		errs = append(errs, field.Invalid(field.NewPath("reasons"), sum, "counts more hosts than hosts ("+strconv.Itoa(e.Hosts)+")"))
	}
	return asError(errs)
}

// ContainerImage is one container's prepared image.
type ContainerImage struct {
	// Container is the container name.
	Container string `json:"container"`
	// Image is the reference as written in the manifest.
	Image string `json:"image"`
	// Digest is the manifest digest the reference resolved to.
	Digest string `json:"digest"`
	// Datastore holds the image disk chain.
	Datastore string `json:"datastore"`
	// Disk is the datastore path of the top image disk (the last of Chain):
	// the parent of the container's read/write ephemeral disk.
	Disk string `json:"disk"`
	// Chain lists the datastore paths of the image's disks, base layer first.
	// Each disk holds one layer as a read-only filesystem (FS); the guest
	// mounts them all and stacks them as overlayfs lowers, the last of Chain
	// uppermost.
	Chain []string `json:"chain"`
	// ChainIDs are the OCI chainIDs of Chain's disks, in the same order
	// (absent in events from versions that did not send them).
	ChainIDs []string `json:"chainIDs,omitempty"`
	// FS is the filesystem on each disk of Chain ("erofs"; absent in events
	// from versions whose disks held no filesystem).
	FS string `json:"fs,omitempty"`
	// Config is what the image's config says to run (absent in events from
	// versions that did not send it; then a container needs a command).
	Config *ImageConfig `json:"config,omitempty"`
}

// ImageConfig is the part of an OCI image config that decides how a
// container of the image runs; the provisioner applies Kubernetes' rules to
// it (command replaces Entrypoint, args replaces Cmd, the manifest's env
// overrides the image's by name, workingDir defaults to the image's, User
// unless the securityContext says otherwise).
type ImageConfig struct {
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	// Env is "NAME=value" entries, in the image's order.
	Env []string `json:"env,omitempty"`
	// User is "user[:group]", names or numbers, resolved in the container's
	// root.
	User       string `json:"user,omitempty"`
	WorkingDir string `json:"workingDir,omitempty"`
	// ExposedPorts is "port/protocol" entries, sorted. Informational:
	// Kubernetes, and so podvisor, publishes only the manifest's ports.
	ExposedPorts []string `json:"exposedPorts,omitempty"`
}

// MaxImageConfigBytes bounds an image config's strings together, so a pod's
// images fit one event and the pod VM's guestinfo.
const MaxImageConfigBytes = 8 << 10

// Size is the bytes of the config's strings together, each list entry
// counting one more (so a flood of empty entries counts too).
func (c *ImageConfig) Size() int {
	n := len(c.User) + len(c.WorkingDir)
	for _, l := range [][]string{c.Entrypoint, c.Cmd, c.Env, c.ExposedPorts} {
		for _, s := range l {
			n += len(s) + 1
		}
	}
	return n
}

// Validate checks the config as a consumer relies on it; the image cache
// refuses an image whose config fails it (ImageLimitExceeded for the size).
func (c *ImageConfig) Validate() error { return asError(c.validate(field.NewPath("config"))) }

func (c *ImageConfig) validate(p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if n := c.Size(); n > MaxImageConfigBytes {
		errs = append(errs, field.TooLong(p, n, MaxImageConfigBytes))
	}
	for i, e := range c.Env {
		if name, _, ok := strings.Cut(e, "="); !ok || name == "" {
			errs = append(errs, field.Invalid(p.Child("env").Index(i), e, "must be NAME=value"))
		}
	}
	if c.WorkingDir != "" && !path.IsAbs(c.WorkingDir) {
		errs = append(errs, field.Invalid(p.Child("workingDir"), c.WorkingDir, "must be an absolute path"))
	}
	return errs
}

// ImageDiskFS is ContainerImage.FS of image disks holding erofs filesystems.
const ImageDiskFS = "erofs"

func (c *ContainerImage) validate(p *field.Path) field.ErrorList {
	errs := validateDNSLabel(p.Child("container"), c.Container)
	errs = append(errs, validateImageRef(p.Child("image"), c.Image)...)
	errs = append(errs, validateDigest(p.Child("digest"), c.Digest)...)
	errs = append(errs, validateObjectName(p.Child("datastore"), c.Datastore)...)
	errs = append(errs, validateImageDiskPath(p.Child("disk"), c.Disk)...)
	if len(c.Chain) == 0 {
		errs = append(errs, field.Required(p.Child("chain"), "at least the top disk"))
	} else if c.Chain[len(c.Chain)-1] != c.Disk {
		errs = append(errs, field.Invalid(p.Child("chain").Index(len(c.Chain)-1), c.Chain[len(c.Chain)-1], "the last disk of the chain must be disk"))
	}
	errs = append(errs, validateNames(p.Child("chain"), c.Chain, validateImageDiskPath)...)
	if c.ChainIDs != nil && len(c.ChainIDs) != len(c.Chain) {
		errs = append(errs, field.Invalid(p.Child("chainIDs"), len(c.ChainIDs), "must list one chainID per disk of chain"))
	}
	for i, id := range c.ChainIDs {
		errs = append(errs, validateDigest(p.Child("chainIDs").Index(i), id)...)
	}
	if c.FS != "" && c.FS != ImageDiskFS {
		errs = append(errs, field.NotSupported(p.Child("fs"), c.FS, []string{ImageDiskFS}))
	}
	if c.Config != nil {
		errs = append(errs, c.Config.validate(p.Child("config"))...)
	}
	return errs
}

// PodImagesReady says every container image of the pod is on a datastore as a
// disk chain the provisioner can use as the parent of the containers' root
// disks.
type PodImagesReady struct {
	PodRef
	// Containers has one entry per container, in container order.
	Containers []ContainerImage `json:"containers"`
}

// Validate checks identity and each container's image.
func (e *PodImagesReady) Validate() error {
	errs := e.PodRef.validate()
	if len(e.Containers) == 0 {
		errs = append(errs, field.Required(field.NewPath("containers"), ""))
	}
	seen := map[string]bool{}
	for i := range e.Containers {
		p := field.NewPath("containers").Index(i)
		errs = append(errs, e.Containers[i].validate(p)...)
		if seen[e.Containers[i].Container] {
			errs = append(errs, field.Duplicate(p.Child("container"), e.Containers[i].Container))
		}
		seen[e.Containers[i].Container] = true
	}
	return asError(errs)
}

// PodImagesFailed says an image of the pod could not be prepared.
type PodImagesFailed struct {
	PodRef
	// Container whose image failed.
	Container string `json:"container"`
	// Image is the reference as written in the manifest.
	Image string `json:"image"`
	// Reason is a CamelCase word: ImageNotFound, Unauthorized,
	// RegistryUnavailable, DatastoreFull, ...
	Reason string `json:"reason"`
	// Message is the underlying error for a person.
	Message string `json:"message"`
}

// Validate checks identity and the reason.
func (e *PodImagesFailed) Validate() error {
	errs := e.PodRef.validate()
	errs = append(errs, validateDNSLabel(field.NewPath("container"), e.Container)...)
	errs = append(errs, required(field.NewPath("image"), e.Image)...)
	errs = append(errs, validateFailure(e.Reason, e.Message)...)
	return asError(errs)
}

// PodImagesRetrying says preparing an image of the pod failed with an error
// a later try may outlive (a registry that refuses connections or does not
// answer) and that the image cache tries again: it comes once per failed
// try but the last, whose failure pod.images.failed tells. The pod's status
// shows it (ImagePullBackOff) until pod.images.ready or pod.images.failed.
type PodImagesRetrying struct {
	PodRef
	// Container whose image failed.
	Container string `json:"container"`
	// Image is the reference as written in the manifest.
	Image string `json:"image"`
	// Reason is the image cache's CamelCase word (RegistryUnavailable, ...),
	// as pod.images.failed would carry it.
	Reason string `json:"reason"`
	// Message is the underlying error for a person.
	Message string `json:"message"`
	// Attempt is the try that failed, 1 for the first.
	Attempt int `json:"attempt"`
	// NextAttemptAt is when the next try is due, when known.
	NextAttemptAt time.Time `json:"nextAttemptAt,omitzero"`
}

// ReasonImagePullBackOff is the reason of a pod whose images the image
// cache tries again (PodImagesRetrying), and so of its containers' waiting
// state, as the kubelet says it.
const ReasonImagePullBackOff = "ImagePullBackOff"

// Validate checks identity, the reason and the attempt.
func (e *PodImagesRetrying) Validate() error {
	errs := e.PodRef.validate()
	errs = append(errs, validateDNSLabel(field.NewPath("container"), e.Container)...)
	errs = append(errs, required(field.NewPath("image"), e.Image)...)
	errs = append(errs, validateFailure(e.Reason, e.Message)...)
	errs = append(errs, validatePositive(field.NewPath("attempt"), int64(e.Attempt))...)
	return asError(errs)
}

// NetworkAttachment is one NIC of a pod VM.
type NetworkAttachment struct {
	// Network is the logical network name.
	Network string `json:"network"`
	// PortGroup is the DVS port group the NIC connects to (pv-<network>).
	PortGroup string `json:"portGroup"`
	// IP is the IPv4 address allocated to the pod on this network.
	IP string `json:"ip"`
	// PrefixLength of the network's CIDR.
	PrefixLength int `json:"prefixLength"`
	// Gateway of the network, when it has one.
	Gateway string `json:"gateway,omitempty"`
	// MAC is the NIC's address, fixed by network-config so that a re-created
	// VM keeps it.
	MAC string `json:"mac"`
	// Nameservers are the addresses of the DNS services (NetworkService of
	// type dns) configured on the network when the pod attached; the guest's
	// resolv.conf names them. Empty when the network has none.
	Nameservers []string `json:"nameservers,omitempty"`
}

// Equal compares attachments field by field.
func (a NetworkAttachment) Equal(b NetworkAttachment) bool {
	return a.Network == b.Network && a.PortGroup == b.PortGroup && a.IP == b.IP && a.PrefixLength == b.PrefixLength &&
		a.Gateway == b.Gateway && a.MAC == b.MAC && slices.Equal(a.Nameservers, b.Nameservers)
}

func (a *NetworkAttachment) validate(p *field.Path) field.ErrorList {
	errs := validateDNSLabel(p.Child("network"), a.Network)
	errs = append(errs, validatePortGroupName(p.Child("portGroup"), a.PortGroup)...)
	errs = append(errs, validateIPv4(p.Child("ip"), a.IP, true)...)
	if a.PrefixLength < 1 || a.PrefixLength > 32 {
		errs = append(errs, field.Invalid(p.Child("prefixLength"), a.PrefixLength, "must be between 1 and 32"))
	}
	errs = append(errs, validateIPv4(p.Child("gateway"), a.Gateway, false)...)
	errs = append(errs, validateMAC(p.Child("mac"), a.MAC)...)
	for i, ns := range a.Nameservers {
		errs = append(errs, validateIPv4(p.Child("nameservers").Index(i), ns, true)...)
	}
	return errs
}

// PodNetworkAttached says every network of the pod is realized on the host it
// was scheduled to and an address is allocated on each.
type PodNetworkAttached struct {
	PodRef
	// Host the attachments were prepared on (the scheduled host).
	Host string `json:"host"`
	// Attachments has one entry per network, in PodNetworks order (NIC order).
	Attachments []NetworkAttachment `json:"attachments"`
}

// Validate checks identity and each attachment.
func (e *PodNetworkAttached) Validate() error {
	errs := e.PodRef.validate()
	errs = append(errs, validateHostName(field.NewPath("host"), e.Host)...)
	errs = append(errs, validateAttachments(e.Attachments)...)
	return asError(errs)
}

// PodNetworkFailed says a network of the pod could not be attached.
type PodNetworkFailed struct {
	PodRef
	// Host the pod was scheduled to.
	Host string `json:"host,omitempty"`
	// Network that failed.
	Network string `json:"network"`
	// Reason is a CamelCase word: NetworkNotFound, NotRealizedOnHost,
	// AddressesExhausted, ...
	Reason string `json:"reason"`
	// Message explains for a person.
	Message string `json:"message"`
}

// Validate checks identity and the reason.
func (e *PodNetworkFailed) Validate() error {
	errs := e.PodRef.validate()
	errs = append(errs, validateOptionalHost(field.NewPath("host"), e.Host)...)
	errs = append(errs, validateDNSLabel(field.NewPath("network"), e.Network)...)
	errs = append(errs, validateFailure(e.Reason, e.Message)...)
	return asError(errs)
}

// PodVMReady says the pod VM exists and is powered on: its guest is
// booting or its containers are starting. It is not Running: that needs every
// container started, reported by the guest (pod.running follows then). A
// datacenter without guests never gets further than this, so tools that
// measure the control plane alone (bench, scale tests) wait for this fact.
type PodVMReady struct {
	PodRef
	// VM is the managed object reference of the pod VM.
	VM string `json:"vm"`
	// Host the VM runs on.
	Host string `json:"host"`
	// IP is the pod's address on its first network.
	IP string `json:"ip,omitempty"`
}

// Validate checks identity and location.
func (e *PodVMReady) Validate() error { return (*PodRunning)(e).Validate() }

// PodRunning says every container of the pod has started, as the pod VM's
// guest reported it (pod.containers.reported); the VM exists and is on.
type PodRunning struct {
	PodRef
	// VM is the managed object reference of the pod VM (for example
	// "vm-42"); its name is pv-<uid>.
	VM string `json:"vm"`
	// Host the VM runs on.
	Host string `json:"host"`
	// IP is the pod's address on its first network.
	IP string `json:"ip,omitempty"`
}

// Validate checks identity and location.
func (e *PodRunning) Validate() error {
	errs := e.PodRef.validate()
	errs = append(errs, required(field.NewPath("vm"), e.VM)...)
	errs = append(errs, validateHostName(field.NewPath("host"), e.Host)...)
	errs = append(errs, validateIPv4(field.NewPath("ip"), e.IP, false)...)
	return asError(errs)
}

// PodFailed says the pod cannot run; the owners release what they hold for it
// when they see this event.
type PodFailed struct {
	PodRef
	// Host the pod was on or bound to, if any.
	Host string `json:"host,omitempty"`
	// Reason is a CamelCase word: CreateVMFailed, PowerOnFailed,
	// ImagesFailed, NetworkFailed, Timeout, ...
	Reason string `json:"reason"`
	// Message explains for a person.
	Message string `json:"message"`
}

// Validate checks identity and the reason.
func (e *PodFailed) Validate() error {
	errs := e.PodRef.validate()
	errs = append(errs, validateOptionalHost(field.NewPath("host"), e.Host)...)
	errs = append(errs, validateFailure(e.Reason, e.Message)...)
	return asError(errs)
}

// PodDeleteRequested asks podvisor to delete a pod. Any client may publish it.
type PodDeleteRequested struct {
	// Namespace of the pod; empty means "default".
	Namespace string `json:"namespace,omitempty"`
	// Name of the pod.
	Name string `json:"name"`
	// UID, when set, is a precondition: the pod is deleted only if its uid
	// matches, so a stale delete cannot remove a re-created pod.
	UID string `json:"uid,omitempty"`
}

// Validate checks the pod reference.
func (e *PodDeleteRequested) Validate() error {
	var errs field.ErrorList
	if e.Namespace != "" {
		errs = append(errs, validateDNSLabel(field.NewPath("namespace"), e.Namespace)...)
	}
	errs = append(errs, validateDNSSubdomain(field.NewPath("name"), e.Name)...)
	errs = append(errs, validateToken(field.NewPath("uid"), e.UID, false)...)
	return asError(errs)
}

// ObjectKey is the pod key <namespace>/<name>.
func (e *PodDeleteRequested) ObjectKey() string { return PodKey(e.Namespace, e.Name) }

// NetworkIP is an address a deleted pod held.
type NetworkIP struct {
	// Network is the logical network name.
	Network string `json:"network"`
	// IP is the IPv4 address to release.
	IP string `json:"ip"`
}

// PodDeleted says the pod VM is gone and the pod record removed; owners
// release the ledger entry, the addresses and the image references.
type PodDeleted struct {
	PodRef
	// Host the pod was bound to; empty if it never was.
	Host string `json:"host,omitempty"`
	// Images are the image digests the pod referenced.
	Images []string `json:"images,omitempty"`
	// IPs are the addresses the pod held.
	IPs []NetworkIP `json:"ips,omitempty"`
}

// Validate checks identity and what is to be released.
func (e *PodDeleted) Validate() error {
	errs := e.PodRef.validate()
	errs = append(errs, validateOptionalHost(field.NewPath("host"), e.Host)...)
	for i, img := range e.Images {
		errs = append(errs, validateDigest(field.NewPath("images").Index(i), img)...)
	}
	for i, ip := range e.IPs {
		p := field.NewPath("ips").Index(i)
		errs = append(errs, validateDNSLabel(p.Child("network"), ip.Network)...)
		errs = append(errs, validateIPv4(p.Child("ip"), ip.IP, true)...)
	}
	return asError(errs)
}

// PodEvicted says a pod was taken off its host (host lost or drain without
// a possible migration); the provisioner re-creates it elsewhere.
type PodEvicted struct {
	PodRef
	// Host the pod was evicted from.
	Host string `json:"host"`
	// Reason is a CamelCase word: HostLost, HostDrained, ...
	Reason string `json:"reason"`
	// Message explains for a person.
	Message string `json:"message,omitempty"`
}

// Validate checks identity, host and reason.
func (e *PodEvicted) Validate() error {
	errs := e.PodRef.validate()
	errs = append(errs, validateHostName(field.NewPath("host"), e.Host)...)
	errs = append(errs, validateReason(field.NewPath("reason"), e.Reason)...)
	return asError(errs)
}
