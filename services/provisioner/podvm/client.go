package podvm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strings"
	"sync"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// NamePrefix starts the name of every pod VM; List uses it to tell pod VMs
// from anything else a person put into the podvisor folders.
const NamePrefix = "pv-"

// UIDKey, NamespaceKey and PodKey are the ExtraConfig keys naming the pod
// (vsphere.PodOf reads them). List reads them so that drift repair can match
// a VM to its record even if the VM was renamed.
const (
	UIDKey       = vsphere.GuestinfoUID
	NamespaceKey = vsphere.GuestinfoNamespace
	PodKey       = vsphere.GuestinfoPod
)

// ErrTaskGone is returned by WaitCreate when vCenter no longer knows the task
// (vCenter forgets finished tasks after a while, and entirely on restart).
// The caller then looks the VM up by name.
var ErrTaskGone = errors.New("create task no longer known to vCenter")

// VM is what the provisioner needs to know about an existing pod VM.
type VM struct {
	Ref        types.ManagedObjectReference
	Name       string
	Host       string // inventory name of the host it runs on
	PowerState types.VirtualMachinePowerState
	UID        string // from guestinfo.podvisor.uid; empty if absent
	// Namespace and Pod name the pod the VM was made for (from guestinfo),
	// so drift repair can find the record of an apparently orphaned VM.
	Namespace string
	Pod       string
}

// Client performs pod VM operations in one datacenter.
type Client struct {
	vc     *vim25.Client
	dc     *object.Datacenter
	finder *find.Finder

	mu      sync.Mutex
	folders map[string]*object.Folder // ensured VM folders by relative path
	// folderWalk serializes the walks of EnsureFolder for folders not in
	// folders yet.
	folderWalk sync.Mutex
	cache      *lookups // hosts, pools and port groups of recent creates
	// cachedCreates are the VMs whose create, still running, used cached
	// lookups (see CreateFailed).
	cachedCreates map[string]bool

	// BlankEphemeral creates every disk 0 blank (the agent formats it)
	// instead of as a child of the datastore's pre-formatted template
	// (ephemeral.go). Set before the first create.
	BlankEphemeral bool
	// Logger says once per datastore why no template could be had; nil
	// discards.
	Logger    *slog.Logger
	templates templates
}

// New returns a client for the datacenter dc.
func New(vc *vim25.Client, dc *object.Datacenter) *Client {
	f := find.NewFinder(vc, true)
	f.SetDatacenter(dc)
	return &Client{vc: vc, dc: dc, finder: f, folders: map[string]*object.Folder{}, cache: newLookups(), cachedCreates: map[string]bool{}}
}

// Find returns the VM named name anywhere in the datacenter, or nil when
// there is none. Two VMs with the name (made by someone else, since podvisor
// looks before it creates) are reported as an error rather than guessed at.
func (c *Client) Find(ctx context.Context, name string) (*VM, error) {
	vms, err := c.retrieve(ctx, c.dc.Reference(), property.Match{"name": name})
	if err != nil {
		return nil, fmt.Errorf("find VM %s: %w", name, err)
	}
	switch len(vms) {
	case 0:
		return nil, nil
	case 1:
		return &vms[0], nil
	default:
		refs := make([]string, len(vms))
		for i, v := range vms {
			refs[i] = v.Ref.Value
		}
		return nil, fmt.Errorf("find VM %s: %d VMs carry this name (%s); remove the extra ones", name, len(vms), strings.Join(refs, ", "))
	}
}

// Get returns the VM with the reference ref, or nil when it no longer exists.
func (c *Client) Get(ctx context.Context, ref types.ManagedObjectReference) (*VM, error) {
	var m mo.VirtualMachine
	err := property.DefaultCollector(c.vc).RetrieveOne(ctx, ref, vmProps, &m)
	if err != nil {
		if isNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("get VM %s: %w", ref.Value, err)
	}
	vms, err := c.toVMs(ctx, []mo.VirtualMachine{m})
	if err != nil {
		return nil, err
	}
	return &vms[0], nil
}

// List returns every pod VM (name starting with pv-) below the VM folder
// root (for example "podvisor"). A missing root folder means no pod VMs.
func (c *Client) List(ctx context.Context, root string) ([]VM, error) {
	folder, err := c.lookupFolder(ctx, root)
	if err != nil {
		return nil, err
	}
	if folder == nil {
		return nil, nil
	}
	vms, err := c.retrieve(ctx, folder.Reference(), property.Match{"name": NamePrefix + "*"})
	if err != nil {
		return nil, fmt.Errorf("list pod VMs below %s: %w", root, err)
	}
	return vms, nil
}

