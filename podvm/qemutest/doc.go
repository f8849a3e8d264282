// Package qemutest boots the pod VM image under QEMU (TCG: no KVM needed)
// the way vSphere would run a pod VM, for tests: package podvm/qemu does
// the work and returns errors; this package fails the test instead, kills
// QEMU and removes its RAM's file when the test ends, and logs QEMU's
// output and the console of a test that failed. See podvm/qemu for the
// machine: the boot disk (the image's VMDK extent) on the IDE bus, a
// paravirtual SCSI controller carrying the ephemeral disk at scsi0:0, an
// image chain disk (erofs, made as the image cache makes them) read-only
// at scsi0:1 and a configuration disk with the pod's guestinfo, and the
// guest channel on the second serial port.
// TestBootRunsContainer plays the host agent's side of the channel; the
// package's helpers (MakeDisks, Boot) let a test elsewhere put the real
// host side there instead (cmd/internal/cli: a network serial port to the
// host agents' concentrator, as a vSphere host connects one), and
// Machine.Fork stands in for an instant clone: the parent frozen, its
// memory (a file on /dev/shm) mapped copy-on-write by the child, only its
// devices' state saved and loaded.
package qemutest
