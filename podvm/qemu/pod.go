package qemu

import (
	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/vmboot"
)

// ChannelDevice is the guest channel's address inside a pod VM: the
// second serial port, as the provisioner configures a pod VM's
// (services/provisioner/podvm.ChannelDevice).
const ChannelDevice = "serial:/dev/ttyS1"

// PodSpec is a pod of one busybox container, main, running script under
// sh, on the disks MakeDisks makes: the ephemeral disk (ext4) and the
// image disk of ChainID.
func PodSpec(uid, namespace, name, script string) *guestchannel.PodSpec {
	return &guestchannel.PodSpec{
		Version: guestchannel.SpecVersion, UID: uid, Namespace: namespace, Name: name, Hostname: name,
		RestartPolicy: "Never", TerminationGracePeriodSeconds: 1,
		Disks: []guestchannel.Disk{
			{Role: guestchannel.DiskEphemeral, Unit: "scsi0:0", FS: "ext4"},
			{Role: guestchannel.DiskImage, Unit: "scsi0:1", FS: "erofs", ChainID: ChainID},
		},
		Containers: []guestchannel.Container{{Name: "main", Image: "busybox", Chain: []string{ChainID},
			Command: []string{"/bin/sh", "-c", script}}},
	}
}

// Guestinfo is what the provisioner gives a pod VM whose channel is a
// serial port: the spec, the channel's device and the VM's uuid.
func Guestinfo(spec *guestchannel.PodSpec, vmUUID string) (map[string]string, error) {
	specJSON, err := guestchannel.MarshalSpec(spec)
	if err != nil {
		return nil, err
	}
	return map[string]string{
		guestchannel.GuestinfoSpec:    specJSON,
		guestchannel.GuestinfoChannel: ChannelDevice,
		vmboot.GuestinfoVMUUID:        vmUUID,
	}, nil
}

// Card is the QEMU arguments of a pod VM's vmxnet3 card with address mac,
// on QEMU's user network with nothing outside reached. A plain PCI card,
// not PCI Express: as one, QEMU's vmxnet3 derives a serial number in its
// configuration space from the address, and refuses to load a saved card
// (Machine.Fork) whose address differs, while a child's card has an
// address of its own, as vSphere gives an instant clone's cards.
func Card(mac string) []string {
	return []string{"-netdev", "user,id=net0,restrict=on", "-device", "vmxnet3,netdev=net0,x-disable-pcie=on,mac=" + mac}
}
