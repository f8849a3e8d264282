package hostready

import (
	"context"
	"testing"

	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/services/scheduler/framework/fwtest"
)

func TestFilter(t *testing.T) {
	tests := []struct {
		name       string
		host       *framework.Host
		wantReason string
	}{
		{"connected", fwtest.MakeHost("h").Obj(), ""},
		{"not responding", fwtest.MakeHost("h").State("notResponding").Obj(), "HostNotConnected"},
		{"disconnected", fwtest.MakeHost("h").State("disconnected").Obj(), "HostNotConnected"},
		{"maintenance", fwtest.MakeHost("h").Maintenance().Obj(), "HostInMaintenance"},
		{"cordoned", fwtest.MakeHost("h").Cordoned().Obj(), "HostCordoned"},
		{"lost wins over cordon", fwtest.MakeHost("h").State("notResponding").Cordoned().Obj(), "HostNotConnected"},
	}
	pod := fwtest.MakePod("p").Info()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := (&Plugin{}).Filter(context.Background(), nil, pod, tt.host)
			got := ""
			if !st.IsSuccess() {
				got = st.Reason
				if st.Code != framework.Unschedulable {
					t.Errorf("code = %v, want Unschedulable (host state can change)", st.Code)
				}
			}
			if got != tt.wantReason {
				t.Errorf("reason = %q, want %q", got, tt.wantReason)
			}
		})
	}
}
