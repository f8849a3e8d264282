package vsphere

import "github.com/vmware/govmomi/vim25/types"

// The guestinfo keys the provisioner writes on every pod VM. They name the
// VM's pod to whoever reads vCenter (drift repair matching a VM to its
// record even if the VM was renamed, migration checking what it moves).
const (
	GuestinfoUID       = "guestinfo.podvisor.uid"
	GuestinfoNamespace = "guestinfo.podvisor.namespace"
	GuestinfoPod       = "guestinfo.podvisor.name"
)

// PodIdentity is the pod a VM belongs to, as its guestinfo says.
type PodIdentity struct {
	UID, Namespace, Pod string
}

// PodOf reads the pod identity from a VM's configuration (empty for a VM
// without one, or that is not a pod VM).
func PodOf(cfg *types.VirtualMachineConfigInfo) PodIdentity {
	var id PodIdentity
	if cfg == nil {
		return id
	}
	for _, o := range cfg.ExtraConfig {
		ov := o.GetOptionValue()
		s, _ := ov.Value.(string)
		switch ov.Key {
		case GuestinfoUID:
			id.UID = s
		case GuestinfoNamespace:
			id.Namespace = s
		case GuestinfoPod:
			id.Pod = s
		}
	}
	return id
}