// InstanceUUID is the VM's instance uuid as vCenter reports it (what the
// guest sees as its identity), or "" for a VM that no longer exists.
func (c *Client) InstanceUUID(ctx context.Context, ref types.ManagedObjectReference) (string, error) {
	var m mo.VirtualMachine
	if err := property.DefaultCollector(c.vc).RetrieveOne(ctx, ref, []string{"config.instanceUuid"}, &m); err != nil {
		if isNotFound(err) {
			return "", nil
		}
		return "", fmt.Errorf("instance uuid of VM %s: %w", ref.Value, err)
	}
	if m.Config == nil {
		return "", nil
	}
	return m.Config.InstanceUuid, nil
}

var vmProps = []string{"name", "runtime.powerState", "runtime.host", "config.extraConfig"}

func (c *Client) retrieve(ctx context.Context, root types.ManagedObjectReference, match property.Match) ([]VM, error) {
	m := view.NewManager(c.vc)
	v, err := m.CreateContainerView(ctx, root, []string{"VirtualMachine"}, true)
	if err != nil {
		return nil, err
	}
	defer func() { _ = v.Destroy(context.WithoutCancel(ctx)) }()
	refs, err := v.Find(ctx, []string{"VirtualMachine"}, match)
	if err != nil || len(refs) == 0 {
		return nil, err
	}
	var mos []mo.VirtualMachine
	if err := property.DefaultCollector(c.vc).Retrieve(ctx, refs, vmProps, &mos); err != nil {
		if isNotFound(err) {
			// A VM went away between the two calls: look again.
			return c.retrieve(ctx, root, match)
		}
		return nil, err
	}
	return c.toVMs(ctx, mos)
}

func (c *Client) toVMs(ctx context.Context, mos []mo.VirtualMachine) ([]VM, error) {
	hostNames := map[types.ManagedObjectReference]string{}
	var hostRefs []types.ManagedObjectReference
	for _, m := range mos {
		if h := m.Runtime.Host; h != nil {
			if _, ok := hostNames[*h]; !ok {
				hostNames[*h] = ""
				hostRefs = append(hostRefs, *h)
			}
		}
	}
	if len(hostRefs) > 0 {
		var hosts []mo.HostSystem
		if err := property.DefaultCollector(c.vc).Retrieve(ctx, hostRefs, []string{"name"}, &hosts); err != nil {
			return nil, fmt.Errorf("host names: %w", err)
		}
		for _, h := range hosts {
			hostNames[h.Self] = h.Name
		}
	}
	out := make([]VM, 0, len(mos))
	for _, m := range mos {
		vm := VM{Ref: m.Self, Name: m.Name, PowerState: m.Runtime.PowerState}
		if h := m.Runtime.Host; h != nil {
			vm.Host = hostNames[*h]
		}
		id := vsphere.PodOf(m.Config)
		vm.UID, vm.Namespace, vm.Pod = id.UID, id.Namespace, id.Pod
		out = append(out, vm)
	}
	return out, nil
}

// StartCreate validates the placement against vCenter and submits
// CreateVM_Task. It returns as soon as vCenter accepted the task, so the
// caller can record the task reference before waiting on it.
func (c *Client) StartCreate(ctx context.Context, s Spec, p Placement) (types.ManagedObjectReference, error) {
	if err := s.Validate(); err != nil {
		return types.ManagedObjectReference{}, bus.Permanent(err)
	}
	// Host, pool and port groups come from a short-lived cache. A create
	// that fails forgets them, and one that used cached ones and failed
	// for a reason a retry would not fix is tried once more with fresh
	// lookups at once: a port group re-created or a host re-added since
	// must not fail the pod.
	portGroups := s.portGroups()
	task, cached, err := c.startCreate(ctx, s, p, portGroups, false)
	if err != nil {
		c.forget(p, portGroups)
		if cached && !IsTransient(err) {
			task, _, err = c.startCreate(ctx, s, p, portGroups, true)
			if err != nil {
				c.forget(p, portGroups)
			}
			cached = false
		}
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
	}
	c.mu.Lock()
	if cached {
		c.cachedCreates[s.Name] = true
	} else {
		delete(c.cachedCreates, s.Name)
	}
	c.mu.Unlock()
	return task, nil
}

