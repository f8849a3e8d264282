// Package configdisk is the pod VM's configuration disk: the guestinfo a
// hypervisor without the VMware backdoor (QEMU, a test rig) cannot give the
// guest, written onto a small raw disk attached to the VM.
//
// The format needs no filesystem driver and no tool to write: the first
// 512-byte sector starts with the magic "PODVISOR-CONFIG\n", then the
// format version and the length of the payload as decimal lines; the payload
// (a JSON object mapping guestinfo keys such as guestinfo.podvisor.spec to
// their string values) starts at byte 512. The disk is padded to whole
// sectors. A guest finds the disk by reading the first sector of each block
// device and looking for the magic.
package configdisk
