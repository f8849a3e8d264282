package leastallocated

import (
	"context"
	"testing"

	"github.com/podvisor/podvisor/services/scheduler/framework/fwtest"
)

func TestScore(t *testing.T) {
	const gib = fwtest.GiB
	pod := fwtest.MakePod("p").Size(1000, gib).Info()
	tests := []struct {
		name string
		host *fwtest.HostBuilder
		want int64
	}{
		{"empty host", fwtest.MakeHost("h").Capacity(10000, 10*gib), 90},
		{"half used", fwtest.MakeHost("h").Capacity(10000, 10*gib).Used(4000, 4*gib), 50},
		{"full after the pod", fwtest.MakeHost("h").Capacity(10000, 10*gib).Used(9000, 9*gib), 0},
		{"cpu free memory busy", fwtest.MakeHost("h").Capacity(10000, 10*gib).Used(0, 9*gib), 45},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, _ := (&Plugin{}).Score(context.Background(), nil, pod, tt.host.Obj()); got != tt.want {
				t.Errorf("score = %d, want %d", got, tt.want)
			}
		})
	}
}
