package hostselector

import (
	"context"
	"testing"

	"github.com/podvisor/podvisor/services/scheduler/framework/fwtest"
)

func TestFilter(t *testing.T) {
	tests := []struct {
		name       string
		pod        *fwtest.PodBuilder
		host       *fwtest.HostBuilder
		wantReason string
	}{
		{"no selector", fwtest.MakePod("p"), fwtest.MakeHost("h"), ""},
		{"cluster label matches", fwtest.MakePod("p").NodeSelector("podvisor.io/cluster", "cluster-2"), fwtest.MakeHost("h").Cluster("cluster-2"), ""},
		{"cluster label differs", fwtest.MakePod("p").NodeSelector("podvisor.io/cluster", "cluster-2"), fwtest.MakeHost("h"), "HostSelectorMismatch"},
		{"label missing", fwtest.MakePod("p").NodeSelector("gpu", "true"), fwtest.MakeHost("h"), "HostSelectorMismatch"},
		{"custom attribute label", fwtest.MakePod("p").NodeSelector("gpu", "true"), fwtest.MakeHost("h").Label("gpu", "true"), ""},
		{"affinity In matches", fwtest.MakePod("p").HostAffinityIn("rack", "r1", "r2"), fwtest.MakeHost("h").Label("rack", "r2"), ""},
		{"affinity In misses", fwtest.MakePod("p").HostAffinityIn("rack", "r1"), fwtest.MakeHost("h").Label("rack", "r3"), "HostAffinityMismatch"},
		{"affinity terms are ORed", fwtest.MakePod("p").HostAffinityIn("rack", "r1").HostAffinityIn("zone", "z"), fwtest.MakeHost("h").Label("zone", "z"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := (&Plugin{}).Filter(context.Background(), nil, tt.pod.Info(), tt.host.Obj())
			got := ""
			if !st.IsSuccess() {
				got = st.Reason
			}
			if got != tt.wantReason {
				t.Errorf("reason = %q, want %q", got, tt.wantReason)
			}
		})
	}
}
