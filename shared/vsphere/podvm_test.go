package vsphere

import (
	"testing"

	"github.com/vmware/govmomi/vim25/types"
)

func TestPodOf(t *testing.T) {
	cfg := &types.VirtualMachineConfigInfo{ExtraConfig: []types.BaseOptionValue{
		&types.OptionValue{Key: GuestinfoUID, Value: "u1"},
		&types.OptionValue{Key: "guestinfo.other", Value: "x"},
		&types.OptionValue{Key: GuestinfoNamespace, Value: "ns"},
		&types.OptionValue{Key: GuestinfoPod, Value: "web"},
	}}
	if got := PodOf(cfg); got != (PodIdentity{UID: "u1", Namespace: "ns", Pod: "web"}) {
		t.Errorf("PodOf = %+v", got)
	}
	if got := PodOf(nil); got != (PodIdentity{}) {
		t.Errorf("PodOf(nil) = %+v, want empty", got)
	}
}
