package resourcesfit

import (
	"context"
	"testing"

	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/services/scheduler/framework/fwtest"
)

const gib = fwtest.GiB

func TestFilter(t *testing.T) {
	fwtest.Filters(t, &Plugin{}, []fwtest.FilterCase{
		{Name: "fits empty host", Pod: fwtest.MakePod("p").Size(2000, 4*gib), Host: fwtest.MakeHost("h").Capacity(4000, 8*gib)},
		{Name: "fits exactly", Pod: fwtest.MakePod("p").Size(2000, 4*gib), Host: fwtest.MakeHost("h").Capacity(4000, 8*gib).Used(2000, 4*gib)},
		{Name: "one byte too many", Pod: fwtest.MakePod("p").Size(2000, 4*gib+1), Host: fwtest.MakeHost("h").Capacity(4000, 8*gib).Used(2000, 4*gib), WantReason: "InsufficientMemory", WantCode: framework.Unschedulable},
		{Name: "cpu full", Pod: fwtest.MakePod("p").Size(2001, gib), Host: fwtest.MakeHost("h").Capacity(4000, 8*gib).Used(2000, gib), WantReason: "InsufficientCPU", WantCode: framework.Unschedulable},
		{Name: "memory reported before cpu", Pod: fwtest.MakePod("p").Size(4000, 8*gib), Host: fwtest.MakeHost("h").Capacity(4000, 8*gib).Used(1, 1), WantReason: "InsufficientMemory", WantCode: framework.Unschedulable},
		{Name: "larger than the host: memory", Pod: fwtest.MakePod("p").Size(1000, 9*gib), Host: fwtest.MakeHost("h").Capacity(4000, 8*gib), WantReason: "MemoryExceedsCapacity", WantCode: framework.UnschedulableAndUnresolvable},
		{Name: "larger than the host: cpu", Pod: fwtest.MakePod("p").Size(5000, gib), Host: fwtest.MakeHost("h").Capacity(4000, 8*gib), WantReason: "CPUExceedsCapacity", WantCode: framework.UnschedulableAndUnresolvable},
		{Name: "larger than the host: both", Pod: fwtest.MakePod("p").Size(5000, 9*gib), Host: fwtest.MakeHost("h").Capacity(4000, 8*gib), WantReason: "CPUAndMemoryExceedCapacity", WantCode: framework.UnschedulableAndUnresolvable},
		{Name: "pod cap", Pod: fwtest.MakePod("p"), Host: fwtest.MakeHost("h").MaxPods(2).Used(1, 1).Used(1, 1), WantReason: "TooManyPods", WantCode: framework.Unschedulable},
		{Name: "pod cap not reached", Pod: fwtest.MakePod("p"), Host: fwtest.MakeHost("h").MaxPods(3).Used(1, 1).Used(1, 1)},
		// Native VMs hold room but are no pods: they neither fill the pod
		// cap nor are refused by it.
		{Name: "native VMs are not counted in the pod cap", Pod: fwtest.MakePod("p"),
			Host: fwtest.MakeHost("h").MaxPods(2).Used(1, 1).Pod(fwtest.MakePod("vm1").VM().Size(1, 1).Ref()).Pod(fwtest.MakePod("vm2").VM().Size(1, 1).Ref())},
		{Name: "a native VM is not refused by the pod cap", Pod: fwtest.MakePod("vm3").VM(), Host: fwtest.MakeHost("h").MaxPods(2).Used(1, 1).Used(1, 1)},
		{Name: "but by its resources", Pod: fwtest.MakePod("vm3").VM().Size(2000, gib), Host: fwtest.MakeHost("h").Capacity(2000, 8*gib).Used(1, 1),
			WantReason: "InsufficientCPU", WantCode: framework.Unschedulable},
	})
}

// The filter must not allocate: it runs for thousands of hosts per pod.
func TestFilterDoesNotAllocate(t *testing.T) {
	pod, host := fwtest.MakePod("p").Size(1, 1).Info(), fwtest.MakeHost("h").Capacity(0, 0).Obj()
	pl := &Plugin{}
	if n := testing.AllocsPerRun(100, func() { pl.Filter(context.Background(), nil, pod, host) }); n != 0 {
		t.Fatalf("Filter allocates %v times per call", n)
	}
}