// CreateFailed tells the client that the create of s with placement p
// failed after its task was accepted: the lookups it used are forgotten.
// It reports whether that create used cached lookups, which may be why it
// failed (the caller may then try once more).
func (c *Client) CreateFailed(s Spec, p Placement) bool {
	c.forget(p, s.portGroups())
	c.mu.Lock()
	defer c.mu.Unlock()
	cached := c.cachedCreates[s.Name]
	delete(c.cachedCreates, s.Name)
	return cached
}

// CreateDone tells the client that the create of VM name succeeded.
func (c *Client) CreateDone(name string) {
	c.mu.Lock()
	delete(c.cachedCreates, name)
	c.mu.Unlock()
}

func (c *Client) forget(p Placement, portGroups []string) {
	c.cache.forget(p.Host, p.Pool, portGroups)
	// The folder, or one above it, removed by a person? Walk it all again.
	c.mu.Lock()
	rel := strings.Trim(p.Folder, "/")
	for ; rel != "." && rel != "/"; rel = path.Dir(rel) {
		delete(c.folders, rel)
	}
	delete(c.folders, "")
	c.mu.Unlock()
}

// startCreate submits the create; cached says whether any lookup came from
// the cache (fresh: none may).
func (c *Client) startCreate(ctx context.Context, s Spec, p Placement, portGroups []string, fresh bool) (task types.ManagedObjectReference, cached bool, err error) {
	var none types.ManagedObjectReference
	h, fromCache, err := c.hostInfo(ctx, p.Host, fresh)
	if err != nil {
		return none, false, err
	}
	cached = fromCache
	pool, fromCache, err := c.pool(ctx, h, p.Pool, fresh)
	if err != nil {
		return none, cached, err
	}
	cached = cached || fromCache
	ds := p.Datastore
	if ds == "" {
		dp, _ := parseDatastorePath(s.ImageDisks[0]) // validated above
		ds = dp.Datastore
	}
	// A datastore name vcsim does not know crashes the simulator, and on a
	// real vCenter it fails late with a vague fault: check the VM's
	// datastore and every image disk's here. A datastore missing from the
	// cached list is looked up again before the create is refused.
	need := []string{ds}
	for _, d := range s.ImageDisks {
		dp, _ := parseDatastorePath(d)
		need = append(need, dp.Datastore)
	}
	for _, name := range need {
		if !h.datastores[name] {
			if h, _, err = c.hostInfo(ctx, p.Host, true); err != nil {
				return none, cached, err
			}
			break
		}
	}
	if !h.datastores[ds] {
		return none, cached, bus.Permanent(fmt.Errorf("datastore %s is not mounted on host %s", ds, h.name))
	}
	for _, d := range s.ImageDisks {
		dp, _ := parseDatastorePath(d)
		if !h.datastores[dp.Datastore] {
			return none, cached, bus.Permanent(fmt.Errorf("image disk %s is on datastore %s, which host %s does not mount", d, dp.Datastore, h.name))
		}
	}
	backings := make([]types.BaseVirtualDeviceBackingInfo, len(portGroups))
	for i, pg := range portGroups {
		b, fromCache, err := c.portGroupBacking(ctx, pg, fresh)
		if err != nil {
			return none, cached, err
		}
		cached = cached || fromCache
		backings[i] = b
	}
	if s.EphemeralTemplate == "" && !c.BlankEphemeral {
		s.EphemeralTemplate = c.ephemeralTemplate(ds, s.ephemeralMiB()) // "": a blank disk 0
	}
	cs, err := BuildConfigSpec(s, ds, backings)
	if err != nil {
		return none, cached, bus.Permanent(err)
	}
	folder, err := c.EnsureFolder(ctx, p.Folder)
	if err != nil {
		return none, cached, err
	}
	if p.RemoveLeftovers {
		if err := c.removeLeftovers(ctx, ds, s.Name); err != nil {
			return none, cached, err
		}
	}
	t, err := folder.CreateVM(ctx, cs, pool, h.host)
	if err != nil {
		return none, cached, fmt.Errorf("create VM %s on %s: %w", s.Name, p.Host, err)
	}
	return t.Reference(), cached, nil
}

