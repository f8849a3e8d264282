package datastoreavailable

import (
	"testing"

	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/services/scheduler/framework/fwtest"
)

func TestFilter(t *testing.T) {
	pod := fwtest.MakePod("p")
	fwtest.Filters(t, &Plugin{required: []string{"images-ds"}}, []fwtest.FilterCase{
		{Name: "mounts it", Pod: pod, Host: fwtest.MakeHost("h").Datastores("local", "images-ds")},
		{Name: "does not", Pod: pod, Host: fwtest.MakeHost("h").Datastores("local"), WantReason: Reason, WantCode: framework.Unschedulable},
		{Name: "no datastores", Pod: pod, Host: fwtest.MakeHost("h").Datastores(), WantReason: Reason, WantCode: framework.Unschedulable},
	})
	// Nothing required: every host passes.
	fwtest.Filters(t, &Plugin{}, []fwtest.FilterCase{
		{Name: "none required", Pod: pod, Host: fwtest.MakeHost("h").Datastores()},
	})
}
