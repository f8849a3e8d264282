package resourcesfit

import (
	"context"
	"testing"

	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/services/scheduler/framework/fwtest"
)

const gib = fwtest.GiB

func TestFilter(t *testing.T) {
	tests := []struct {
		name       string
		pod        *fwtest.PodBuilder
		host       *fwtest.HostBuilder
		wantReason string
		wantCode   framework.Code
	}{
		{"fits empty host", fwtest.MakePod("p").Size(2000, 4*gib), fwtest.MakeHost("h").Capacity(4000, 8*gib), "", framework.Success},
		{"fits exactly", fwtest.MakePod("p").Size(2000, 4*gib), fwtest.MakeHost("h").Capacity(4000, 8*gib).Used(2000, 4*gib), "", framework.Success},
		{"one byte too many", fwtest.MakePod("p").Size(2000, 4*gib+1), fwtest.MakeHost("h").Capacity(4000, 8*gib).Used(2000, 4*gib), "InsufficientMemory", framework.Unschedulable},
		{"cpu full", fwtest.MakePod("p").Size(2001, gib), fwtest.MakeHost("h").Capacity(4000, 8*gib).Used(2000, gib), "InsufficientCPU", framework.Unschedulable},
		{"memory reported before cpu", fwtest.MakePod("p").Size(4000, 8*gib), fwtest.MakeHost("h").Capacity(4000, 8*gib).Used(1, 1), "InsufficientMemory", framework.Unschedulable},
		{"larger than the host: memory", fwtest.MakePod("p").Size(1000, 9*gib), fwtest.MakeHost("h").Capacity(4000, 8*gib), "MemoryExceedsCapacity", framework.UnschedulableAndUnresolvable},
		{"larger than the host: cpu", fwtest.MakePod("p").Size(5000, gib), fwtest.MakeHost("h").Capacity(4000, 8*gib), "CPUExceedsCapacity", framework.UnschedulableAndUnresolvable},
		{"pod cap", fwtest.MakePod("p"), fwtest.MakeHost("h").MaxPods(2).Used(1, 1).Used(1, 1), "TooManyPods", framework.Unschedulable},
		{"pod cap not reached", fwtest.MakePod("p"), fwtest.MakeHost("h").MaxPods(3).Used(1, 1).Used(1, 1), "", framework.Success},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := (&Plugin{}).Filter(context.Background(), nil, tt.pod.Info(), tt.host.Obj())
			var got string
			code := framework.Success
			if st != nil {
				got, code = st.Reason, st.Code
			}
			if got != tt.wantReason || code != tt.wantCode {
				t.Errorf("got %q/%v, want %q/%v", got, code, tt.wantReason, tt.wantCode)
			}
		})
	}
}

// The filter must not allocate: it runs for thousands of hosts per pod.
func TestFilterDoesNotAllocate(t *testing.T) {
	pod, host := fwtest.MakePod("p").Size(1, 1).Info(), fwtest.MakeHost("h").Capacity(0, 0).Obj()
	pl := &Plugin{}
	if n := testing.AllocsPerRun(100, func() { pl.Filter(context.Background(), nil, pod, host) }); n != 0 {
		t.Fatalf("Filter allocates %v times per call", n)
	}
}
