package install

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// MinVersion is the oldest vCenter podvisor supports (vSphere 7.0: vsock
// to the host, InstantClone).
var MinVersion = []int{7, 0}

// Privileges the account needs on the datacenter.
var Privileges = []string{
	"Folder.Create",
	"Datastore.AllocateSpace", "Datastore.FileManagement", "Datastore.Browse",
	"VirtualMachine.Inventory.Create", "VirtualMachine.Inventory.Delete",
	"VirtualMachine.Config.AddNewDisk", "VirtualMachine.Config.AdvancedConfig",
	"VirtualMachine.Interact.PowerOn", "VirtualMachine.Interact.PowerOff",
	"VirtualMachine.Provisioning.MarkAsTemplate", "VirtualMachine.Provisioning.Clone",
	"Resource.AssignVMToPool", "Network.Assign", "DVPortgroup.Create", "DVSwitch.Modify",
}

// Image file names (podvm/build).
const (
	descriptorFile = "podvm.vmdk"
	flatFile       = "podvm-flat.vmdk"
)

// Options of an install.
type Options struct {
	// Folder is the VM folder (under the datacenter's vm folder).
	Folder string
	// Datastore holds the boot image; empty means the accessible datastore
	// with the most free space.
	Datastore string
	// ImageDir holds podvm.vmdk and podvm-flat.vmdk.
	ImageDir string
}

// Step is one thing install did or found done.
type Step struct {
	What    string
	Changed bool
}

func (s Step) String() string {
	if s.Changed {
		return "created  " + s.What
	}
	return "exists   " + s.What
}

// ErrPrerequisites wraps the list of what is missing.
var ErrPrerequisites = errors.New("prerequisites missing")

// Installed is what an install made or found done.
type Installed struct {
	Steps []Step
	// BootDisk is the boot image's disk as the provisioner takes it
	// (PODVISOR_PROVISIONER_BOOT_DISK): "[DS] podvisor/boot-<digest12>/podvm.vmdk".
	BootDisk string
}

// Install runs the checks, then the steps. It returns the steps done so
// far and, once the image is uploaded, its boot disk; or an error listing
// every missing prerequisite.
func Install(ctx context.Context, s *vsphere.Session, o Options) (Installed, error) {
	var out Installed
	if o.Folder == "" {
		o.Folder = "podvisor"
	}
	digest, err := imageDigest(o.ImageDir)
	if err != nil {
		return out, err
	}
	ds, err := Check(ctx, s, o.Datastore, imageSize(o.ImageDir))
	if err != nil {
		return out, err
	}
	folder, step, err := ensureFolder(ctx, s, o.Folder)
	if err != nil {
		return out, err
	}
	out.Steps = append(out.Steps, step)
	dir := "podvisor/boot-" + digest[:12]
	uploaded, err := ensureUpload(ctx, s, ds, o.ImageDir, dir)
	out.Steps = append(out.Steps, uploaded...)
	if err != nil {
		return out, err
	}
	out.BootDisk = ds.Path(dir + "/" + descriptorFile)
	step, err = ensureTemplate(ctx, s, folder, ds, dir, "podvisor-podvm-"+digest[:12], digest)
	if err != nil {
		return out, err
	}
	out.Steps = append(out.Steps, step)
	return out, nil
}

