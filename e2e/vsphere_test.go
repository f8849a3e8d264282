//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"path"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// vcenter is an independent vSphere client: it knows nothing of podvisor but
// the naming contract (pod VMs pv-*, port groups pv-<network>, guestinfo
// keys).
type vcenter struct {
	c *govmomi.Client
}

func connectVCenter(t *testing.T, govcURL string) *vcenter {
	t.Helper()
	u, err := url.Parse(govcURL)
	if err != nil {
		t.Fatalf("GOVC_URL: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := govmomi.NewClient(ctx, u, true)
	if err != nil {
		t.Fatalf("connect to vCenter %s: %v", u.Redacted(), err)
	}
	t.Cleanup(func() { _ = c.Logout(context.Background()) })
	return &vcenter{c: c}
}

// podVM is what vSphere says about one pv-* VM.
type podVM struct {
	Name       string
	Ref        string
	Host       string // host name
	Cluster    string
	PoweredOn  bool
	MemoryMB   int32
	PortGroups []string // NIC order
	Guest      map[string]string
}

func (v podVM) UID() string       { return v.Guest["guestinfo.podvisor.uid"] }
func (v podVM) Namespace() string { return v.Guest["guestinfo.podvisor.namespace"] }
func (v podVM) PodName() string   { return v.Guest["guestinfo.podvisor.name"] }

// SpecIP is the address of the first NIC in the guest spec the pod VM
// agent reads (guestinfo.podvisor.spec), "" if absent or unreadable.
func (v podVM) SpecIP() string {
	var spec struct {
		NICs []struct {
			IP string `json:"ip"`
		} `json:"nics"`
	}
	if json.Unmarshal([]byte(v.Guest["guestinfo.podvisor.spec"]), &spec) != nil || len(spec.NICs) == 0 {
		return ""
	}
	return spec.NICs[0].IP
}

// vhost is what vSphere says about a host.
type vhost struct {
	Name        string
	Cluster     string
	Maintenance bool
	Connection  string
}

// snapshot is a consistent-enough read of the inventory.
type snapshot struct {
	VMs   []podVM
	Hosts map[string]vhost
}

func (s *snapshot) vmsOf(ns string) []podVM {
	var out []podVM
	for _, v := range s.VMs {
		if v.Namespace() == ns {
			out = append(out, v)
		}
	}
	return out
}

// read takes a snapshot of hosts and pod VMs through container views.
func (vc *vcenter) read(ctx context.Context) (*snapshot, error) {
	m := view.NewManager(vc.c.Client)
	root := vc.c.ServiceContent.RootFolder

	var clusters []mo.ClusterComputeResource
	if err := retrieve(ctx, m, root, "ClusterComputeResource", []string{"name"}, &clusters); err != nil {
		return nil, err
	}
	clusterName := map[string]string{}
	for _, c := range clusters {
		clusterName[c.Self.Value] = c.Name
	}
	var hosts []mo.HostSystem
	if err := retrieve(ctx, m, root, "HostSystem", []string{"name", "parent", "runtime.inMaintenanceMode", "runtime.connectionState"}, &hosts); err != nil {
		return nil, err
	}
	snap := &snapshot{Hosts: map[string]vhost{}}
	hostName := map[string]string{}
	for _, h := range hosts {
		vh := vhost{Name: h.Name, Maintenance: h.Runtime.InMaintenanceMode, Connection: string(h.Runtime.ConnectionState)}
		if h.Parent != nil {
			vh.Cluster = clusterName[h.Parent.Value]
		}
		snap.Hosts[h.Name] = vh
		hostName[h.Self.Value] = h.Name
	}
	var pgs []mo.DistributedVirtualPortgroup
	if err := retrieve(ctx, m, root, "DistributedVirtualPortgroup", []string{"name", "key"}, &pgs); err != nil {
		return nil, err
	}
	pgName := map[string]string{}
	for _, pg := range pgs {
		pgName[pg.Key] = pg.Name
	}
	var vms []mo.VirtualMachine
	if err := retrieve(ctx, m, root, "VirtualMachine", []string{"name", "runtime.host", "runtime.powerState", "config.hardware", "config.extraConfig"}, &vms); err != nil {
		return nil, err
	}
	for _, vm := range vms {
		if !strings.HasPrefix(vm.Name, "pv-") {
			continue
		}
		pv := podVM{Name: vm.Name, Ref: vm.Self.Value, PoweredOn: vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn, Guest: map[string]string{}}
		if vm.Runtime.Host != nil {
			pv.Host = hostName[vm.Runtime.Host.Value]
			pv.Cluster = snap.Hosts[pv.Host].Cluster
		}
		if vm.Config != nil {
			pv.MemoryMB = vm.Config.Hardware.MemoryMB
			for _, d := range vm.Config.Hardware.Device {
				nic, ok := d.(types.BaseVirtualEthernetCard)
				if !ok {
					continue
				}
				switch b := nic.GetVirtualEthernetCard().Backing.(type) {
				case *types.VirtualEthernetCardDistributedVirtualPortBackingInfo:
					pv.PortGroups = append(pv.PortGroups, pgName[b.Port.PortgroupKey])
				case *types.VirtualEthernetCardNetworkBackingInfo:
					pv.PortGroups = append(pv.PortGroups, b.DeviceName)
				}
			}
			for _, o := range vm.Config.ExtraConfig {
				if ov := o.GetOptionValue(); strings.HasPrefix(ov.Key, "guestinfo.podvisor.") {
					pv.Guest[ov.Key] = fmt.Sprint(ov.Value)
				}
			}
		}
		snap.VMs = append(snap.VMs, pv)
	}
	sort.Slice(snap.VMs, func(i, j int) bool { return snap.VMs[i].Name < snap.VMs[j].Name })
	return snap, nil
}

func retrieve(ctx context.Context, m *view.Manager, root types.ManagedObjectReference, kind string, props []string, dst any) error {
	v, err := m.CreateContainerView(ctx, root, []string{kind}, true)
	if err != nil {
		return fmt.Errorf("container view of %s: %w", kind, err)
	}
	defer func() { _ = v.Destroy(context.WithoutCancel(ctx)) }()
	if err := v.Retrieve(ctx, []string{kind}, props, dst); err != nil {
		return fmt.Errorf("retrieve %s: %w", kind, err)
	}
	return nil
}

func (vc *vcenter) mustRead(t *testing.T) *snapshot {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := vc.read(ctx)
	if err != nil {
		t.Fatalf("read vCenter inventory: %v", err)
	}
	return s
}

// podDiskDirs lists the pv-* folders that hold virtual disks on every
// datastore: the pod VMs' files (their read/write layers). Image disks live
// under podvisor/ and are not counted.
func (vc *vcenter) podDiskDirs(ctx context.Context) (map[string][]string, error) {
	finder := find.NewFinder(vc.c.Client, true)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		return nil, err
	}
	finder.SetDatacenter(dc)
	dss, err := finder.DatastoreList(ctx, "*")
	if err != nil {
		return nil, err
	}
	out := map[string][]string{} // folder name → "[ds] path" of its disks
	for _, ds := range dss {
		if err := podDisksOn(ctx, ds, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func podDisksOn(ctx context.Context, ds *object.Datastore, out map[string][]string) error {
	b, err := ds.Browser(ctx)
	if err != nil {
		return err
	}
	task, err := b.SearchDatastoreSubFolders(ctx, ds.Path(""), &types.HostDatastoreBrowserSearchSpec{MatchPattern: []string{"*.vmdk"}})
	if err != nil {
		return fmt.Errorf("search %s: %w", ds.Name(), err)
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return fmt.Errorf("search %s: %w", ds.Name(), err)
	}
	res, ok := info.Result.(types.ArrayOfHostDatastoreBrowserSearchResults)
	if !ok {
		return nil
	}
	for _, r := range res.HostDatastoreBrowserSearchResults {
		var dp object.DatastorePath
		if !dp.FromString(r.FolderPath) {
			continue
		}
		folder := strings.Trim(dp.Path, "/")
		top, _, _ := strings.Cut(folder, "/")
		if !strings.HasPrefix(top, "pv-") {
			continue
		}
		for _, f := range r.File {
			out[top] = append(out[top], fmt.Sprintf("[%s] %s", dp.Datastore, path.Join(folder, f.GetFileInfo().Path)))
		}
	}
	return nil
}

// taskState is vCenter's word on a task: its state and, when it failed,
// its fault ("" for a task vCenter does not know).
func (v *vcenter) taskState(ctx context.Context, ref string) string {
	var t mo.Task
	if err := v.c.RetrieveOne(ctx, types.ManagedObjectReference{Type: "Task", Value: ref}, []string{"info"}, &t); err != nil {
		return "unreadable: " + err.Error()
	}
	st := string(t.Info.State)
	if t.Info.Error != nil {
		st += " (" + t.Info.Error.LocalizedMessage + ")"
	}
	return fmt.Sprintf("%s, queued %s ago", st, time.Since(t.Info.QueueTime).Round(time.Second))
}
