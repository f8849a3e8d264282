package clusterspread

import (
	"context"
	"testing"

	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/services/scheduler/framework/fwtest"
)

func TestScore(t *testing.T) {
	web := func(n string) *framework.PodRef { return fwtest.MakePod(n).Label("app", "web").Ref() }
	snap := framework.NewSnapshot(
		fwtest.MakeHost("a1").Cluster("a").Pod(web("w1")).Pod(web("w2")).Obj(),
		fwtest.MakeHost("b1").Cluster("b").Pod(web("w3")).Obj(),
		fwtest.MakeHost("c1").Cluster("c").Pod(fwtest.MakePod("db").Label("app", "db").Ref()).Obj(),
	)
	pl := &Plugin{snapshot: func() *framework.Snapshot { return snap }}
	tests := []struct {
		name string
		pod  *framework.PodInfo
		want map[string]int64
	}{
		{"web goes where web is not", fwtest.MakePod("w4").Label("app", "web").Info(), map[string]int64{"a1": 0, "b1": 50, "c1": 100}},
		{"other namespace is another group", fwtest.MakePod("w4").Namespace("x").Label("app", "web").Info(), map[string]int64{"a1": 100, "b1": 100, "c1": 100}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := framework.NewCycleState()
			pl.PreScore(context.Background(), cs, tt.pod, snap.Hosts())
			for _, h := range snap.Hosts() {
				if got, _ := pl.Score(context.Background(), cs, tt.pod, h); got != tt.want[h.Name] {
					t.Errorf("%s: score = %d, want %d", h.Name, got, tt.want[h.Name])
				}
			}
		})
	}
}
