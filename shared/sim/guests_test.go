package sim_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/shared/servetest"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/sim/guest"
	"github.com/podvisor/podvisor/shared/simtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	simtest.RemoveBinaries()
	os.Exit(code)
}

// probeBinary builds the guest probe (testdata/probe), once per test binary.
var probeBinary = simtest.Binary("./guest/testdata/probe")

// hostAgents stands in for the host agents: it listens on every host's
// socket in the channel dir and passes on each connection's hello.
type hostAgents struct {
	hellos chan hello
}

type hello struct {
	host string
	msg  guestchannel.Hello
	conn *guestchannel.Conn
}

func listenHostAgents(t testing.TB, dir string, hosts ...string) *hostAgents {
	t.Helper()
	h := &hostAgents{hellos: make(chan hello, 16)}
	for _, host := range hosts {
		ln, err := net.Listen("unix", guest.HostSocket(dir, host))
		if err != nil {
			t.Fatal(err)
		}
		servetest.Accept(t, ln, func(c net.Conn) {
			conn := guestchannel.NewConn(c)
			t.Cleanup(func() { conn.Close() })
			go func() {
				env, err := conn.Receive()
				var m guestchannel.Hello
				if err != nil || env.Type != guestchannel.TypeHello || env.Decode(&m) != nil {
					conn.Close()
					return
				}
				h.hellos <- hello{host: host, msg: m, conn: conn}
			}()
		})
	}
	return h
}

func (h *hostAgents) next(t testing.TB, what string) hello {
	t.Helper()
	select {
	case m := <-h.hellos:
		return m
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no hello from the guest within 10s", what)
		return hello{}
	}
}

// closed reports whether the host side of a connection sees it end.
func closed(t *testing.T, c *guestchannel.Conn) bool {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			env, err := c.Receive()
			if err != nil {
				return
			}
			_ = env
		}
	}()
	select {
	case <-done:
		return true
	case <-time.After(5 * time.Second):
		return false
	}
}

const (
	ephemeralBytes = 64 << 20
	imageBytes     = 16 << 20
)

// createPodVM makes a VM like the provisioner's: a thin read/write disk
// scsi0:0 created with it, a second disk scsi0:1 attached
// independent-nonpersistent, and the pod spec in guestinfo.
func createPodVM(t *testing.T, c *govmomi.Client, d *sim.Datacenter, h sim.HostSpec, name string) *object.VirtualMachine {
	t.Helper()
	vm, _ := simtest.CreatePodVM(t, c, d, simtest.PodVM{
		Name: name, Host: h, NumCPUs: 2, MemoryMB: 256,
		Spec: &guestchannel.PodSpec{
			Version: guestchannel.SpecVersion, UID: "uid-" + name, Namespace: "default", Name: name, RestartPolicy: "Always",
			Disks: []guestchannel.Disk{
				{Role: guestchannel.DiskEphemeral, Unit: "scsi0:0", FS: "ext4"},
				{Role: guestchannel.DiskImage, Unit: "scsi0:1", FS: "erofs", ChainID: "sha256:base"},
			},
			Containers: []guestchannel.Container{{Name: "app", Chain: []string{"sha256:base"}}},
		},
		Disks: []simtest.PodVMDisk{{File: "ephemeral.vmdk", CapacityBytes: ephemeralBytes}, {File: "image.vmdk", CapacityBytes: imageBytes, ReadOnly: true}},
	})
	return vm
}

