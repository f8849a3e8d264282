package build

import "fmt"

// VMDK formats an OVF names.
const (
	FormatFlat   = "monolithicflat"
	FormatStream = "streamOptimized"
)

// OVF describes the pod VM template: 1 vCPU and 512 MiB to start with (the
// provisioner sizes each pod VM), BIOS firmware, the boot disk on a SATA
// controller (so that SCSI bus 0 is the pod's: its ephemeral disk at
// scsi0:0, image disks after it) and a paravirtual SCSI controller, a
// vmxnet3 NIC, a serial port and the guestinfo keys the agent reads.
//
// format is FormatFlat (the OVF beside the monolithicFlat VMDK, for a
// datastore) or FormatStream (the OVF inside the OVA).
func OVF(vmdk, format string, fileSize, capacity int64) string {
	return fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
  xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:id="boot" ovf:href="%[1]s" ovf:size="%[3]d"/>
  </References>
  <DiskSection>
    <Info>The pod VM boot disk: kernel, initramfs (first stage, agent, OCI runtime)</Info>
    <Disk ovf:diskId="boot" ovf:fileRef="boot" ovf:capacity="%[2]d" ovf:capacityAllocationUnits="byte"
      ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#%[4]s"/>
  </DiskSection>
  <NetworkSection>
    <Info>The pod network</Info>
    <Network ovf:name="pod"><Description>The pod's primary network (a podvisor port group)</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="podvisor-podvm">
    <Info>A podvisor pod VM</Info>
    <Name>podvisor-podvm</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="other5xLinux64Guest"><Info>Linux</Info></OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType>
      </System>
      <Item><rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits><rasd:ElementName>1 vCPU</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>512 MB</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>512</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:ElementName>SATA controller 0</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>vmware.sata.ahci</rasd:ResourceSubType><rasd:ResourceType>20</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:ElementName>boot disk</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/boot</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID><rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:ElementName>SCSI controller 0</rasd:ElementName><rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>pod</rasd:Connection><rasd:ElementName>pod NIC</rasd:ElementName><rasd:InstanceID>6</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item ovf:required="false"><rasd:ElementName>serial port 0 (console)</rasd:ElementName><rasd:InstanceID>7</rasd:InstanceID>
        <rasd:ResourceType>21</rasd:ResourceType></Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="bios"/>
      <vmw:ExtraConfig ovf:required="false" vmw:key="guestinfo.podvisor.spec" vmw:value=""/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
`, vmdk, capacity, fileSize, format)
}
