package bench

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// rawPortGroup is the port group the baseline VMs attach to, as pods on the
// default network do.
const rawPortGroup = "pv-default"

// runRaw creates and powers on n pod-sized VMs directly with govmomi on a
// fresh simulator of the pipeline's size, with workers goroutines, each
// creating into a folder of its own (vCenter serializes creates per
// folder). The VMs are what the provisioner creates for a bench pod: same
// vCPUs and memory, one container disk whose parent is an image disk, one
// NIC on a distributed port group, guestinfo of the same volume. With one
// worker this is the sequential baseline.
func runRaw(ctx context.Context, clusters, per, n, workers int, size events.PodVMSize, advance func(n int)) (RawTry, error) {
	dc, err := sim.Start(ctx, sim.Config{
		Clusters: clusters, HostsPerCluster: per, Seed: 1,
		PortGroups: []sim.PortGroupSpec{{Name: rawPortGroup, Ports: int32(n + 64)}},
	})
	if err != nil {
		return RawTry{}, err
	}
	defer dc.Close()
	c, err := dc.Client(ctx)
	if err != nil {
		return RawTry{}, err
	}
	defer c.Logout(context.WithoutCancel(ctx))
	// As many idle connections as the services' sessions keep: with
	// net/http's default of 2 most calls of 8+ workers would dial anew.
	c.Client.Client.DefaultTransport().MaxIdleConnsPerHost = vsphere.MaxIdleConns

	finder := find.NewFinder(c.Client)
	dco, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		return RawTry{}, err
	}
	finder.SetDatacenter(dco)
	folders, err := dco.Folders(ctx)
	if err != nil {
		return RawTry{}, err
	}
	root, err := folders.VmFolder.CreateFolder(ctx, "pv-bench")
	if err != nil {
		return RawTry{}, fmt.Errorf("folder: %w", err)
	}
	workerFolders := make([]*object.Folder, workers)
	for i := range workerFolders {
		if workerFolders[i], err = root.CreateFolder(ctx, fmt.Sprintf("w-%02d", i)); err != nil {
			return RawTry{}, fmt.Errorf("folder: %w", err)
		}
	}
	netw, err := finder.Network(ctx, rawPortGroup)
	if err != nil {
		return RawTry{}, err
	}
	backing, err := netw.EthernetCardBackingInfo(ctx)
	if err != nil {
		return RawTry{}, err
	}

	hosts := dc.Hosts()
	pools := map[string]*object.ResourcePool{}
	for _, cl := range dc.Clusters() {
		pools[cl.Name] = object.NewResourcePool(c.Client, cl.ResourcePool)
	}
	// The image disk every VM's container disk is a child of, on each
	// datastore a VM's files go to.
	parents := map[string]string{}
	for _, h := range hosts {
		ds := vmDatastore(h)
		if _, ok := parents[ds]; ok {
			continue
		}
		parent, err := imageDisk(ctx, c.Client, dco, ds)
		if err != nil {
			return RawTry{}, err
		}
		parents[ds] = parent
	}

	type job struct{ i int }
	jobs := make(chan job)
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	calls := dc.Calls()
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			for j := range jobs {
				h := hosts[j.i%len(hosts)]
				ds := vmDatastore(h)
				spec := podvm.Spec{
					Name: fmt.Sprintf("pv-raw-%05d", j.i), VCPUs: size.VCPUs, MemoryMiB: size.MemoryMiB,
					NICs:        []podvm.NIC{{Network: events.DefaultNetwork, PortGroup: rawPortGroup}},
					ImageDisks:  []string{parents[ds]},
					ExtraConfig: rawGuestinfo(j.i),
				}
				err := createAndPowerOn(ctx, c.Client, workerFolders[w], pools[h.Cluster], object.NewHostSystem(c.Client, h.Ref), spec, ds, backing)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("VM %s on %s: %w", spec.Name, h.Name, err)
					}
					mu.Unlock()
				}
				advance(1)
			}
		})
	}
	for i := range n {
		jobs <- job{i}
	}
	close(jobs)
	wg.Wait()
	took := time.Since(start)
	if firstErr != nil {
		return RawTry{}, firstErr
	}
	return RawTry{Workers: workers, VMsPerS: float64(n) / took.Seconds(), Seconds: took.Seconds(),
		VSphere: vsphereCalls(calls, dc.Calls(), n)}, nil
}

