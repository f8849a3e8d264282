package balancedallocation

import (
	"context"
	"testing"

	"github.com/podvisor/podvisor/services/scheduler/framework/fwtest"
)

func TestScore(t *testing.T) {
	const gib = fwtest.GiB
	tests := []struct {
		name string
		pod  *fwtest.PodBuilder
		host *fwtest.HostBuilder
		want int64
	}{
		{"balanced", fwtest.MakePod("p").Size(1000, gib), fwtest.MakeHost("h").Capacity(10000, 10*gib), 100},
		{"cpu heavy pod on memory heavy host", fwtest.MakePod("p").Size(5000, gib), fwtest.MakeHost("h").Capacity(10000, 10*gib).Used(0, 4*gib), 100},
		{"skewed", fwtest.MakePod("p").Size(8000, gib), fwtest.MakeHost("h").Capacity(10000, 10*gib), 30},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, _ := (&Plugin{}).Score(context.Background(), nil, tt.pod.Info(), tt.host.Obj()); got != tt.want {
				t.Errorf("score = %d, want %d", got, tt.want)
			}
		})
	}
}
