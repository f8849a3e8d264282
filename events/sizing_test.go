package events

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestSizePodVM(t *testing.T) {
	const mi = int64(1 << 20)
	over := struct{ cpu, mem int64 }{PodVMOverheadCPUMilli, PodVMOverheadMemoryBytes}
	tests := []struct {
		name string
		pod  *corev1.Pod
		want PodVMSize
		reqs []ContainerRequest
	}{
		{
			name: "nothing set: defaults plus overhead once",
			pod:  newPod(),
			want: PodVMSize{CPUMilli: 100 + over.cpu, MemoryBytes: 128*mi + over.mem, VCPUs: 1, MemoryMiB: 256},
			reqs: []ContainerRequest{{Container: "nginx", CPUMilli: 100, MemoryBytes: 128 * mi, CPUDefaulted: true, MemoryDefaulted: true}},
		},
		{
			name: "requests summed, overhead counted once for two containers",
			pod: newPod(addContainer("b", "nginx"),
				resources(0, map[corev1.ResourceName]string{"cpu": "1", "memory": "1Gi"}, nil),
				resources(1, map[corev1.ResourceName]string{"cpu": "500m", "memory": "512Mi"}, nil)),
			want: PodVMSize{CPUMilli: 1500 + over.cpu, MemoryBytes: 1536*mi + over.mem, VCPUs: 2, MemoryMiB: 1664},
			reqs: []ContainerRequest{{Container: "nginx", CPUMilli: 1000, MemoryBytes: 1024 * mi}, {Container: "b", CPUMilli: 500, MemoryBytes: 512 * mi}},
		},
		{
			name: "the example of the package documentation",
			pod: newPod(addContainer("b", "nginx"),
				resources(0, map[corev1.ResourceName]string{"cpu": "500m", "memory": "256Mi"}, nil),
				resources(1, map[corev1.ResourceName]string{"cpu": "1", "memory": "512Mi"}, nil)),
			want: PodVMSize{CPUMilli: 1750, MemoryBytes: 896 * mi, VCPUs: 2, MemoryMiB: 896},
			reqs: []ContainerRequest{{Container: "nginx", CPUMilli: 500, MemoryBytes: 256 * mi}, {Container: "b", CPUMilli: 1000, MemoryBytes: 512 * mi}},
		},
		{
			name: "limits only: request defaults to the limit",
			pod:  newPod(resources(0, nil, map[corev1.ResourceName]string{"cpu": "2", "memory": "3Gi"})),
			want: PodVMSize{CPUMilli: 2000 + over.cpu, MemoryBytes: 3072*mi + over.mem, VCPUs: 3, MemoryMiB: 3200},
			reqs: []ContainerRequest{{Container: "nginx", CPUMilli: 2000, MemoryBytes: 3072 * mi}},
		},
		{
			name: "request wins over limit; unset resource defaults independently",
			pod:  newPod(resources(0, map[corev1.ResourceName]string{"cpu": "250m"}, map[corev1.ResourceName]string{"cpu": "4"})),
			want: PodVMSize{CPUMilli: 250 + over.cpu, MemoryBytes: 128*mi + over.mem, VCPUs: 1, MemoryMiB: 256},
			reqs: []ContainerRequest{{Container: "nginx", CPUMilli: 250, MemoryBytes: 128 * mi, MemoryDefaulted: true}},
		},
		{
			name: "memory rounded up to MiB then to a multiple of 4",
			pod:  newPod(resources(0, map[corev1.ResourceName]string{"cpu": "750m", "memory": "100M"}, nil)),
			// 100 MB = 95.37 MiB; + 128 MiB = 223.37 -> 224 MiB (already a multiple of 4)
			want: PodVMSize{CPUMilli: 750 + over.cpu, MemoryBytes: 100_000_000 + over.mem, VCPUs: 1, MemoryMiB: 224},
			reqs: []ContainerRequest{{Container: "nginx", CPUMilli: 750, MemoryBytes: 100_000_000}},
		},
		{
			name: "one millicore over a core adds a vCPU",
			pod:  newPod(resources(0, map[corev1.ResourceName]string{"cpu": "751m", "memory": "1Mi"}, nil)),
			// 751+250 = 1001m -> 2 vCPUs; 1+128 = 129 MiB -> 132
			want: PodVMSize{CPUMilli: 1001, MemoryBytes: 129 * mi, VCPUs: 2, MemoryMiB: 132},
			reqs: []ContainerRequest{{Container: "nginx", CPUMilli: 751, MemoryBytes: mi}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ContainerRequests(tt.pod); !reflect.DeepEqual(got, tt.reqs) {
				t.Errorf("ContainerRequests = %+v, want %+v", got, tt.reqs)
			}
			got := SizePodVM(tt.pod)
			if got != tt.want {
				t.Errorf("SizePodVM = %+v, want %+v", got, tt.want)
			}
			if errs := got.validate(nil); len(errs) > 0 {
				t.Errorf("SizePodVM result does not validate: %v", errs)
			}
			if got.MemoryMiB%4 != 0 || got.ReservedMemoryBytes() < got.MemoryBytes {
				t.Errorf("MemoryMiB %d is not a multiple of 4 covering %d bytes", got.MemoryMiB, got.MemoryBytes)
			}
		})
	}
}

func TestSizeForRounding(t *testing.T) {
	tests := []struct {
		cpu, mem int64
		vcpus    int32
		memMiB   int64
	}{
		{cpu: 0, mem: 0, vcpus: 1, memMiB: 4},
		{cpu: 1, mem: 1, vcpus: 1, memMiB: 4},
		{cpu: 1000, mem: 4 << 20, vcpus: 1, memMiB: 4},
		{cpu: 1001, mem: 4<<20 + 1, vcpus: 2, memMiB: 8},
		{cpu: 16000, mem: 1023 << 20, vcpus: 16, memMiB: 1024},
	}
	for _, tt := range tests {
		got := SizeFor(tt.cpu, tt.mem)
		if got.VCPUs != tt.vcpus || got.MemoryMiB != tt.memMiB {
			t.Errorf("SizeFor(%d, %d) = %d vCPUs %d MiB, want %d, %d", tt.cpu, tt.mem, got.VCPUs, got.MemoryMiB, tt.vcpus, tt.memMiB)
		}
	}
}

func TestPodVMSizeValidate(t *testing.T) {
	good := SizeFor(1250, 600<<20)
	if errs := good.validate(nil); len(errs) != 0 {
		t.Fatalf("valid size rejected: %v", errs)
	}
	bad := good
	bad.VCPUs, bad.MemoryMiB = 1, 601
	errs := bad.validate(nil)
	if len(errs) != 2 || errs[0].Field != "vcpus" || errs[1].Field != "memoryMiB" {
		t.Errorf("inconsistent size: got %v, want errors at vcpus and memoryMiB", errs)
	}
}
