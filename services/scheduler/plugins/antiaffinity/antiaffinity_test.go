package antiaffinity

import (
	"context"
	"testing"

	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/services/scheduler/framework/fwtest"
)

func TestFilter(t *testing.T) {
	web := fwtest.MakePod("web-1").Label("app", "web")
	webOtherNS := fwtest.MakePod("web-x").Namespace("other").Label("app", "web")
	tests := []struct {
		name     string
		pod      *fwtest.PodBuilder
		host     *fwtest.HostBuilder
		wantFail bool
	}{
		{"no terms", fwtest.MakePod("p"), fwtest.MakeHost("h").Pod(web.Ref()), false},
		{"empty host", fwtest.MakePod("web-2").Label("app", "web").AntiAffinity("app", "web", framework.TopologyHost), fwtest.MakeHost("h"), false},
		{"matching pod on host", fwtest.MakePod("web-2").Label("app", "web").AntiAffinity("app", "web", framework.TopologyHost), fwtest.MakeHost("h").Pod(web.Ref()), true},
		{"podvisor topology key", fwtest.MakePod("web-2").AntiAffinity("app", "web", framework.TopologyHostPodvisor), fwtest.MakeHost("h").Pod(web.Ref()), true},
		{"other namespace does not count", fwtest.MakePod("web-2").AntiAffinity("app", "web", framework.TopologyHost), fwtest.MakeHost("h").Pod(webOtherNS.Ref()), false},
		{"non matching labels", fwtest.MakePod("db-1").AntiAffinity("app", "db", framework.TopologyHost), fwtest.MakeHost("h").Pod(web.Ref()), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := (&Plugin{}).Filter(context.Background(), nil, tt.pod.Info(), tt.host.Obj())
			if st.IsSuccess() == tt.wantFail {
				t.Fatalf("fail = %v (%v), want %v", !st.IsSuccess(), st, tt.wantFail)
			}
			if tt.wantFail && st.Reason != "PodAntiAffinity" {
				t.Errorf("reason = %q", st.Reason)
			}
		})
	}
}

func TestUnsupportedTopologyKeyNamesTheField(t *testing.T) {
	b := fwtest.MakePod("p").AntiAffinity("app", "web", "topology.kubernetes.io/zone")
	_, err := framework.NewPodInfo(b.Pod(), "u", framework.PodSize{CPUMilli: 1, MemoryBytes: 1}, []string{"default"})
	if err == nil {
		t.Fatal("zone topology accepted")
	}
	const want = "pod.spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey"
	if got := err.Error(); len(got) < len(want) || got[:len(want)] != want {
		t.Errorf("error %q does not start with the field %s", got, want)
	}
}
