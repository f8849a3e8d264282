package scheduler_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
)

// The acceptance, as a new user would try it: 200 pods of mixed
// sizes asking for more memory than the datacenter has, plus one pod no
// host can ever take.
//   - no host ends with pod-VM memory above its capacity, checked through
//     the vSphere API after creating the pod VMs where the scheduler said;
//   - the surplus stays Pending with a reason;
//   - the impossible pod says which resource;
//   - after deleting pods, pending ones are placed with no further input.
func TestAcceptanceOverfullDatacenter(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 2, hostsPerCluster: 8})
	var totalMem int64
	for _, h := range e.DC.Hosts() {
		totalMem += h.MemoryBytes
	}
	rng := rand.New(rand.NewPCG(9, 9))
	mems := []int{16, 32, 64, 96, 112}
	cpus := []string{"500m", "1", "2", "4"}
	var keys []string
	var asked int64
	accepted := map[string]*events.PodAccepted{}
	for i := 0; i < 200; i++ {
		p := testPod(fmt.Sprintf("pod-%03d", i), cpus[rng.IntN(len(cpus))], fmt.Sprintf("%dGi", mems[rng.IntN(len(mems))]))
		acc := e.accept(p)
		accepted[acc.ObjectKey()] = acc
		keys = append(keys, acc.ObjectKey())
		asked += acc.Size.MemoryBytes
	}
	if asked <= totalMem {
		t.Fatalf("the test asks for %d GiB, the datacenter has %d GiB: not overfull", asked>>30, totalMem>>30)
	}
	huge := e.accept(testPod("impossible", "1", "4Ti"))
	keys = append(keys, huge.ObjectKey())
	e.EventuallyWithin("every pod placed or refused", 30*time.Second, func() bool { return e.Decided(keys) == len(keys) })

	// The impossible pod names the resource.
	u := e.Unschedulable(huge.ObjectKey())
	if u == nil || !strings.Contains(u.Message, "16 pod memory exceeds host capacity") || u.Reasons["MemoryExceedsCapacity"] != 16 {
		t.Fatalf("impossible pod: %+v", u)
	}
	// The surplus is pending with a reason.
	var pending []string
	for _, k := range keys[:200] {
		if u := e.Unschedulable(k); u != nil {
			pending = append(pending, k)
			if !strings.HasPrefix(u.Message, "0/16 hosts: ") || !strings.Contains(u.Message, "insufficient memory") {
				t.Errorf("%s pending with %q", k, u.Message)
			}
		}
	}
	if len(pending) == 0 {
		t.Fatal("no pod pending although the datacenter is overfull")
	}
	t.Logf("%d pods placed, %d pending; asked %d GiB of %d GiB", 200-len(pending), len(pending), asked>>30, totalMem>>30)

	// Create the pod VMs where the scheduler placed them and check, through
	// the vSphere API, that no host holds more VM memory than it has.
	vms := e.createPodVMs(accepted)
	e.checkVMMemory(vms)

	// Delete a fifth of the placed pods: pending pods get placed with no
	// further input.
	deleted, lastDelete := 0, uint64(0)
	for _, k := range keys[:200] {
		s := e.Scheduled(k)
		if s == nil || deleted >= 40 {
			continue
		}
		lastDelete = e.PublishAs("podvisor/provisioner", events.TypePodDeleted, k, &events.PodDeleted{PodRef: events.PodRef{Namespace: s.Namespace, Name: s.Name, UID: s.UID}, Host: s.Host})
		deleted++
	}
	e.EventuallyWithin("pending pods placed after deletes", 20*time.Second, func() bool {
		n := 0
		for _, k := range pending {
			if e.Scheduled(k) != nil {
				n++
			}
		}
		return n > 0
	})
	// The ledger stays within every host's capacity, once every delete was
	// handled.
	e.WaitHandled(events.StreamPods, "scheduler-"+events.StreamPods, lastDelete)
	recs := e.hostRecords()
	for name, r := range recs {
		entry, err := e.led.Get(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		cpu, mem, _ := entry.Totals()
		if mem > r.MemoryCapacityBytes || cpu > r.CPUCapacityMilli {
			t.Errorf("%s: ledger holds %dm / %d GiB of %dm / %d GiB", name, cpu, mem>>30, r.CPUCapacityMilli, r.MemoryCapacityBytes>>30)
		}
		if r.AllocatedMemoryBytes > r.MemoryCapacityBytes {
			t.Errorf("%s: host record says %d GiB allocated of %d", name, r.AllocatedMemoryBytes>>30, r.MemoryCapacityBytes>>30)
		}
	}
}

