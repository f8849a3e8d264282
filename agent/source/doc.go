// Package source finds where a pod VM's guestinfo comes from. On vSphere the
// values are the VM's ExtraConfig keys, read through the VMware backdoor
// ("info-get guestinfo.podvisor.spec"); a hypervisor without the backdoor
// (QEMU in the boot test, any rig) attaches a configuration disk
// (agent/configdisk) instead. The pod VM's init asks each source in turn and
// uses the first that answers.
package source
