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
// network on its distributed port group, disk 0 the pod's ephemeral disk
// (thin, created in the VM's directory: every container's writable layer,
// logs and emptyDir volumes), then every image chain disk the pod's
// containers use, each once, attached read-only as independent-nonpersistent
// — the image bytes stay where the image cache put them and are shared by
// every pod VM of the image, and nothing a VM does reaches them. Destroy
// detaches those shared disks first, since destroying a VM deletes the
// files of every disk still attached. ExtraConfig carries
// guestinfo.podvisor.spec, the guest agent's pod spec (see the
// provisioner's guestinfo.go), read by the guest at boot; SetExtraConfig
// rewrites it before an existing VM boots again.
//
// Every call classifies vSphere faults for the caller: IsTransient says
// whether trying again later can help (busy resources, lost connections,
// timeouts), everything else is reported as is and treated as permanent.
package podvm
