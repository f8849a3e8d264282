package events

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Defaults for a container that states neither a request nor a limit for a
// resource. Kubernetes would schedule such a container as needing nothing;
// a pod VM cannot run on nothing, and reserving nothing would let the
// scheduler pack hosts until they swap. 100m / 128Mi is enough for a small
// service process and matches what common LimitRange defaults hand out.
const (
	DefaultContainerCPUMilli    int64 = 100
	DefaultContainerMemoryBytes int64 = 128 << 20
)

// The fixed cost of a pod VM, added once per pod on top of the containers:
// the guest kernel, the in-guest agent that starts the containers, and the
// page cache for the image layers. These are estimates for a minimal Linux
// guest (a kernel and agent need on the order of 100 MiB resident and a
// fraction of a core while starting containers), rounded up so that a host
// is never promised memory its pod VMs will then touch. Change them here and
// nowhere else: PodAccepted carries the computed size, so pods admitted
// before a change keep theirs.
const (
	PodVMOverheadCPUMilli    int64 = 250
	PodVMOverheadMemoryBytes int64 = 128 << 20
)

// vSphere requires a VM's memory size in MB to be a multiple of 4.
const memoryMiBGranularity = 4

const mib = 1 << 20

// PodVMSize is how big a pod's VM is. CPUMilli and MemoryBytes are the sums
// the scheduler reserves on a host (container requests plus overhead); VCPUs
// and MemoryMiB are the VM's configured hardware derived from them.
type PodVMSize struct {
	// CPUMilli is the pod's CPU request in millicores, overhead included.
	CPUMilli int64 `json:"cpuMilli"`
	// MemoryBytes is the pod's memory request in bytes, overhead included.
	MemoryBytes int64 `json:"memoryBytes"`
	// VCPUs is ceil(CPUMilli/1000), at least 1.
	VCPUs int32 `json:"vcpus"`
	// MemoryMiB is MemoryBytes in MiB rounded up to a multiple of 4; it is
	// what the VM is configured with, so schedulers should reserve
	// MemoryMiB<<20 bytes, not MemoryBytes.
	MemoryMiB int64 `json:"memoryMiB"`
}

// SizeFor derives the VM hardware from a CPU and memory request.
func SizeFor(cpuMilli, memoryBytes int64) PodVMSize {
	vcpus := (cpuMilli + 999) / 1000
	if vcpus < 1 {
		vcpus = 1
	}
	memMiB := (memoryBytes + mib - 1) / mib
	memMiB = (memMiB + memoryMiBGranularity - 1) / memoryMiBGranularity * memoryMiBGranularity
	if memMiB < memoryMiBGranularity {
		memMiB = memoryMiBGranularity
	}
	return PodVMSize{CPUMilli: cpuMilli, MemoryBytes: memoryBytes, VCPUs: int32(vcpus), MemoryMiB: memMiB}
}

// ReservedMemoryBytes is the memory the VM is configured with.
func (s PodVMSize) ReservedMemoryBytes() int64 { return s.MemoryMiB * mib }

func (s PodVMSize) validate(p *field.Path) field.ErrorList {
	var errs field.ErrorList
	errs = append(errs, validatePositive(p.Child("cpuMilli"), s.CPUMilli)...)
	errs = append(errs, validatePositive(p.Child("memoryBytes"), s.MemoryBytes)...)
	if len(errs) > 0 {
		return errs
	}
	want := SizeFor(s.CPUMilli, s.MemoryBytes)
	if s.VCPUs != want.VCPUs {
		errs = append(errs, field.Invalid(p.Child("vcpus"), s.VCPUs, "must be ceil(cpuMilli/1000) = "+itoa(int(want.VCPUs))))
	}
	if s.MemoryMiB != want.MemoryMiB {
		errs = append(errs, field.Invalid(p.Child("memoryMiB"), s.MemoryMiB, "must be memoryBytes in MiB rounded up to a multiple of 4 = "+itoa(int(want.MemoryMiB))))
	}
	return errs
}

// ContainerRequest is a container's effective request, the amount the pod's
// size counts for it.
type ContainerRequest struct {
	// Container name.
	Container string `json:"container"`
	// CPUMilli counted for the container.
	CPUMilli int64 `json:"cpuMilli"`
	// MemoryBytes counted for the container.
	MemoryBytes int64 `json:"memoryBytes"`
	// CPUDefaulted is true when neither a CPU request nor limit was set and
	// DefaultContainerCPUMilli was used.
	CPUDefaulted bool `json:"cpuDefaulted,omitempty"`
	// MemoryDefaulted is true when neither a memory request nor limit was
	// set and DefaultContainerMemoryBytes was used.
	MemoryDefaulted bool `json:"memoryDefaulted,omitempty"`
}

// ContainerRequests returns the effective request of every container, in
// container order: the request when set; the limit when only the limit is set
// (as Kubernetes defaults it); the package default when neither is.
func ContainerRequests(pod *corev1.Pod) []ContainerRequest {
	out := make([]ContainerRequest, 0, len(pod.Spec.Containers))
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		r := ContainerRequest{Container: c.Name}
		if q, ok := effective(c.Resources, corev1.ResourceCPU); ok {
			r.CPUMilli = q.MilliValue()
		} else {
			r.CPUMilli, r.CPUDefaulted = DefaultContainerCPUMilli, true
		}
		if q, ok := effective(c.Resources, corev1.ResourceMemory); ok {
			r.MemoryBytes = q.Value()
		} else {
			r.MemoryBytes, r.MemoryDefaulted = DefaultContainerMemoryBytes, true
		}
		out = append(out, r)
	}
	return out
}

func effective(rr corev1.ResourceRequirements, name corev1.ResourceName) (q interface {
	MilliValue() int64
	Value() int64
}, ok bool) {
	if v, ok := rr.Requests[name]; ok {
		return &v, true
	}
	if v, ok := rr.Limits[name]; ok {
		return &v, true
	}
	return nil, false
}

// SizePodVM is the one sizing function of podvisor: the sum of the
// containers' effective requests (see ContainerRequests) plus the pod VM
// overhead, counted once. The scheduler reserves it, the provisioner creates
// the VM with it; PodAccepted carries it so both use the same numbers even if
// these constants change between releases.
//
// Init containers run one at a time before the containers, so, as in
// Kubernetes, the pod needs the larger of the containers' sum and the
// largest init container's explicit request.
func SizePodVM(pod *corev1.Pod) PodVMSize {
	var cpu, mem int64
	for _, r := range ContainerRequests(pod) {
		cpu += r.CPUMilli
		mem += r.MemoryBytes
	}
	for _, c := range pod.Spec.InitContainers {
		if q, ok := effective(c.Resources, corev1.ResourceCPU); ok {
			cpu = max(cpu, q.MilliValue())
		}
		if q, ok := effective(c.Resources, corev1.ResourceMemory); ok {
			mem = max(mem, q.Value())
		}
	}
	return SizeFor(PodVMOverheadCPUMilli+cpu, PodVMOverheadMemoryBytes+mem)
}
