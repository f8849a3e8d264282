package hostselector

import (
	"testing"

	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/services/scheduler/framework/fwtest"
)

func TestFilter(t *testing.T) {
	fwtest.Filters(t, &Plugin{}, []fwtest.FilterCase{
		{Name: "no selector", Pod: fwtest.MakePod("p"), Host: fwtest.MakeHost("h")},
		{Name: "cluster label matches", Pod: fwtest.MakePod("p").NodeSelector("podvisor.io/cluster", "cluster-2"), Host: fwtest.MakeHost("h").Cluster("cluster-2")},
		{Name: "cluster label differs", Pod: fwtest.MakePod("p").NodeSelector("podvisor.io/cluster", "cluster-2"), Host: fwtest.MakeHost("h"), WantReason: "HostSelectorMismatch", WantCode: framework.Unschedulable},
		{Name: "label missing", Pod: fwtest.MakePod("p").NodeSelector("gpu", "true"), Host: fwtest.MakeHost("h"), WantReason: "HostSelectorMismatch", WantCode: framework.Unschedulable},
		{Name: "custom attribute label", Pod: fwtest.MakePod("p").NodeSelector("gpu", "true"), Host: fwtest.MakeHost("h").Label("gpu", "true")},
		{Name: "affinity In matches", Pod: fwtest.MakePod("p").HostAffinityIn("rack", "r1", "r2"), Host: fwtest.MakeHost("h").Label("rack", "r2")},
		{Name: "affinity In misses", Pod: fwtest.MakePod("p").HostAffinityIn("rack", "r1"), Host: fwtest.MakeHost("h").Label("rack", "r3"), WantReason: "HostAffinityMismatch", WantCode: framework.Unschedulable},
		{Name: "affinity terms are ORed", Pod: fwtest.MakePod("p").HostAffinityIn("rack", "r1").HostAffinityIn("zone", "z"), Host: fwtest.MakeHost("h").Label("zone", "z")},
	})
}