// probeReport waits for the probe in the guest to write what it sees.
func probeReport(t *testing.T, dir string) (r struct {
	PID      int              `json:"pid"`
	Cgroups  string           `json:"cgroups"`
	Devices  map[string]int64 `json:"devices"`
	ChildPID int              `json:"childPID"`
	PodUID   string           `json:"podUID"`
}) {
	t.Helper()
	p := filepath.Join(dir, "state", "probe.json")
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(p)
		if err == nil {
			if err := json.Unmarshal(b, &r); err != nil {
				t.Fatal(err)
			}
			return r
		}
		if time.Now().After(deadline) {
			console, _ := os.ReadFile(filepath.Join(dir, "console.log"))
			t.Fatalf("the guest wrote no %s within 10s; console:\n%s", p, console)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func startGuests(t *testing.T) (*sim.Datacenter, string) {
	t.Helper()
	privtest.Require(t, "simulated guests run in namespaces and cgroups")
	probe, err := probeBinary()
	if err != nil {
		t.Fatalf("build the guest probe: %v", err)
	}
	// Short paths: unix socket names are limited to 107 bytes.
	base, err := os.MkdirTemp("", "pvg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	channels := filepath.Join(base, "ch")
	d := start(t, sim.Config{Clusters: 1, HostsPerCluster: 2, Dir: base, GuestsRequired: true,
		Guests: &guest.Config{Agent: probe, ChannelDir: channels, Dir: filepath.Join(base, "g"), StopGrace: time.Second}})
	if d.Guests() == nil || d.GuestsOff() != "" {
		t.Fatalf("guests are off: %s", d.GuestsOff())
	}
	return d, channels
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestGuestFollowsItsVM(t *testing.T) {
	d, channels := startGuests(t)
	c := client(t, d)
	ctx := context.Background()
	h1, h2 := d.Hosts()[0], d.Hosts()[1]
	agents := listenHostAgents(t, channels, h1.Name, h2.Name)
	vm := createPodVM(t, c, d, h1, "pv-guest")
	key := vm.Reference().Value

	task, err := vm.PowerOn(ctx)
	if err != nil || task.Wait(ctx) != nil {
		t.Fatalf("power on: %v", err)
	}
	info, ok := d.Guests().Guest(key)
	if !ok {
		t.Fatal("the VM is powered on but runs no guest")
	}
	report := probeReport(t, info.Dir)

	t.Run("agent is PID 1 of its own namespaces", func(t *testing.T) {
		if report.PID != 1 {
			t.Errorf("the agent sees itself as pid %d, want 1", report.PID)
		}
		for _, ns := range []string{"mnt", "pid", "uts", "ipc", "net"} {
			mine, _ := os.Readlink("/proc/self/ns/" + ns)
			theirs, err := os.Readlink("/proc/" + strconv.Itoa(info.PID) + "/ns/" + ns)
			if err != nil || mine == theirs {
				t.Errorf("%s namespace: guest %q (%v), simulator %q: want a namespace of its own", ns, theirs, err, mine)
			}
		}
	})
	t.Run("cgroup sized to the VM", func(t *testing.T) {
		if got := readFile(t, filepath.Join(info.CgroupDirs["memory"], "memory.limit_in_bytes")); got != strconv.Itoa(256<<20) {
			t.Errorf("memory limit = %s, want the VM's 256 MiB", got)
		}
		if got := readFile(t, filepath.Join(info.CgroupDirs["cpu"], "cpu.cfs_quota_us")); got != "200000" {
			t.Errorf("cpu quota = %s, want 2 CPUs (200000 per 100000)", got)
		}
		for _, ctrl := range []string{"memory", "cpu", "pids", "freezer"} {
			if !strings.Contains(report.Cgroups, ":"+info.Cgroup+"\n") && !strings.HasSuffix(report.Cgroups, ":"+info.Cgroup) {
				t.Errorf("%s: the agent's cgroups are\n%s\nwant %s", ctrl, report.Cgroups, info.Cgroup)
			}
			procs := readFile(t, filepath.Join(info.CgroupDirs[ctrl], "cgroup.procs"))
			if !strings.Contains(procs, strconv.Itoa(info.PID)) {
				t.Errorf("%s cgroup.procs = %q, want the guest's pid %d", ctrl, procs, info.PID)
			}
		}
	})
	t.Run("devices are the VM's disk files", func(t *testing.T) {
		if report.Devices["scsi0:0"] != ephemeralBytes {
			t.Errorf("scsi0:0 is %d bytes in the guest, want the disk's capacity %d", report.Devices["scsi0:0"], ephemeralBytes)
		}
		if _, ok := report.Devices["scsi0:1"]; !ok {
			t.Errorf("scsi0:1 missing from the guest's devices %v", report.Devices)
		}
		var boot guestchannel.BootConfig
		if err := json.Unmarshal([]byte(readFile(t, filepath.Join(info.Dir, "boot.json"))), &boot); err != nil {
			t.Fatal(err)
		}
		ds, _ := d.Datastore(sim.SharedDatastore)
		want := filepath.Join(ds.Dir, "pv-guest", "ephemeral-flat.vmdk")
		if boot.Devices["scsi0:0"] != want {
			t.Errorf("scsi0:0 = %s, want the flat extent %s", boot.Devices["scsi0:0"], want)
		}
	})

	first := agents.next(t, "power on")
	if first.host != h1.Name || first.msg.PodUID != "uid-pv-guest" {
		t.Fatalf("hello on %s for %q, want %s for uid-pv-guest", first.host, first.msg.PodUID, h1.Name)
	}

	t.Run("relocation reaches the new host", func(t *testing.T) {
		task, err := vm.Relocate(ctx, types.VirtualMachineRelocateSpec{Host: &h2.Ref}, "")
		if err != nil || task.Wait(ctx) != nil {
			t.Fatalf("relocate: %v", err)
		}
		if !closed(t, first.conn) {
			t.Error("the connection to the old host stayed open after the relocation")
		}
		if m := agents.next(t, "relocation"); m.host != h2.Name {
			t.Errorf("after relocation the guest reached %s, want %s", m.host, h2.Name)
		}
	})

	t.Run("host failure freezes, recovery thaws", func(t *testing.T) {
		info, _ := d.Guests().Guest(key)
		if err := d.FailHost(ctx, h2.Name); err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, filepath.Join(info.CgroupDirs["freezer"], "freezer.state")); got != "FROZEN" {
			t.Errorf("freezer.state = %s after host failure, want FROZEN", got)
		}
		if info, _ := d.Guests().Guest(key); info.Connections != 0 || !info.Frozen {
			t.Errorf("after host failure: %d connections, frozen %v; want the channel cut", info.Connections, info.Frozen)
		}
		if err := d.RecoverHost(ctx, h2.Name); err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, filepath.Join(info.CgroupDirs["freezer"], "freezer.state")); got != "THAWED" {
			t.Errorf("freezer.state = %s after recovery, want THAWED", got)
		}
		if m := agents.next(t, "recovery"); m.host != h2.Name {
			t.Errorf("after recovery the guest reached %s, want %s", m.host, h2.Name)
		}
	})

	t.Run("power off leaves nothing", func(t *testing.T) {
		info, _ := d.Guests().Guest(key)
		procs := readFile(t, filepath.Join(info.CgroupDirs["memory"], "cgroup.procs"))
		if len(strings.Fields(procs)) < 2 {
			t.Fatalf("cgroup.procs = %q: want the agent and its child", procs)
		}
		task, err := vm.PowerOff(ctx)
		if err != nil || task.Wait(ctx) != nil {
			t.Fatalf("power off: %v", err)
		}
		if _, ok := d.Guests().Guest(key); ok {
			t.Error("the guest still runs after power-off")
		}
		for _, p := range strings.Fields(procs) {
			if _, err := os.Stat("/proc/" + p); err == nil {
				t.Errorf("process %s of the guest survived the power-off", p)
			}
		}
		for ctrl, dir := range info.CgroupDirs {
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s cgroup %s still exists after power-off (%v)", ctrl, dir, err)
			}
		}
		if _, err := os.Stat(filepath.Join(info.Dir, "state", "sigterm")); err != nil {
			t.Errorf("the agent got no SIGTERM before being killed: %v", err)
		}
	})

	t.Run("destroy removes the guest directory", func(t *testing.T) {
		task, err := vm.Destroy(ctx)
		if err != nil || task.Wait(ctx) != nil {
			t.Fatalf("destroy: %v", err)
		}
		if _, err := os.Stat(info.Dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("guest directory %s still exists after destroy (%v)", info.Dir, err)
		}
	})
}

func TestCloseStopsEveryGuest(t *testing.T) {
	d, channels := startGuests(t)
	c := client(t, d)
	ctx := context.Background()
	listenHostAgents(t, channels, d.Hosts()[0].Name)
	vm := createPodVM(t, c, d, d.Hosts()[0], "pv-close")
	task, err := vm.PowerOn(ctx)
	if err != nil || task.Wait(ctx) != nil {
		t.Fatalf("power on: %v", err)
	}
	info, ok := d.Guests().Guest(vm.Reference().Value)
	if !ok {
		t.Fatal("no guest")
	}
	probeReport(t, info.Dir)
	base := filepath.Dir(info.CgroupDirs["memory"])
	d.Close()
	if _, err := os.Stat("/proc/" + strconv.Itoa(info.PID)); err == nil {
		t.Errorf("guest pid %d survived Close", info.PID)
	}
	for _, p := range []string{info.Dir, base} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after Close (%v)", p, err)
		}
	}
}

func TestGuestsOffSayWhy(t *testing.T) {
	d := start(t, sim.Config{Clusters: 1, HostsPerCluster: 1, Dir: t.TempDir(),
		Guests: &guest.Config{Agent: filepath.Join(t.TempDir(), "missing-agent"), ChannelDir: t.TempDir()}})
	if d.Guests() != nil || !strings.Contains(d.GuestsOff(), "missing-agent") {
		t.Errorf("guests with a missing agent: on=%v, reason %q; want off, naming the agent", d.Guests() != nil, d.GuestsOff())
	}
	_, err := sim.Start(context.Background(), sim.Config{Clusters: 1, HostsPerCluster: 1, Dir: t.TempDir(), GuestsRequired: true,
		Guests: &guest.Config{Agent: filepath.Join(t.TempDir(), "missing-agent"), ChannelDir: t.TempDir()}})
	if err == nil || !strings.Contains(err.Error(), "missing-agent") {
		t.Errorf("Start with guests required and no agent = %v, want an error naming the agent", err)
	}
}
