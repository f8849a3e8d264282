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
	// A VM that moves needs its own disks' datastores too.
	vm := fwtest.MakePod("vm").Datastores("cluster-1-ds")
	fwtest.Filters(t, &Plugin{required: []string{"images-ds"}}, []fwtest.FilterCase{
		{Name: "mounts both", Pod: vm, Host: fwtest.MakeHost("h").Datastores("cluster-1-ds", "images-ds")},
		{Name: "not the VM's", Pod: vm, Host: fwtest.MakeHost("h").Datastores("cluster-2-ds", "images-ds"), WantReason: Reason, WantCode: framework.Unschedulable},
	})
}
