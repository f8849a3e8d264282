package sim_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/shared/simtest"
)

// BenchmarkGuestBurst powers on b.N pod VMs at once (each an 8 GiB
// ephemeral disk, as the provisioner's default disk 0, and a busybox image
// disk) and waits for each guest's agent to report its container running
// over the guest channel. It reports what does not depend on how busy the
// machine is: the CPU time one guest start costs, in the guests (their
// cgroups: launcher, agent, mkfs, mounts, the OCI runtime, the container)
// and in this process (the simulator, the guest manager, the channels), and
// how much of the burst the power-on calls spent one after the other
// (poweron-ms: the power-on task returns once the guest is started). The
// wall-clock figures (p50/p99 to running) and the agent's own phases read
// from the consoles only mean something on an idle machine.
//
//	go test -run '^$' -bench GuestBurst -benchtime 30x ./shared/sim/
func BenchmarkGuestBurst(b *testing.B) {
	privtest.Require(b, "simulated guests run in namespaces and cgroups")
	privtest.RequireTools(b, "mkfs.erofs", "mkfs.ext4", "busybox")
	agent, err := simtest.AgentBinary()
	if err != nil {
		b.Fatal(err)
	}
	image, err := os.ReadFile(simtest.BusyboxImage(b, []string{"sh", "sleep"}, nil))
	if err != nil {
		b.Fatal(err)
	}
	const hosts = 4
	d, channels := simtest.StartWithGuests(b, hosts, agent)
	c := simtest.Client(b, d)
	running := make(chan string, b.N)
	agents := listenHostAgents(b, channels, simtest.HostNames(d, "")...)
	go func() {
		for h := range agents.hellos {
			go func() {
				if containerRunning(h.conn) {
					running <- h.msg.Name
				}
			}()
		}
	}()
	chain := "sha256:" + strings.Repeat("b", 64)
	vms := make([]*object.VirtualMachine, b.N)
	for i := range vms {
		name := fmt.Sprintf("burst-%03d", i)
		spec := forkSpec("uid-"+name, name, chain)
		spec.Containers[0].Command = []string{"sleep", "3600"}
		var extents []string
		vms[i], extents = simtest.CreatePodVM(b, c, d, simtest.PodVM{Name: name, Host: d.Hosts()[i%hosts], NumCPUs: 1, MemoryMB: 256,
			Spec: spec, Disks: []simtest.PodVMDisk{{File: "ephemeral.vmdk", CapacityBytes: 8 << 30},
				{File: "image.vmdk", CapacityBytes: 16 << 20, ReadOnly: true}}})
		if err := os.WriteFile(extents[1], image, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	cpuacct := guestCPUAcct(d.Guests().CgroupBase())
	guestCPU0, selfCPU0 := cpuacct(), selfCPU()

	b.ResetTimer()
	start := time.Now()
	powered := make([]time.Duration, b.N)
	var wg sync.WaitGroup
	for i, vm := range vms {
		wg.Go(func() {
			task, err := vm.PowerOn(context.Background())
			if err == nil {
				err = task.Wait(context.Background())
			}
			if err != nil {
				b.Errorf("power on: %v", err)
			}
			powered[i] = time.Since(start)
		})
	}
	toRunning := make([]time.Duration, 0, b.N)
	deadline := time.After(2*time.Minute + time.Duration(b.N)*time.Second)
	for len(toRunning) < b.N {
		select {
		case <-running:
			toRunning = append(toRunning, time.Since(start))
		case <-deadline:
			b.Fatalf("%d of %d guests reported their container running", len(toRunning), b.N)
		}
	}
	wg.Wait()
	b.StopTimer()
	guestCPU, simCPU := cpuacct()-guestCPU0, selfCPU()-selfCPU0

	n := float64(b.N)
	if guestCPU >= 0 {
		b.ReportMetric(float64(guestCPU.Microseconds())/1000/n, "guest-cpu-ms/guest")
	}
	b.ReportMetric(float64(simCPU.Microseconds())/1000/n, "sim-cpu-ms/guest")
	b.ReportMetric(msOf(slices.Max(powered)), "poweron-max-ms")
	slices.Sort(toRunning)
	b.ReportMetric(msOf(toRunning[len(toRunning)/2]), "p50-ms")
	b.ReportMetric(msOf(toRunning[(len(toRunning)*99+99)/100-1]), "p99-ms")
	phases := map[string][]float64{}
	for _, vm := range vms {
		info, ok := d.Guests().Guest(vm.Reference().Value)
		if !ok {
			b.Fatalf("%s: no guest", vm.Reference().Value)
		}
		for k, v := range consolePhases(b, filepath.Join(info.Dir, "console.log")) {
			phases[k] = append(phases[k], v)
		}
	}
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range phases {
			if !yield(k) {
				return
			}
		}
	}) {
		v := phases[k]
		slices.Sort(v)
		b.ReportMetric(v[len(v)/2], k+"-p50-ms")
	}
}

func msOf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// guestCPUAcct returns a reader of the CPU time used by every guest of the
// manager (cpuacct.usage of its base cgroup), -1 where the cpuacct
// controller is not mounted.
func guestCPUAcct(base string) func() time.Duration {
	for _, mnt := range []string{"/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/cpu,cpuacct"} {
		p := filepath.Join(mnt, base, "cpuacct.usage")
		if _, err := os.Stat(p); err == nil {
			return func() time.Duration {
				v, err := os.ReadFile(p)
				if err != nil {
					return -1
				}
				ns, err := strconv.ParseInt(strings.TrimSpace(string(v)), 10, 64)
				if err != nil {
					return -1
				}
				return time.Duration(ns)
			}
		}
	}
	return func() time.Duration { return -1 }
}

// selfCPU is this process's user and system CPU time.
func selfCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// consolePhases reads the agent's boot phases (init, disks) and its
// container's start (prepare, runtime) from a guest's console, in ms.
func consolePhases(b *testing.B, path string) map[string]float64 {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := map[string]string{}
		for _, kv := range strings.Fields(line) {
			if k, v, ok := strings.Cut(kv, "="); ok {
				fields[k] = v
			}
		}
		num := func(k string) float64 {
			v, _ := strconv.ParseFloat(fields[k], 64)
			return v
		}
		switch {
		case strings.Contains(line, `msg="boot phase"`):
			out[fields["phase"]] = num("ms")
			if fields["phase"] == "disks" {
				out["booted"] = num("total_ms")
			}
		case strings.Contains(line, `msg="container started"`):
			out["prepare"] = num("prepare_ms")
			out["runtime"] = num("runtime_ms")
		}
	}
	return out
}
