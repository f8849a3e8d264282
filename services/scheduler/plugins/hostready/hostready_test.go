package hostready

import (
	"testing"

	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/services/scheduler/framework/fwtest"
)

func TestFilter(t *testing.T) {
	pod := fwtest.MakePod("p")
	// A host's state can change: every refusal is Unschedulable.
	fwtest.Filters(t, &Plugin{}, []fwtest.FilterCase{
		{Name: "connected", Pod: pod, Host: fwtest.MakeHost("h")},
		{Name: "not responding", Pod: pod, Host: fwtest.MakeHost("h").State("notResponding"), WantReason: "HostNotConnected", WantCode: framework.Unschedulable},
		{Name: "disconnected", Pod: pod, Host: fwtest.MakeHost("h").State("disconnected"), WantReason: "HostNotConnected", WantCode: framework.Unschedulable},
		{Name: "maintenance", Pod: pod, Host: fwtest.MakeHost("h").Maintenance(), WantReason: "HostInMaintenance", WantCode: framework.Unschedulable},
		{Name: "cordoned", Pod: pod, Host: fwtest.MakeHost("h").Cordoned(), WantReason: "HostCordoned", WantCode: framework.Unschedulable},
		{Name: "lost wins over cordon", Pod: pod, Host: fwtest.MakeHost("h").State("notResponding").Cordoned(), WantReason: "HostNotConnected", WantCode: framework.Unschedulable},
	})
}
