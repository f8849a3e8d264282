// Package qemu runs the pod VM boot image under QEMU (TCG: no KVM needed)
// the way vSphere runs a pod VM, for the tests that boot the real image
// (podvm/qemutest wraps it for *testing.T) and for `podvisor bench
// --qemu-pairs`, which measures a fork against a boot with it.
//
// A pod VM's disks (MakeDisks, or BuildBootImage, MakeImageDisk and
// Disks.For when several VMs share one image): the boot disk (the image's
// VMDK extent) on the IDE bus, a paravirtual SCSI controller carrying the
// ephemeral disk at scsi0:0, an image chain disk (erofs, made as the image
// cache makes them) read-only at scsi0:1 and a configuration disk with the
// pod's guestinfo at scsi0:15. Boot starts QEMU on them, its RAM on a file
// in /dev/shm that it maps shared, and the guest channel on the second
// serial port, whatever the caller says it is: a unix socket, the host
// agents' concentrator (cmd/internal/cli's tests), or a Line, the host
// side of one VM's channel, which the bench uses to see the pod's
// container reported running.
//
// Machine.Fork stands in for an instant clone as vSphere's VMFork makes
// one: the parent frozen for good, its memory mapped copy-on-write by the
// child, only its devices' state saved and loaded (x-ignore-shared), the
// child given a copy of the ephemeral disk and a configuration disk of its
// own, from which its agent learns that it is another pod's VM and takes
// it over.
//
// Everything returns errors; the caller closes what it started
// (Machine.Close, Line.Close).
package qemu
