package nativevm_test

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vapi/library"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
)

// templateOVF is a small OVF template: 1 vCPU, 256 MiB, a SCSI controller
// and one 1 GiB disk.
const templateOVF = `<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
  xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References/>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1"
      ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="linux-template">
    <Info>A virtual machine</Info>
    <Name>linux-template</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="otherLinux64Guest"><Info>Guest OS</Info></OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>linux-template</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:ElementName>1 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:ElementName>256MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>256</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
`

// seedLibrary makes a content library holding the OVF template as item
// linux-template, through the vAPI as `govc library.create` and
// `govc library.import` do.
func (e *env) seedLibrary(lib string) {
	e.t.Helper()
	ctx := context.Background()
	rc, err := e.s.REST(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rc.Logout(ctx)
	dss, err := e.s.Finder.DatastoreList(ctx, "*")
	if err != nil {
		e.t.Fatal(err)
	}
	ds := dss[0]
	m := library.NewManager(rc)
	libID, err := m.CreateLibrary(ctx, library.Library{Name: lib, Type: "LOCAL",
		Storage: []library.StorageBacking{{DatastoreID: ds.Reference().Value, Type: "DATASTORE"}}})
	if err != nil {
		e.t.Fatal(err)
	}
	itemID, err := m.CreateLibraryItem(ctx, library.Item{Name: "linux-template", Type: library.ItemTypeOVF, LibraryID: libID})
	if err != nil {
		e.t.Fatal(err)
	}
	session, err := m.CreateLibraryItemUpdateSession(ctx, library.Session{LibraryItemID: itemID})
	if err != nil {
		e.t.Fatal(err)
	}
	up, err := m.AddLibraryItemFile(ctx, session, library.UpdateFile{Name: "linux-template.ovf", SourceType: "PUSH", Size: int64(len(templateOVF))})
	if err != nil {
		e.t.Fatal(err)
	}
	u, err := url.Parse(up.UploadEndpoint.URI)
	if err != nil {
		e.t.Fatal(err)
	}
	p := soap.DefaultUpload
	p.ContentLength = int64(len(templateOVF))
	if err := rc.Upload(ctx, strings.NewReader(templateOVF), u, &p); err != nil {
		e.t.Fatal(err)
	}
	if err := m.CompleteLibraryItemUpdateSession(ctx, session); err != nil {
		e.t.Fatal(err)
	}
}

// TestVMFromContentLibrary: an image naming a content library item is
// deployed from its OVF template by vCenter (the template's controller
// and disk are the VM's), then given the class's size, its cloud-init
// data and its extra disks.
func TestVMFromContentLibrary(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.seedLibrary("podvisor-templates")
	e.declareClass("small", events.VirtualMachineClassSpec{CPUs: 2, Memory: "1Gi"})
	e.declareImage(events.VirtualMachineImageSpec{ContentLibrary: &events.ContentLibraryItem{Library: "podvisor-templates", Item: "linux-template"}})
	decl := vmDecl("small", events.PowerStatePoweredOn)
	decl.VM.Spec.Disks = []events.VMDisk{{Name: "data", Size: "64Mi"}}
	r := e.runOn(decl, e.dc.Hosts()[1])
	vm := e.vm(r)
	var m mo.VirtualMachine
	if err := vm.Properties(ctx, vm.Reference(), []string{"config", "runtime"}, &m); err != nil {
		t.Fatal(err)
	}
	if m.Config.Hardware.NumCPU != 2 || m.Config.Hardware.MemoryMB != 1024 || m.Config.GuestId != "otherLinux64Guest" {
		t.Errorf("vCenter: %d vCPU, %d MB, guest %s; want the class's 2 vCPU, 1024 MB and the template's guest", m.Config.Hardware.NumCPU, m.Config.Hardware.MemoryMB, m.Config.GuestId)
	}
	var h mo.HostSystem
	if err := e.s.Client.RetrieveOne(ctx, *m.Runtime.Host, []string{"name"}, &h); err != nil || h.Name != e.dc.Hosts()[1].Name {
		t.Errorf("deployed on %s (%v), want %s", h.Name, err, e.dc.Hosts()[1].Name)
	}
	devices := object.VirtualDeviceList(m.Config.Hardware.Device)
	if len(devices.SelectByType((*types.VirtualLsiLogicController)(nil))) != 1 {
		t.Errorf("no LSI Logic controller: the template's hardware was not deployed")
	}
	sizes := map[string]int64{}
	for _, d := range devices.SelectByType((*types.VirtualDisk)(nil)) {
		disk := d.(*types.VirtualDisk)
		file := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo).GetVirtualDeviceFileBackingInfo().FileName
		sizes[file[strings.LastIndex(file, "/")+1:]] = disk.CapacityInBytes
	}
	if len(sizes) != 2 || sizes["data.vmdk"] != 64<<20 {
		t.Errorf("disks %v: want the template's 1 GiB disk and data.vmdk of 64 MiB", sizes)
	}
	var tmpl bool
	for _, c := range sizes {
		tmpl = tmpl || c == 1<<30
	}
	if !tmpl {
		t.Errorf("disks %v: the template's 1 GiB disk is missing", sizes)
	}
	info := map[string]string{}
	for _, o := range m.Config.ExtraConfig {
		v := o.GetOptionValue()
		info[v.Key], _ = v.Value.(string)
	}
	if info["guestinfo.userdata"] == "" || info["guestinfo.podvisor.vm"] != "team-a/vm1" {
		t.Errorf("guestinfo %v: want the cloud-init data", info)
	}

	// The extra disk removed from the spec is detached; the template's
	// disk, in the same directory, is the VM's own and stays.
	decl.VM.Spec.Disks = nil
	r = e.apply(decl, e.dc.Hosts()[1])
	hardwareSynced(t, r, events.ConditionTrue)
	left, _ := e.disks(vm)
	if _, ok := left["data.vmdk"]; ok || len(left) != 1 {
		t.Errorf("disks %v after data was removed from the spec: want only the template's", left)
	}
	for _, d := range left {
		if d.Capacity != 1<<30 {
			t.Errorf("disks %v after data was removed from the spec: want only the template's", left)
		}
	}
}

