// Package build makes the pod VM boot image from what a Debian machine has
// installed: the kernel of linux-image-amd64, the modules a pod VM needs
// (resolved through modules.dep), and an initramfs whose /init is the pod VM
// first stage (agent/cmd/podvm-init) followed by the agent, with the OCI
// runtime (runc and the shared libraries it links), busybox and mkfs.ext4.
//
// The initramfs is reproducible: files in name order, owner root, times
// zero, gzip without name or time, so the same inputs give the same bytes.
// The boot disk is an MBR disk with one FAT partition holding the kernel,
// the initramfs and syslinux (a BIOS boot loader: vSphere and QEMU both
// boot it), written as a VMDK (monolithicFlat: a descriptor and the raw
// extent, the form the datastore file API uploads) and described by an OVF
// (the VM's hardware: paravirtual SCSI, serial port, the boot disk on SATA).
package build