// Check verifies the prerequisites and returns the datastore to use. Every
// missing item is named in the error.
func Check(ctx context.Context, s *vsphere.Session, datastore string, need int64) (*object.Datastore, error) {
	var missing []string
	about := s.Client.ServiceContent.About
	if about.ApiType != "VirtualCenter" {
		missing = append(missing, fmt.Sprintf("vCenter: %s is a %s, not a vCenter (templates, DVS and vsock routing need one)", about.FullName, about.ApiType))
	}
	if !atLeast(about.Version, MinVersion) {
		missing = append(missing, fmt.Sprintf("vCenter version: %s is older than %d.%d", about.Version, MinVersion[0], MinVersion[1]))
	}

	nets, err := s.Finder.NetworkList(ctx, "*")
	if err != nil && !isNotFound(err) {
		return nil, fmt.Errorf("list networks: %w", err)
	}
	hasDVS := false
	for _, n := range nets {
		if _, ok := n.(*object.DistributedVirtualSwitch); ok {
			hasDVS = true
		}
		if _, ok := n.(*object.VmwareDistributedVirtualSwitch); ok {
			hasDVS = true
		}
	}
	if !hasDVS {
		missing = append(missing, "distributed switch: none in the datacenter (network-config puts each network's port group on a DVS)")
	}

	ds, why, err := pickDatastore(ctx, s, datastore, need)
	if err != nil {
		return nil, err
	}
	if why != "" {
		missing = append(missing, why)
	}

	granted, err := privileges(ctx, s)
	if err != nil {
		return nil, err
	}
	for _, p := range Privileges {
		if !granted[p] {
			missing = append(missing, "privilege: "+p+" on the datacenter")
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w:\n  - %s", ErrPrerequisites, strings.Join(missing, "\n  - "))
	}
	return ds, nil
}

func pickDatastore(ctx context.Context, s *vsphere.Session, name string, need int64) (*object.Datastore, string, error) {
	list, err := s.Finder.DatastoreList(ctx, "*")
	if err != nil && !isNotFound(err) {
		return nil, "", fmt.Errorf("list datastores: %w", err)
	}
	if len(list) == 0 {
		return nil, "datastore: none in the datacenter", nil
	}
	refs := make([]types.ManagedObjectReference, len(list))
	for i, d := range list {
		refs[i] = d.Reference()
	}
	var mos []mo.Datastore
	if err := s.Client.PropertyCollector().Retrieve(ctx, refs, []string{"name", "summary"}, &mos); err != nil {
		return nil, "", fmt.Errorf("datastores: %w", err)
	}
	var best *mo.Datastore
	var names []string
	for i := range mos {
		m := &mos[i]
		names = append(names, m.Name)
		if name != "" && m.Name != name {
			continue
		}
		if !m.Summary.Accessible {
			continue
		}
		if best == nil || m.Summary.FreeSpace > best.Summary.FreeSpace {
			best = m
		}
	}
	switch {
	case best == nil && name != "":
		return nil, fmt.Sprintf("datastore: %q is not an accessible datastore of the datacenter (there are: %s)", name, strings.Join(names, ", ")), nil
	case best == nil:
		return nil, "datastore: none is accessible", nil
	case best.Summary.FreeSpace < need:
		return nil, fmt.Sprintf("datastore: %s has %d bytes free, the boot image needs %d", best.Name, best.Summary.FreeSpace, need), nil
	}
	// The finder's object knows its datacenter, which uploads need.
	ds, err := s.Finder.Datastore(ctx, best.Name)
	if err != nil {
		return nil, "", fmt.Errorf("datastore %s: %w", best.Name, err)
	}
	return ds, "", nil
}

// privileges asks which of Privileges this session holds on the datacenter.
func privileges(ctx context.Context, s *vsphere.Session) (map[string]bool, error) {
	var sess mo.SessionManager
	if err := s.Client.PropertyCollector().RetrieveOne(ctx, *s.Client.ServiceContent.SessionManager, []string{"currentSession"}, &sess); err != nil {
		return nil, fmt.Errorf("current session: %w", err)
	}
	if sess.CurrentSession == nil {
		return nil, errors.New("current session: not logged in")
	}
	res, err := methods.HasPrivilegeOnEntity(ctx, s.Client.Client, &types.HasPrivilegeOnEntity{
		This:      *s.Client.ServiceContent.AuthorizationManager,
		Entity:    s.Datacenter.Reference(),
		SessionId: sess.CurrentSession.Key,
		PrivId:    Privileges,
	})
	if err != nil {
		return nil, fmt.Errorf("check privileges: %w", err)
	}
	granted := map[string]bool{}
	for i, ok := range res.Returnval {
		if i < len(Privileges) {
			granted[Privileges[i]] = ok
		}
	}
	return granted, nil
}

func ensureFolder(ctx context.Context, s *vsphere.Session, name string) (*object.Folder, Step, error) {
	folders, err := s.Datacenter.Folders(ctx)
	if err != nil {
		return nil, Step{}, fmt.Errorf("datacenter folders: %w", err)
	}
	path := folders.VmFolder.InventoryPath + "/" + name
	step := Step{What: "folder " + path}
	f, err := s.Finder.Folder(ctx, path)
	if err == nil {
		return f, step, nil
	}
	if !isNotFound(err) {
		return nil, step, fmt.Errorf("folder %s: %w", path, err)
	}
	f, err = folders.VmFolder.CreateFolder(ctx, name)
	if err != nil {
		return nil, step, fmt.Errorf("create folder %s: %w", path, err)
	}
	f.InventoryPath = path
	step.Changed = true
	return f, step, nil
}

// ensureUpload puts the boot image's two files in dir unless a file of the
// same size is there already (the directory is named after the digest).
func ensureUpload(ctx context.Context, s *vsphere.Session, ds *object.Datastore, imageDir, dir string) ([]Step, error) {
	var steps []Step
	fm := object.NewFileManager(s.Client.Client)
	if err := fm.MakeDirectory(ctx, ds.Path(dir), s.Datacenter, true); err != nil {
		return nil, fmt.Errorf("make directory %s: %w", ds.Path(dir), err)
	}
	// The extent first: a descriptor present means the upload finished.
	for _, name := range []string{flatFile, descriptorFile} {
		local := filepath.Join(imageDir, name)
		st, err := os.Stat(local)
		if err != nil {
			return steps, fmt.Errorf("boot image: %w (run make podvm-image)", err)
		}
		remote := dir + "/" + name
		step := Step{What: fmt.Sprintf("[%s] %s", ds.Name(), remote)}
		info, err := ds.Stat(ctx, remote)
		if err == nil {
			if f := info.GetFileInfo(); f.FileSize == st.Size() {
				steps = append(steps, step)
				continue
			}
		}
		p := soap.DefaultUpload // PUT
		p.ContentLength = st.Size()
		if err := ds.UploadFile(ctx, local, remote, &p); err != nil {
			return steps, fmt.Errorf("upload %s: %w", remote, err)
		}
		step.Changed = true
		steps = append(steps, step)
	}
	return steps, nil
}

// ensureTemplate creates the pod VM template: the boot disk on SATA 0:0
// (independent-nonpersistent, shared by every VM made from it) and first
// to boot, a paravirtual SCSI controller for the pod's disks, marked as a
// template. The provisioner makes its pod VMs the same way
// (podvm.Spec.BootDisk).
func ensureTemplate(ctx context.Context, s *vsphere.Session, folder *object.Folder, ds *object.Datastore, dir, name, digest string) (Step, error) {
	step := Step{What: "template " + folder.InventoryPath + "/" + name}
	if _, err := s.Finder.VirtualMachine(ctx, folder.InventoryPath+"/"+name); err == nil {
		return step, nil
	} else if !isNotFound(err) {
		return step, fmt.Errorf("template %s: %w", name, err)
	}
	host, pool, err := templatePlace(ctx, ds)
	if err != nil {
		return step, fmt.Errorf("where to create the template: %w", err)
	}
	var devices object.VirtualDeviceList
	scsi, err := devices.CreateSCSIController("pvscsi")
	if err != nil {
		return step, err
	}
	scsi.(types.BaseVirtualSCSIController).GetVirtualSCSIController().Key = -1
	key := int32(-1)
	boot := podvm.BootDiskDevices(ds.Path(dir+"/"+descriptorFile), func() int32 { key--; return key })
	spec := types.VirtualMachineConfigSpec{
		Name:     name,
		GuestId:  "other5xLinux64Guest",
		NumCPUs:  1,
		MemoryMB: 512,
		Files:    &types.VirtualMachineFileInfo{VmPathName: fmt.Sprintf("[%s]", ds.Name())},
		ExtraConfig: []types.BaseOptionValue{
			&types.OptionValue{Key: "podvisor.bootImage", Value: digest},
			// Boot from the boot disk, as the provisioner's pod VMs do.
			&types.OptionValue{Key: podvm.BootOrderKey, Value: podvm.BootOrderHDD},
			&types.OptionValue{Key: podvm.HDDOrderKey, Value: podvm.BootDiskUnit},
		},
		DeviceChange: append(boot,
			&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: scsi}),
	}
	task, err := folder.CreateVM(ctx, spec, pool, host)
	if err != nil {
		return step, fmt.Errorf("create template %s: %w", name, err)
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return step, fmt.Errorf("create template %s: %w", name, err)
	}
	vm := object.NewVirtualMachine(s.Client.Client, info.Result.(types.ManagedObjectReference))
	if err := vm.MarkAsTemplate(ctx); err != nil {
		return step, fmt.Errorf("mark %s as a template: %w", name, err)
	}
	step.Changed = true
	return step, nil
}