// createPodVMs creates a powered-off VM of each scheduled pod's size on its
// host (the provisioner's job, reduced to what the check needs).
func (e *env) createPodVMs(accepted map[string]*events.PodAccepted) map[string]string {
	e.T.Helper()
	ctx := context.Background()
	c, err := e.DC.Client(ctx)
	if err != nil {
		e.T.Fatal(err)
	}
	finder := find.NewFinder(c.Client)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		e.T.Fatal(err)
	}
	finder.SetDatacenter(dc)
	folders, err := dc.Folders(ctx)
	if err != nil {
		e.T.Fatal(err)
	}
	// A Finder is not safe for concurrent use: resolve hosts and pools
	// first, then create the VMs in parallel.
	hosts := map[string]*object.HostSystem{}
	pools := map[string]*object.ResourcePool{}
	for key := range accepted {
		s := e.Scheduled(key)
		if s == nil {
			continue
		}
		if hosts[s.Host] == nil {
			if hosts[s.Host], err = finder.HostSystem(ctx, s.Host); err != nil {
				e.T.Fatal(err)
			}
		}
		if pools[s.ResourcePool] == nil {
			if pools[s.ResourcePool], err = finder.ResourcePool(ctx, s.ResourcePool); err != nil {
				e.T.Fatalf("resource pool %q of pod.scheduled: %v", s.ResourcePool, err)
			}
		}
	}
	vms := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for key, acc := range accepted {
		s := e.Scheduled(key)
		if s == nil {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			host, pool := hosts[s.Host], pools[s.ResourcePool]
			spec := types.VirtualMachineConfigSpec{Name: "pv-" + acc.UID, GuestId: "otherLinux64Guest",
				NumCPUs: acc.Size.VCPUs, MemoryMB: acc.Size.MemoryMiB,
				Files: &types.VirtualMachineFileInfo{VmPathName: "[" + s.Datastores[0] + "]"}}
			task, err := folders.VmFolder.CreateVM(ctx, spec, pool, host)
			if err == nil {
				err = task.Wait(ctx)
			}
			if err != nil {
				e.T.Errorf("create VM of %s on %s: %v", key, s.Host, err)
				return
			}
			mu.Lock()
			vms["pv-"+acc.UID] = s.Host
			mu.Unlock()
		}()
	}
	wg.Wait()
	return vms
}

// checkVMMemory sums, per host, the memory of the VMs vCenter says run
// there and compares it with the host's memory as vCenter reports it.
func (e *env) checkVMMemory(created map[string]string) {
	e.T.Helper()
	ctx := context.Background()
	c, err := e.DC.Client(ctx)
	if err != nil {
		e.T.Fatal(err)
	}
	m := view.NewManager(c.Client)
	v, err := m.CreateContainerView(ctx, c.Client.ServiceContent.RootFolder, []string{"VirtualMachine", "HostSystem"}, true)
	if err != nil {
		e.T.Fatal(err)
	}
	defer v.Destroy(ctx)
	var vms []mo.VirtualMachine
	if err := v.Retrieve(ctx, []string{"VirtualMachine"}, []string{"name", "config.hardware.memoryMB", "runtime.host"}, &vms); err != nil {
		e.T.Fatal(err)
	}
	var hosts []mo.HostSystem
	if err := v.Retrieve(ctx, []string{"HostSystem"}, []string{"name", "summary.hardware.memorySize"}, &hosts); err != nil {
		e.T.Fatal(err)
	}
	used := map[types.ManagedObjectReference]int64{}
	counted := 0
	for _, vm := range vms {
		if _, ours := created[vm.Name]; !ours || vm.Runtime.Host == nil {
			continue
		}
		used[*vm.Runtime.Host] += int64(vm.Config.Hardware.MemoryMB) << 20
		counted++
	}
	if counted != len(created) {
		e.T.Errorf("vCenter reports %d pod VMs, %d were created", counted, len(created))
	}
	busiest := 0.0
	for _, h := range hosts {
		capacity := h.Summary.Hardware.MemorySize
		if used[h.Self] > capacity {
			e.T.Errorf("host %s: pod VMs use %d MiB of %d MiB", h.Name, used[h.Self]>>20, capacity>>20)
		}
		busiest = max(busiest, float64(used[h.Self])/float64(capacity))
	}
	e.T.Logf("%d pod VMs checked through the vSphere API; fullest host at %.1f%% of its memory", counted, 100*busiest)
}