// WaitCreate waits for a CreateVM task and returns the new VM's reference.
func (c *Client) WaitCreate(ctx context.Context, task types.ManagedObjectReference) (types.ManagedObjectReference, error) {
	// WaitTask reads an ended task in one call; a running one is waited
	// for through a property collector of its own (WaitForResult), never
	// the session's default one (WaitForResultEx): concurrent waits on that
	// consume each other's updates, and a worker then waits for a task that
	// has long finished (seen as every worker stuck with 8 pods
	// Provisioning).
	info, err := vsphere.WaitTask(ctx, c.vc, task)
	if err != nil {
		if isNotFound(err) && (info == nil || info.Task == task) {
			return types.ManagedObjectReference{}, ErrTaskGone
		}
		return types.ManagedObjectReference{}, fmt.Errorf("create task %s: %w", task.Value, err)
	}
	ref, ok := info.Result.(types.ManagedObjectReference)
	if !ok {
		return types.ManagedObjectReference{}, fmt.Errorf("create task %s: result is %T, not a VM reference", task.Value, info.Result)
	}
	return ref, nil
}

// PowerOn powers the VM on; a VM that is already on is fine (vCenter
// answers InvalidPowerState, so there is no need to read the state first).
func (c *Client) PowerOn(ctx context.Context, ref types.ManagedObjectReference) error {
	vm := object.NewVirtualMachine(c.vc, ref)
	task, err := vm.PowerOn(ctx)
	if err == nil {
		_, err = vsphere.WaitTask(ctx, c.vc, task.Reference())
	}
	if err != nil && !fault.Is(err, &types.InvalidPowerState{}) {
		return fmt.Errorf("power on %s: %w", ref.Value, err)
	}
	return nil
}

// ExtraConfigValue is the value of the VM's ExtraConfig key, "" when the
// VM has none.
func (c *Client) ExtraConfigValue(ctx context.Context, ref types.ManagedObjectReference, key string) (string, error) {
	var m mo.VirtualMachine
	if err := property.DefaultCollector(c.vc).RetrieveOne(ctx, ref, []string{"config.extraConfig"}, &m); err != nil {
		return "", fmt.Errorf("ExtraConfig of VM %s: %w", ref.Value, err)
	}
	if m.Config == nil {
		return "", nil
	}
	for _, o := range m.Config.ExtraConfig {
		if v := o.GetOptionValue(); v.Key == key {
			s, _ := v.Value.(string)
			return s, nil
		}
	}
	return "", nil
}

// SetExtraConfig writes values into the VM's ExtraConfig (the other keys
// stay) and returns once the reconfigure task ended. vSphere takes it on
// a VM that is off: a guest reads its guestinfo when it boots.
func (c *Client) SetExtraConfig(ctx context.Context, ref types.ManagedObjectReference, values map[string]string) error {
	task, err := object.NewVirtualMachine(c.vc, ref).Reconfigure(ctx, types.VirtualMachineConfigSpec{ExtraConfig: extraConfig(values)})
	if err == nil {
		_, err = vsphere.WaitTask(ctx, c.vc, task.Reference())
	}
	if err != nil {
		return fmt.Errorf("reconfigure the ExtraConfig of %s: %w", ref.Value, err)
	}
	return nil
}

// PowerOff powers the VM off; a VM that is already off is fine.
func (c *Client) PowerOff(ctx context.Context, ref types.ManagedObjectReference) error {
	vm := object.NewVirtualMachine(c.vc, ref)
	st, err := vm.PowerState(ctx)
	if err != nil {
		return fmt.Errorf("power state of %s: %w", ref.Value, err)
	}
	if st == types.VirtualMachinePowerStatePoweredOff {
		return nil
	}
	task, err := vm.PowerOff(ctx)
	if err == nil {
		_, err = vsphere.WaitTask(ctx, c.vc, task.Reference())
	}
	if err != nil && !fault.IsAlreadyPoweredOffError(err) {
		return fmt.Errorf("power off %s: %w", ref.Value, err)
	}
	return nil
}

// Destroy powers the VM off, detaches the image disks it shares with other
// pod VMs, destroys it and confirms it is gone. A VM that does not exist
// counts as destroyed: a delete counts only when the object is gone, and
// gone is gone.
func (c *Client) Destroy(ctx context.Context, ref types.ManagedObjectReference) error {
	_, err := c.Remove(ctx, ref)
	return err
}

