package sim

import (
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// hostFacts is what the cluster roll-up needs from one host, read under the
// host's lock so no lock is ever held while taking another.
type hostFacts struct {
	cores, threads int64
	mhz            int64
	memory         int64
	usable         bool // connected and not in maintenance: counted as effective
}

func readHostFacts(c *simulator.Context, host *simulator.HostSystem) hostFacts {
	var f hostFacts
	c.WithLock(host, func() {
		hw := host.Summary.Hardware
		f.cores, f.threads = int64(hw.NumCpuCores), int64(hw.NumCpuThreads)
		f.mhz, f.memory = int64(hw.CpuMhz), hw.MemorySize
		f.usable = host.Runtime.ConnectionState == types.HostSystemConnectionStateConnected &&
			!host.Runtime.InMaintenanceMode
	})
	return f
}

// refreshCluster recomputes a cluster's summary and its root resource pool from
// its hosts, as vCenter does: total capacity counts every host, effective
// capacity only hosts that are connected and not in maintenance. vcsim sums only
// one core's MHz per host and reports effective memory in bytes instead of MB;
// a scheduler reading cluster capacity must see vCenter's numbers.
func refreshCluster(c *simulator.Context, cluster *simulator.ClusterComputeResource) {
	var hosts []types.ManagedObjectReference
	var pool types.ManagedObjectReference
	c.WithLock(cluster, func() {
		hosts = append(hosts, cluster.Host...)
		pool = *cluster.ResourcePool
	})

	var total types.ComputeResourceSummary
	var effMHz, effBytes int64
	for _, ref := range hosts {
		host, ok := c.Map.Get(ref).(*simulator.HostSystem)
		if !ok {
			continue
		}
		f := readHostFacts(c, host)
		total.TotalCpu += int32(f.cores * f.mhz)
		total.TotalMemory += f.memory
		total.NumCpuCores += int16(f.cores)
		total.NumCpuThreads += int16(f.threads)
		total.NumHosts++
		if f.usable {
			total.NumEffectiveHosts++
			effMHz += f.cores * f.mhz
			effBytes += f.memory
		}
	}
	total.EffectiveCpu = int32(effMHz)
	total.EffectiveMemory = effBytes >> 20 // MB, as the API documents
	total.OverallStatus = types.ManagedEntityStatusGreen
	if total.NumEffectiveHosts < total.NumHosts {
		total.OverallStatus = types.ManagedEntityStatusYellow
	}

	c.WithLock(cluster, func() {
		summary := types.ClusterComputeResourceSummary{}
		if cur, ok := cluster.Summary.(*types.ClusterComputeResourceSummary); ok {
			summary = *cur
		}
		summary.ComputeResourceSummary = total
		c.Update(cluster, []types.PropertyChange{{Name: "summary", Val: &summary}})
	})

	rp, ok := c.Map.Get(pool).(*simulator.ResourcePool)
	if !ok {
		return
	}
	c.WithLock(rp, func() {
		runtime := rp.Runtime
		runtime.Cpu = capacityUsage(runtime.Cpu, effMHz)
		runtime.Memory = capacityUsage(runtime.Memory, effBytes)

		config := rp.Config
		config.Entity = &rp.Self
		config.CpuAllocation = rootAllocation(config.CpuAllocation, effMHz)
		config.MemoryAllocation = rootAllocation(config.MemoryAllocation, effBytes>>20)

		// The template's summary pointer is shared by every pool vcsim creates,
		// so the pool gets a fresh summary rather than a write through it.
		summary := types.ResourcePoolSummary{Name: rp.Name}
		if cur := rp.Summary; cur != nil {
			summary = *cur.GetResourcePoolSummary()
		}
		summary.Runtime = runtime
		summary.Config = config

		c.Update(rp, []types.PropertyChange{
			{Name: "runtime", Val: runtime},
			{Name: "config", Val: config},
			{Name: "summary", Val: &summary},
		})
	})
}

func capacityUsage(u types.ResourcePoolResourceUsage, max int64) types.ResourcePoolResourceUsage {
	u.MaxUsage = max
	u.UnreservedForPool = max - u.ReservationUsed
	u.UnreservedForVm = max - u.ReservationUsedForVm
	return u
}

// rootAllocation is a root pool's allocation: everything the cluster can run.
func rootAllocation(a types.ResourceAllocationInfo, amount int64) types.ResourceAllocationInfo {
	a.Reservation = types.NewInt64(amount)
	a.Limit = types.NewInt64(amount)
	a.ExpandableReservation = types.NewBool(false)
	return a
}
