// Package qemutest boots the pod VM image under QEMU (TCG: no KVM needed)
// the way vSphere would run a pod VM: the boot disk (the image's VMDK
// extent) on the IDE bus, a paravirtual SCSI controller carrying the
// ephemeral disk at scsi0:0, an image chain disk (erofs, made as the image
// cache makes them) read-only at scsi0:1 and a configuration disk with the
// pod's guestinfo, and the guest channel on the second serial port. The
// test plays the host agent's side of the channel.
package qemutest