// Remove is Destroy that also says whether this call found the VM (false:
// it was gone already, someone else removed it).
func (c *Client) Remove(ctx context.Context, ref types.ManagedObjectReference) (found bool, err error) {
	if err := c.PowerOff(ctx, ref); err != nil {
		if isNotFound(err) {
			return false, nil
		}
		return false, err
	}
	// The image disks and the boot disk are shared by many pod VMs.
	if err := vsphere.DetachSharedDisks(ctx, c.vc, ref); err != nil {
		if isNotFound(err) {
			return false, nil
		}
		return false, err
	}
	task, err := object.NewVirtualMachine(c.vc, ref).Destroy(ctx)
	if err == nil {
		_, err = vsphere.WaitTask(ctx, c.vc, task.Reference())
	}
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return true, fmt.Errorf("destroy %s: %w", ref.Value, err)
	}
	vm, err := c.Get(ctx, ref)
	if err != nil {
		return true, err
	}
	if vm != nil {
		return true, fmt.Errorf("destroy %s: VM still present after the destroy task", ref.Value)
	}
	return true, nil
}

// CheckBootDisk says whether the boot disk a spec would name (a datastore
// path) is there: its datastore exists and holds the file. Checked once at
// start, so a misspelled or not yet uploaded image stops the provisioner
// with the reason instead of failing every pod VM's create.
func (c *Client) CheckBootDisk(ctx context.Context, disk string) error {
	dp, err := ParseBootDisk(disk)
	if err != nil {
		return err
	}
	store, err := find.NewFinder(c.vc).SetDatacenter(c.dc).Datastore(ctx, dp.Datastore)
	if err != nil {
		return fmt.Errorf("datastore %s: %w", dp.Datastore, err)
	}
	if _, err := store.Stat(ctx, dp.Path); err != nil {
		return fmt.Errorf("%s: %w (podvisor install uploads the image and prints its path)", disk, err)
	}
	return nil
}

// EnsureFolder returns the VM folder at rel (slash-separated, below the
// datacenter's VM folder), creating missing elements. Concurrent creators of
// the same folder are expected: DuplicateName means someone else won.
func (c *Client) EnsureFolder(ctx context.Context, rel string) (*object.Folder, error) {
	rel = strings.Trim(rel, "/")
	c.mu.Lock()
	f, ok := c.folders[rel]
	c.mu.Unlock()
	if ok {
		return f, nil
	}
	// One folder walk at a time: a burst of first creates (every worker
	// at once, each sharded folder new) would otherwise walk and read the
	// same folders once per worker, tens of calls each, where one walk
	// serves them all.
	c.folderWalk.Lock()
	defer c.folderWalk.Unlock()
	c.mu.Lock()
	f, ok = c.folders[rel]
	c.mu.Unlock()
	if ok {
		return f, nil // walked while this one waited
	}
	c.mu.Lock()
	cur, ok := c.folders[""]
	c.mu.Unlock()
	if !ok {
		dcFolders, err := c.dc.Folders(ctx)
		if err != nil {
			return nil, fmt.Errorf("datacenter folders: %w", err)
		}
		cur = dcFolders.VmFolder
		c.mu.Lock()
		c.folders[""] = cur
		c.mu.Unlock()
	}
	if rel != "" {
		prefix := ""
		for elem := range strings.SplitSeq(rel, "/") {
			// The folders above, shared by every shard, were walked
			// already for the first shard.
			prefix = path.Join(prefix, elem)
			c.mu.Lock()
			known, ok := c.folders[prefix]
			c.mu.Unlock()
			if ok {
				cur = known
				continue
			}
			next, err := c.child(ctx, cur, elem)
			if err != nil {
				return nil, err
			}
			if next == nil {
				next, err = cur.CreateFolder(ctx, elem)
				if err != nil && fault.Is(err, &types.DuplicateName{}) {
					next, err = c.child(ctx, cur, elem)
					if err == nil && next == nil {
						err = fmt.Errorf("folder %s: reported as duplicate but not found", elem)
					}
				}
				if err != nil {
					return nil, fmt.Errorf("create folder %s: %w", path.Join(rel, elem), err)
				}
			}
			cur = next
			c.mu.Lock()
			c.folders[prefix] = cur
			c.mu.Unlock()
		}
	}
	c.mu.Lock()
	c.folders[rel] = cur
	c.mu.Unlock()
	return cur, nil
}

// lookupFolder is EnsureFolder without the creating: nil when absent.
func (c *Client) lookupFolder(ctx context.Context, rel string) (*object.Folder, error) {
	rel = strings.Trim(rel, "/")
	dcFolders, err := c.dc.Folders(ctx)
	if err != nil {
		return nil, fmt.Errorf("datacenter folders: %w", err)
	}
	cur := dcFolders.VmFolder
	if rel == "" {
		return cur, nil
	}
	for elem := range strings.SplitSeq(rel, "/") {
		next, err := c.child(ctx, cur, elem)
		if err != nil || next == nil {
			return nil, err
		}
		cur = next
	}
	return cur, nil
}

