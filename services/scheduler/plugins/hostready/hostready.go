// Package hostready filters out hosts that must not receive pods: not
// connected to vCenter, in maintenance mode, or cordoned by a drain.
package hostready

import (
	"context"

	"github.com/podvisor/podvisor/services/scheduler/framework"
)

// Name of the plugin in profiles.
const Name = "HostReady"

// Plugin is the HostReady filter.
type Plugin struct{}

var _ framework.FilterPlugin = (*Plugin)(nil)

// New is the plugin's factory.
func New(framework.Handle) (framework.Plugin, error) { return &Plugin{}, nil }

// Name implements framework.Plugin.
func (*Plugin) Name() string { return Name }

// Reasons of the refusals that come from vCenter's state of the host.
const (
	ReasonNotConnected  = "HostNotConnected"
	ReasonInMaintenance = "HostInMaintenance"
)

// These can all change (a host reconnects, leaves maintenance, is
// uncordoned), so they are Unschedulable rather than unresolvable.
var (
	statusNotConnected = framework.NewStatus(framework.Unschedulable, ReasonNotConnected, "host not connected")
	statusMaintenance  = framework.NewStatus(framework.Unschedulable, ReasonInMaintenance, "host in maintenance mode")
	statusCordoned     = framework.NewStatus(framework.Unschedulable, "HostCordoned", "host cordoned")
)

// Filter implements framework.FilterPlugin.
func (*Plugin) Filter(_ context.Context, _ *framework.CycleState, _ *framework.PodInfo, h *framework.Host) *framework.Status {
	switch {
	case !h.Connected():
		return statusNotConnected
	case h.Maintenance:
		return statusMaintenance
	case h.Cordoned:
		return statusCordoned
	}
	return nil
}
