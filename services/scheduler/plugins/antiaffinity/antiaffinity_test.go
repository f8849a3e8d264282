package antiaffinity

import (
	"testing"

	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/services/scheduler/framework/fwtest"
)

func TestFilter(t *testing.T) {
	web := fwtest.MakePod("web-1").Label("app", "web")
	webOtherNS := fwtest.MakePod("web-x").Namespace("other").Label("app", "web")
	fwtest.Filters(t, &Plugin{}, []fwtest.FilterCase{
		{Name: "no terms", Pod: fwtest.MakePod("p"), Host: fwtest.MakeHost("h").Pod(web.Ref())},
		{Name: "empty host", Pod: fwtest.MakePod("web-2").Label("app", "web").AntiAffinity("app", "web", framework.TopologyHost), Host: fwtest.MakeHost("h")},
		{Name: "matching pod on host", Pod: fwtest.MakePod("web-2").Label("app", "web").AntiAffinity("app", "web", framework.TopologyHost), Host: fwtest.MakeHost("h").Pod(web.Ref()), WantReason: "PodAntiAffinity", WantCode: framework.Unschedulable},
		{Name: "podvisor topology key", Pod: fwtest.MakePod("web-2").AntiAffinity("app", "web", framework.TopologyHostPodvisor), Host: fwtest.MakeHost("h").Pod(web.Ref()), WantReason: "PodAntiAffinity", WantCode: framework.Unschedulable},
		{Name: "other namespace does not count", Pod: fwtest.MakePod("web-2").AntiAffinity("app", "web", framework.TopologyHost), Host: fwtest.MakeHost("h").Pod(webOtherNS.Ref())},
		{Name: "non matching labels", Pod: fwtest.MakePod("db-1").AntiAffinity("app", "db", framework.TopologyHost), Host: fwtest.MakeHost("h").Pod(web.Ref())},
	})
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