func (c *Client) child(ctx context.Context, parent *object.Folder, name string) (*object.Folder, error) {
	var pf mo.Folder
	if err := parent.Properties(ctx, parent.Reference(), []string{"childEntity"}, &pf); err != nil {
		return nil, fmt.Errorf("folder children: %w", err)
	}
	var refs []types.ManagedObjectReference
	for _, r := range pf.ChildEntity {
		if r.Type == "Folder" {
			refs = append(refs, r)
		}
	}
	if len(refs) == 0 {
		return nil, nil
	}
	var kids []mo.Folder
	if err := property.DefaultCollector(c.vc).Retrieve(ctx, refs, []string{"name"}, &kids); err != nil {
		return nil, fmt.Errorf("folder names: %w", err)
	}
	for _, k := range kids {
		if k.Name == name {
			return object.NewFolder(c.vc, k.Self), nil
		}
	}
	return nil, nil
}

func (c *Client) host(ctx context.Context, name string) (*object.HostSystem, error) {
	ref, ok, err := c.hostRef(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("host %s: %w", name, err)
	}
	if !ok {
		return nil, bus.Permanent(fmt.Errorf("host %s: not found in datacenter %s", name, c.dc.Name()))
	}
	return object.NewHostSystem(c.vc, ref), nil
}

// listHosts returns every host of the datacenter by name: one container
// view, one retrieval of the hosts' names.
func (c *Client) listHosts(ctx context.Context) (map[string]types.ManagedObjectReference, error) {
	m := view.NewManager(c.vc)
	v, err := m.CreateContainerView(ctx, c.dc.Reference(), []string{"HostSystem"}, true)
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	defer func() { _ = v.Destroy(context.WithoutCancel(ctx)) }()
	var hosts []mo.HostSystem
	if err := v.Retrieve(ctx, []string{"HostSystem"}, []string{"name"}, &hosts); err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	out := make(map[string]types.ManagedObjectReference, len(hosts))
	for _, h := range hosts {
		out[h.Name] = h.Reference()
	}
	return out, nil
}

func (c *Client) lookupPortGroupBacking(ctx context.Context, name string) (types.BaseVirtualDeviceBackingInfo, error) {
	m := view.NewManager(c.vc)
	v, err := m.CreateContainerView(ctx, c.dc.Reference(), []string{"DistributedVirtualPortgroup"}, true)
	if err != nil {
		return nil, fmt.Errorf("port group %s: %w", name, err)
	}
	defer func() { _ = v.Destroy(context.WithoutCancel(ctx)) }()
	refs, err := v.Find(ctx, []string{"DistributedVirtualPortgroup"}, property.Match{"name": name})
	if err != nil {
		return nil, fmt.Errorf("port group %s: %w", name, err)
	}
	if len(refs) != 1 {
		// network-config realizes port groups before it reports the
		// attachment, so a missing one is a real inconsistency.
		return nil, bus.Permanent(fmt.Errorf("port group %s: not found in datacenter %s", name, c.dc.Name()))
	}
	pg := object.NewDistributedVirtualPortgroup(c.vc, refs[0])
	b, err := pg.EthernetCardBackingInfo(ctx)
	if err != nil {
		return nil, fmt.Errorf("port group %s backing: %w", name, err)
	}
	return b, nil
}

// removeLeftovers deletes the directory [ds] name/ when it exists. Callers
// create a VM only after finding no registered VM of that name, so such files
// (the VM's configuration and its ephemeral disk) belong to a pod VM vCenter
// no longer knows (unregistered by hand, or a simulator restarted over kept
// datastores); CreateVM would otherwise fail with FileAlreadyExists on the
// ephemeral disk and the pod could never be re-created. pv-* names are
// podvisor's own, so nothing else lives there; image disks live under the
// image root and are never touched.
func (c *Client) removeLeftovers(ctx context.Context, ds, name string) error {
	path := fmt.Sprintf("[%s] %s", ds, name)
	task, err := object.NewFileManager(c.vc).DeleteDatastoreFile(ctx, path, c.dc)
	if err != nil {
		return fmt.Errorf("remove leftover files %s: %w", path, err)
	}
	if _, err := vsphere.WaitTask(ctx, c.vc, task.Reference()); err != nil {
		if fault.Is(err, &types.FileNotFound{}) {
			return nil
		}
		return fmt.Errorf("remove leftover files %s: %w", path, err)
	}
	return nil
}
