package networkavailable

import (
	"context"
	"testing"

	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/services/scheduler/framework/fwtest"
)

func TestFilterAndScore(t *testing.T) {
	tests := []struct {
		name      string
		networks  []string
		host      *fwtest.HostBuilder
		wantFit   bool
		wantScore int64
	}{
		{"realized", []string{"default"}, fwtest.MakeHost("h"), true, 100},
		{"in scope counts as feasible", []string{"default"}, fwtest.MakeHost("h").Network("default", framework.NetworkInScope), true, 0},
		{"absent", []string{"frontend"}, fwtest.MakeHost("h"), false, 0},
		{"default is not assumed", []string{"default"}, fwtest.MakeHost("h").Network("default", framework.NetworkAbsent), false, 0},
		{"one of two missing", []string{"default", "db"}, fwtest.MakeHost("h"), false, 0},
		{"half realized", []string{"default", "db"}, fwtest.MakeHost("h").Network("db", framework.NetworkInScope), true, 50},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := fwtest.MakePod("p").Networks(tt.networks...).Info()
			h := tt.host.Obj()
			st := (&Plugin{}).Filter(context.Background(), nil, pod, h)
			if st.IsSuccess() != tt.wantFit {
				t.Fatalf("fit = %v (%v), want %v", st.IsSuccess(), st, tt.wantFit)
			}
			if !tt.wantFit {
				if st.Reason != "NetworkNotOnHost" || st.Message != "network backend not on host" {
					t.Errorf("status = %+v", st)
				}
				return
			}
			if s, _ := (&Plugin{}).Score(context.Background(), nil, pod, h); s != tt.wantScore {
				t.Errorf("score = %d, want %d", s, tt.wantScore)
			}
		})
	}
}