// templatePlace is the first host that mounts ds and the root resource
// pool of its cluster (or its own, alone): the template must be where its
// boot disk is, a datacenter with several clusters has no one default
// pool, and a cluster without DRS takes a VM only on a named host.
func templatePlace(ctx context.Context, ds *object.Datastore) (*object.HostSystem, *object.ResourcePool, error) {
	hosts, err := ds.AttachedHosts(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("hosts of datastore %s: %w", ds.Name(), err)
	}
	if len(hosts) == 0 {
		return nil, nil, fmt.Errorf("no host mounts datastore %s", ds.Name())
	}
	pool, err := hosts[0].ResourcePool(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("resource pool of host %s: %w", hosts[0].Reference().Value, err)
	}
	return hosts[0], pool, nil
}

// imageDigest is the SHA-256 of the boot disk's extent.
func imageDigest(dir string) (string, error) {
	f, err := os.Open(filepath.Join(dir, flatFile))
	if err != nil {
		return "", fmt.Errorf("boot image: %w (run make podvm-image)", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("boot image: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func imageSize(dir string) int64 {
	st, err := os.Stat(filepath.Join(dir, flatFile))
	if err != nil {
		return 0
	}
	return st.Size()
}

func atLeast(version string, min []int) bool {
	parts := strings.Split(version, ".")
	for i, m := range min {
		if i >= len(parts) {
			return false
		}
		n, err := strconv.Atoi(parts[i])
		if err != nil {
			return false
		}
		if n != m {
			return n > m
		}
	}
	return true
}

func isNotFound(err error) bool {
	var nf *find.NotFoundError
	return errors.As(err, &nf)
}
