package networkavailable

import (
	"context"
	"errors"
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

// A pod naming a network nobody declared is told so, through the
// framework's diagnosis, rather than each host being blamed; a declared
// network out of reach still blames the hosts. Without the dependency the
// plugin keeps the host-level reason.
func TestUnknownNetworkIsNamed(t *testing.T) {
	declared := NetworksFunc(func(name string) bool { return name == "frontend" })
	tests := []struct {
		name     string
		services map[string]any
		networks []string
		want     string
	}{
		{"not declared", map[string]any{ServiceName: declared}, []string{"nosuchnet"}, `0/2 hosts: 2 network "nosuchnet" does not exist`},
		{"declared elsewhere", map[string]any{ServiceName: declared}, []string{"frontend"}, "0/2 hosts: 2 network backend not on host"},
		{"the first missing network decides", map[string]any{ServiceName: declared}, []string{"default", "frontend", "nosuchnet"}, "0/2 hosts: 2 network backend not on host"},
		{"no dependency", nil, []string{"nosuchnet"}, "0/2 hosts: 2 network backend not on host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := framework.NewSnapshot(fwtest.MakeHost("h1").Obj(), fwtest.MakeHost("h2").Obj())
			profile := framework.Profile{Name: "t", Strategy: framework.StrategySpread, Filters: []string{Name}}
			fw, err := framework.New(profile, framework.Registry{Name: New}, snap, tt.services)
			if err != nil {
				t.Fatal(err)
			}
			_, err = fw.Schedule(context.Background(), fwtest.MakePod("p").Networks(tt.networks...).Info())
			var fe *framework.FitError
			if !errors.As(err, &fe) || fe.Error() != tt.want || fe.Diagnosis.Unresolvable {
				t.Fatalf("Schedule: %v, want a resolvable fit error %q", err, tt.want)
			}
		})
	}
}