// vmDatastore is where a VM's files go: the shared datastore, as the
// scheduler prefers for pods, else the host's first.
func vmDatastore(h sim.HostSpec) string {
	for _, ds := range h.Datastores {
		if ds == "shared-ds" {
			return ds
		}
	}
	return h.Datastores[0]
}

// imageDisk creates the stand-in image disk on ds and returns its path.
func imageDisk(ctx context.Context, c *vim25.Client, dc *object.Datacenter, ds string) (string, error) {
	dir := fmt.Sprintf("[%s] pv-bench-images", ds)
	if err := object.NewFileManager(c).MakeDirectory(ctx, dir, dc, true); err != nil {
		return "", fmt.Errorf("image disk directory on %s: %w", ds, err)
	}
	path := dir + "/base.vmdk"
	task, err := object.NewVirtualDiskManager(c).CreateVirtualDisk(ctx, path, dc, &types.FileBackedVirtualDiskSpec{
		VirtualDiskSpec: types.VirtualDiskSpec{DiskType: string(types.VirtualDiskTypeThin), AdapterType: string(types.VirtualDiskAdapterTypeLsiLogic)},
		CapacityKb:      64 << 10,
	})
	if err != nil {
		return "", fmt.Errorf("image disk on %s: %w", ds, err)
	}
	if err := task.Wait(ctx); err != nil {
		return "", fmt.Errorf("image disk on %s: %w", ds, err)
	}
	return path, nil
}

func createAndPowerOn(ctx context.Context, c *vim25.Client, folder *object.Folder, pool *object.ResourcePool, host *object.HostSystem,
	spec podvm.Spec, ds string, backing types.BaseVirtualDeviceBackingInfo) error {
	cs, err := podvm.BuildConfigSpec(spec, ds, []types.BaseVirtualDeviceBackingInfo{backing})
	if err != nil {
		return err
	}
	task, err := folder.CreateVM(ctx, cs, pool, host)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	info, err := task.WaitForResult(ctx)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	ref, ok := info.Result.(types.ManagedObjectReference)
	if !ok {
		return fmt.Errorf("create: task result %T is not a VM reference", info.Result)
	}
	ptask, err := object.NewVirtualMachine(c, ref).PowerOn(ctx)
	if err != nil {
		return fmt.Errorf("power on: %w", err)
	}
	if err := ptask.Wait(ctx); err != nil {
		return fmt.Errorf("power on: %w", err)
	}
	return nil
}

// rawGuestinfo is guestinfo of the volume the provisioner writes for a
// one-container pod (uid, pod key, the guest spec with its disk map).
func rawGuestinfo(i int) map[string]string {
	uid := fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
	chain := "sha256:" + strings.Repeat("0", 64)
	return map[string]string{
		"guestinfo.podvisor.uid":       uid,
		"guestinfo.podvisor.namespace": "bench",
		"guestinfo.podvisor.name":      fmt.Sprintf("raw-%05d", i),
		"guestinfo.podvisor.spec": `{"version":1,"uid":"` + uid + `","namespace":"bench","name":"raw","hostname":"raw","restartPolicy":"Always",` +
			`"terminationGracePeriodSeconds":30,"disks":[{"role":"ephemeral","unit":"scsi0:0","fs":"ext4"},` +
			`{"role":"image","unit":"scsi0:1","fs":"erofs","chainID":"` + chain + `"}],"containers":[{"name":"app",` +
			`"image":"registry.local/podvisor/web:1.0","imageDigest":"` + chain + `","chain":["` + chain + `"],` +
			`"resources":{"cpuRequestMilli":100,"memoryRequestBytes":67108864}}],"nics":[{"network":"default","ip":"10.0.0.2","prefix":16}]}`,
	}
}
