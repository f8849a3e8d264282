package sim

import (
	"fmt"
	"math/rand/v2"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// HostSpec is the hardware and placement of one simulated host, exactly as the
// vSphere API reports it (summary.hardware and hardware.*).
type HostSpec struct {
	Name    string
	Cluster string
	Ref     types.ManagedObjectReference

	Vendor   string // summary.hardware.vendor
	Model    string // summary.hardware.model
	CPUModel string // summary.hardware.cpuModel

	Packages    int   // summary.hardware.numCpuPkgs
	Cores       int   // summary.hardware.numCpuCores
	Threads     int   // summary.hardware.numCpuThreads
	MHz         int   // summary.hardware.cpuMhz, per core
	MemoryBytes int64 // summary.hardware.memorySize

	// Datastores are the names of the datastores mounted on the host.
	Datastores []string
}

// CPUCapacityMHz is the host's aggregate CPU capacity as vCenter counts it.
func (h HostSpec) CPUCapacityMHz() int64 { return int64(h.Cores) * int64(h.MHz) }

// server is a two-socket server model found in vSphere clusters. The list gives
// the 32, 48 and 64 core sizes the scheduler has to tell apart.
type server struct {
	vendor, model, cpuModel, cpuVendor string
	coresPerPackage                    int
	mhz                                int
}

var servers = []server{
	{"Dell Inc.", "PowerEdge R650", "Intel(R) Xeon(R) Gold 6346 CPU @ 3.10GHz", "intel", 16, 3100},
	{"HPE", "ProLiant DL380 Gen10 Plus", "Intel(R) Xeon(R) Gold 6342 CPU @ 2.80GHz", "intel", 24, 2800},
	{"Lenovo", "ThinkSystem SR665", "AMD EPYC 7543 32-Core Processor", "amd", 32, 2800},
	{"Cisco Systems Inc", "UCSC-C240-M6SX", "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", "intel", 32, 2000},
}

var memoryGiB = []int64{256, 384, 512, 768}

const gib = int64(1) << 30

// planHardware picks the hardware of every host from the seed. The order of the
// random draws is fixed (cluster by cluster, host by host), so a seed always
// gives the same datacenter.
func planHardware(seed int64, hosts []HostSpec) {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x706f64766973)) // "podvis"
	for i := range hosts {
		s := servers[rng.IntN(len(servers))]
		mem := memoryGiB[rng.IntN(len(memoryGiB))]
		applyServer(&hosts[i], s, mem)
	}
	// A datacenter of identical hosts would hide scheduling bugs; with very few
	// hosts the draws can coincide, so make the last host differ.
	if n := len(hosts); n > 1 && allSameHardware(hosts) {
		last := &hosts[n-1]
		for i, m := range memoryGiB {
			if m*gib == last.MemoryBytes {
				last.MemoryBytes = memoryGiB[(i+1)%len(memoryGiB)] * gib
				break
			}
		}
	}
}

func applyServer(h *HostSpec, s server, memGiB int64) {
	h.Vendor, h.Model, h.CPUModel = s.vendor, s.model, s.cpuModel
	h.Packages = 2
	h.Cores = 2 * s.coresPerPackage
	h.Threads = 2 * h.Cores // hyper-threading / SMT on every model
	h.MHz = s.mhz
	h.MemoryBytes = memGiB * gib
}

func allSameHardware(hosts []HostSpec) bool {
	for _, h := range hosts[1:] {
		if h.Cores != hosts[0].Cores || h.MemoryBytes != hosts[0].MemoryBytes {
			return false
		}
	}
	return true
}

func cpuVendor(cpuModel string) string {
	for _, s := range servers {
		if s.cpuModel == cpuModel {
			return s.cpuVendor
		}
	}
	return "unknown"
}

// setHardware writes a host's hardware through the simulator's update path so
// that RetrieveProperties and WaitForUpdatesEx both report it. Every leaf is
// its own change so a watcher on e.g. summary.hardware.numCpuCores is told.
func setHardware(c *simulator.Context, host *simulator.HostSystem, spec HostSpec) {
	c.WithLock(host, func() {
		hz := int64(spec.MHz) * 1_000_000

		pkgs := make([]types.HostCpuPackage, spec.Packages)
		threadsPerPkg := spec.Threads / spec.Packages
		for p := range pkgs {
			ids := make([]int16, threadsPerPkg)
			for t := range ids {
				ids[t] = int16(p*threadsPerPkg + t)
			}
			pkgs[p] = types.HostCpuPackage{
				Index:       int16(p),
				Vendor:      cpuVendor(spec.CPUModel),
				Hz:          hz,
				BusHz:       100_000_000,
				Description: spec.CPUModel,
				ThreadId:    ids,
			}
		}

		// systemInfo carries the host's uuid, which must survive.
		sys := host.Hardware.SystemInfo
		sys.Vendor, sys.Model = spec.Vendor, spec.Model
		sys.SerialNumber = fmt.Sprintf("PV%08X", uint32(hashName(spec.Name)))

		c.Update(host, []types.PropertyChange{
			{Name: "hardware.systemInfo", Val: sys},
			{Name: "hardware.cpuInfo", Val: types.HostCpuInfo{
				NumCpuPackages: int16(spec.Packages),
				NumCpuCores:    int16(spec.Cores),
				NumCpuThreads:  int16(spec.Threads),
				Hz:             hz,
			}},
			{Name: "hardware.cpuPkg", Val: pkgs},
			{Name: "hardware.memorySize", Val: spec.MemoryBytes},
			{Name: "summary.hardware.vendor", Val: spec.Vendor},
			{Name: "summary.hardware.model", Val: spec.Model},
			{Name: "summary.hardware.cpuModel", Val: spec.CPUModel},
			{Name: "summary.hardware.cpuMhz", Val: int32(spec.MHz)},
			{Name: "summary.hardware.numCpuPkgs", Val: int16(spec.Packages)},
			{Name: "summary.hardware.numCpuCores", Val: int16(spec.Cores)},
			{Name: "summary.hardware.numCpuThreads", Val: int16(spec.Threads)},
			{Name: "summary.hardware.memorySize", Val: spec.MemoryBytes},
		})
	})
}

func hashName(s string) uint64 {
	// FNV-1a: stable across runs and Go versions, unlike maphash.
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}
