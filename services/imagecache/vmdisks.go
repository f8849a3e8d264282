package imagecache

import (
	"context"
	"fmt"
	"iter"
	"regexp"
	"strings"

	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// What the image cache reads of the VMs in vCenter: which image disks they
// have attached (the collector keeps those, the rebuild after a Redis loss
// turns them into references again) and which pod each pod VM runs.

// imageDiskRE matches an image disk path: "[ds] podvisor-images/<hex>/disk.vmdk".
var imageDiskRE = regexp.MustCompile(`^\[([^\]]+)\] ` + regexp.QuoteMeta(events.ImageRoot) + `/([0-9a-f]{64})/disk\.vmdk$`)

// imageDiskKey is the chain record key ("<chainID>@<ds>") of an image
// disk's path, if the path is one.
func imageDiskKey(path string) (string, bool) {
	m := imageDiskRE.FindStringSubmatch(path)
	if m == nil {
		return "", false
	}
	return events.ChainRecordKey("sha256:"+m[2], m[1]), true
}

// podVMPrefix begins the names of pod VMs; templateVMPrefix those of the
// provisioner's pod VM templates (pv-template-<hash of the shape and the
// agent>, services/provisioner/templates.Name).
const (
	podVMPrefix      = "pv-"
	templateVMPrefix = "pv-template-"
)

// uidProperty reads only the pod uid of a VM's ExtraConfig: the rest of
// it holds the whole guest spec, which the rebuild has no use for.
var uidProperty = fmt.Sprintf("config.extraConfig[%q]", vsphere.GuestinfoUID)

// podVMNameRE matches the name of a pod VM the provisioner made: pv-<uid>
// for a pod's first VM, pv-<uid>-<n> for the one made again after an
// eviction that could not remove the old one (services/provisioner.vmName).
// A pod uid is a UUID (services/provisioner.podUID), so the suffix is told
// from the uid by its form.
var podVMNameRE = regexp.MustCompile(`^` + podVMPrefix + `([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})(?:-[0-9]+)?$`)

// podUID is the uid of the pod a pod VM (pv-…) runs: the one its guestinfo
// names (the provisioner writes it on every pod VM, forked ones included),
// else the one its name carries. A name not of the provisioner's form (a
// uid not made by it) is taken whole after the prefix: the suffix of an
// evicted pod's VM cannot be told from such a uid.
func podUID(vm mo.VirtualMachine) string {
	if id := vsphere.PodOf(vm.Config); id.UID != "" {
		return id.UID
	}
	if m := podVMNameRE.FindStringSubmatch(vm.Name); m != nil {
		return m[1]
	}
	uid, _ := strings.CutPrefix(vm.Name, podVMPrefix)
	return uid
}

// allVMs reads props of every VM in vCenter in one property-collector
// retrieval (a container view of the root folder), so that its cost is
// one round trip however many VMs there are.
func (s *Service) allVMs(ctx context.Context, props ...string) ([]mo.VirtualMachine, error) {
	c := s.store.Client()
	v, err := view.NewManager(c).CreateContainerView(ctx, c.ServiceContent.RootFolder, []string{"VirtualMachine"}, true)
	if err != nil {
		return nil, fmt.Errorf("list VMs: %w", err)
	}
	defer func() { _ = v.Destroy(context.WithoutCancel(ctx)) }()
	var vms []mo.VirtualMachine
	if err := v.Retrieve(ctx, []string{"VirtualMachine"}, props, &vms); err != nil {
		return nil, fmt.Errorf("list VMs: %w", err)
	}
	return vms, nil
}

// diskFiles lists the files of a disk's backing chain: its own, then its
// parents' (a child disk's backing.parent, as a linked clone's), top first.
func diskFiles(d *types.VirtualDisk) []string {
	var files []string
	for b := d.Backing; b != nil; b = parentBacking(b) {
		fb, ok := b.(types.BaseVirtualDeviceFileBackingInfo)
		if !ok {
			break
		}
		files = append(files, fb.GetVirtualDeviceFileBackingInfo().FileName)
	}
	return files
}

// parentBacking is the backing of a delta disk's parent, or nil. A nil
// pointer is returned as a nil interface, so that the caller's loop ends.
func parentBacking(b types.BaseVirtualDeviceBackingInfo) types.BaseVirtualDeviceBackingInfo {
	switch b := b.(type) {
	case *types.VirtualDiskFlatVer2BackingInfo:
		if b.Parent != nil {
			return b.Parent
		}
	case *types.VirtualDiskSeSparseBackingInfo:
		if b.Parent != nil {
			return b.Parent
		}
	case *types.VirtualDiskSparseVer2BackingInfo:
		if b.Parent != nil {
			return b.Parent
		}
	}
	return nil
}

// attachedChains maps the record key of every image disk some VM in
// vCenter has attached, as a disk or as the parent of one, to the name of
// one such VM. A VM whose configuration vCenter cannot give (inaccessible,
// being registered) says nothing of its disks and is passed over.
func (s *Service) attachedChains(ctx context.Context) (map[string]string, error) {
	vms, err := s.allVMs(ctx, "name", "config.hardware.device")
	if err != nil {
		return nil, err
	}
	attached := map[string]string{}
	for _, vm := range vms {
		for keys := range imageDisksOf(vm) {
			for _, key := range keys {
				attached[key] = vm.Name
			}
		}
	}
	return attached, nil
}

// imageDisksOf yields, for each disk of vm, the record keys of the image
// disks in its backing chain (the disk itself first, then its parents);
// none for a VM whose configuration vCenter did not give.
func imageDisksOf(vm mo.VirtualMachine) iter.Seq[[]string] {
	return func(yield func([]string) bool) {
		if vm.Config == nil {
			return
		}
		for _, dev := range vm.Config.Hardware.Device {
			disk, ok := dev.(*types.VirtualDisk)
			if !ok {
				continue
			}
			var keys []string
			for _, f := range diskFiles(disk) {
				if key, ok := imageDiskKey(f); ok {
					keys = append(keys, key)
				}
			}
			if !yield(keys) {
				return
			}
		}
	}
}
