// Package datastoreavailable filters out hosts that do not mount every
// datastore the profile requires (Profile.RequiredDatastores): on a real
// vCenter, the datastore of the pod VM boot disk, which every pod VM
// attaches (PODVISOR_PROVISIONER_BOOT_DISK). A pod placed on a host
// without it could not be created there; the provisioner would fail it.
// It also keeps a VM that moves (PodInfo.Datastores: a vMotion leaves the
// disks where they are) to hosts that mount its disks' datastores.
package datastoreavailable

import (
	"context"
	"slices"
	"strings"

	"github.com/podvisor/podvisor/services/scheduler/framework"
)

// Name of the plugin in profiles.
const Name = "DatastoreAvailable"

// Reason of a refusal.
const Reason = "DatastoreNotMounted"

// Plugin is the DatastoreAvailable filter.
type Plugin struct {
	required []string
}

var _ framework.FilterPlugin = (*Plugin)(nil)

// New is the plugin's factory: it reads the datastores the profile
// requires once.
func New(h framework.Handle) (framework.Plugin, error) {
	return &Plugin{required: slices.Clone(h.Profile().RequiredDatastores)}, nil
}

// Name implements framework.Plugin.
func (*Plugin) Name() string { return Name }

// Filter implements framework.FilterPlugin. A host can come to mount a
// datastore, so a refusal is Unschedulable (retried), not unresolvable.
func (p *Plugin) Filter(_ context.Context, _ *framework.CycleState, pod *framework.PodInfo, h *framework.Host) *framework.Status {
	var missing []string
	for _, ds := range p.required {
		if !slices.Contains(h.Datastores, ds) {
			missing = append(missing, ds)
		}
	}
	if len(missing) > 0 {
		return framework.NewStatus(framework.Unschedulable, Reason, "host does not mount datastore "+strings.Join(missing, ", ")+" (the pod VM boot disk's)")
	}
	for _, ds := range pod.Datastores {
		if !slices.Contains(h.Datastores, ds) {
			missing = append(missing, ds)
		}
	}
	if len(missing) > 0 {
		return framework.NewStatus(framework.Unschedulable, Reason, "host does not mount datastore "+strings.Join(missing, ", ")+" (the VM's disks are there)")
	}
	return nil
}
