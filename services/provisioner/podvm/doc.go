// Package podvm is the provisioner's narrow window onto vCenter: everything
// it does to pod VMs, and nothing else.
//
// A pod VM is named pv-<uid>. vCenter (and vcsim even more so) accepts two
// VMs with the same name, so nothing here creates a VM without the caller
// having looked it up first with Find; creation is split into StartCreate,
// which returns the CreateVM task reference as soon as vCenter accepted the
// call, and WaitCreate, which waits for that task. The provisioner writes the
// task reference into the pod record between the two, so a process that dies
// while the task runs finds, after restart, either the finished VM (by name)
// or the task (by reference), never a reason to create a second VM.
//
// The VM itself is assembled by BuildConfigSpec, a pure function of Spec:
// CPU and memory from the shared sizing, one vmxnet3 NIC per attached
// network on its distributed port group, and per container one read/write
// child disk whose parent is the top disk of the image's chain — the image
// bytes stay where the image cache put them and are shared by every pod that
// uses the image. ExtraConfig carries guestinfo.podvisor.* for the guest
// agent (see the provisioner's guestinfo.go for the keys).
//
// Every call classifies vSphere faults for the caller: IsTransient says
// whether trying again later can help (busy resources, lost connections,
// timeouts), everything else is reported as is and treated as permanent.
package podvm