// TestVMFromContentLibraryBootsTheOCIRoot: an image with both sources is
// deployed from the template, its first disk replaced by the OCI root's
// boot disk, which the simulated guest boots.
func TestVMFromContentLibraryBootsTheOCIRoot(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.seedLibrary("podvisor-templates")
	e.declareClass("small", events.VirtualMachineClassSpec{CPUs: 1, Memory: "512Mi"})
	e.declareImage(events.VirtualMachineImageSpec{OCI: e.img, ContentLibrary: &events.ContentLibraryItem{Library: "podvisor-templates", Item: "linux-template"}})
	r := e.runOn(vmDecl("small", events.PowerStatePoweredOn), e.dc.Hosts()[0])
	vm := e.vm(r)
	var m mo.VirtualMachine
	if err := vm.Properties(ctx, vm.Reference(), []string{"config.hardware.device"}, &m); err != nil {
		t.Fatal(err)
	}
	devices := object.VirtualDeviceList(m.Config.Hardware.Device)
	disks := devices.SelectByType((*types.VirtualDisk)(nil))
	if len(disks) != 1 || !strings.HasSuffix(devices.TypeName(disks[0]), "VirtualDisk") ||
		!strings.HasSuffix(disks[0].GetVirtualDevice().Backing.(types.BaseVirtualDeviceFileBackingInfo).GetVirtualDeviceFileBackingInfo().FileName, "/root.vmdk") {
		t.Fatalf("disks %d: want only the OCI boot disk root.vmdk in place of the template's", len(disks))
	}
	e.waitConsole(vm.Reference().Value, "cloud-config applied")
}
