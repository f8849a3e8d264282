package guest

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/shared/sim/segment"
)

// nicInit is the /sbin/init of the native guest of the NIC tests: as
// cloud-init does, it configures the addresses its network data names
// (the guestinfo value guestinfo.addresses, "<nic> <address>" per line)
// once, at boot, then waits as PID 1.
const nicInit = `#!/bin/sh
export PATH=/bin
while read -r nic addr; do
  ip link set "$nic" up && ip addr add "$addr" dev "$nic" && echo "init: $nic $addr"
done < /run/vmware/guestinfo/guestinfo.addresses
echo "init: ready"
while :; do sleep 3600 & wait $!; done
`

// nicGuest is a native VM whose boot disk holds busybox and nicInit, with
// cards of the MACs given (port group pg-1) and the network data
// addresses ("eth0 10.0.0.5/24\n").
func nicGuest(t *testing.T, boot, addresses string, macs ...string) VM {
	t.Helper()
	vm := VM{Key: "vm-nic", Name: "nv-nic", Host: "host-1", NumCPU: 1, MemoryMB: 128,
		Disks:  []Disk{{Unit: "scsi0:0", Path: boot, CapacityBytes: 32 << 20}},
		Native: &Native{BootDisk: boot, Guestinfo: map[string]string{"guestinfo.addresses": addresses}}}
	for _, mac := range macs {
		vm.NICs = append(vm.NICs, NIC{Segment: "pg-1", MAC: mac})
	}
	return vm
}

// bootDisk makes an ext4 boot disk of busybox and nicInit.
func bootDisk(t *testing.T) string {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal(err)
	}
	stage := t.TempDir()
	for _, d := range []string{"bin", "sbin", "run", "dev", "proc", "tmp"} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	body, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stage, "bin", "busybox"), body, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"sh", "ip", "sleep", "echo"} {
		if err := os.Symlink("busybox", filepath.Join(stage, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(stage, "sbin", "init"), []byte(nicInit), 0o755); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(t.TempDir(), "root-flat.vmdk")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", stage, disk, "32M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	return disk
}

// guestNIC is an interface as the guest has it.
type guestNIC struct {
	MAC   string
	Up    bool
	Addrs []string
}

// guestNICs lists the interfaces eth* of the guest whose PID 1 is pid,
// by name, read in its network namespace.
func guestNICs(t *testing.T, pid int) map[string]guestNIC {
	t.Helper()
	h, err := netlinkAt(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]guestNIC{}
	for _, l := range links {
		a := l.Attrs()
		if !strings.HasPrefix(a.Name, "eth") {
			continue
		}
		n := guestNIC{MAC: a.HardwareAddr.String(), Up: a.Flags&net.FlagUp != 0}
		addrs, err := h.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		for _, ad := range addrs {
			n.Addrs = append(n.Addrs, ad.IPNet.String())
		}
		out[a.Name] = n
	}
	return out
}

// waitConsole waits until the guest's console shows line.
func waitConsole(t *testing.T, info Info, line string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join(info.Dir, "console.log"))
		if strings.Contains(string(b), line) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest's console does not show %q within 15s:\n%s", line, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestNativeGuestSeesNICsHotPlugged: a reconfigure of a running native VM
// reaches its guest's network as vSphere's hot-plug reaches a Linux
// guest's. A card added is a new interface at once, with its MAC, under
// the lowest free name, plugged into its segment, and unconfigured (down,
// no address): the guest configured its network from its data at boot,
// and does not again until it boots. A card removed is gone; the others
// keep their names and addresses. Powered off and on, the guest boots
// with every card, named in device order, and configures them all.
func TestNativeGuestSeesNICsHotPlugged(t *testing.T) {
	m, fabric := nicTestManager(t)
	const mac1, mac2, mac3 = "00:50:56:3f:00:01", "00:50:56:3f:00:02", "00:50:56:3f:00:03"
	boot := bootDisk(t)

	if err := m.PowerOn(nicGuest(t, boot, "eth0 10.0.0.1/24\n", mac1)); err != nil {
		t.Fatal(err)
	}
	g, _ := m.Guest("vm-nic")
	waitConsole(t, g, "init: ready")
	want := func(step string, nics map[string]guestNIC) {
		t.Helper()
		got := guestNICs(t, g.PID)
		if len(got) != len(nics) {
			t.Fatalf("%s: the guest's interfaces %+v, want %+v", step, got, nics)
		}
		for name, w := range nics {
			if n, ok := got[name]; !ok || n.MAC != w.MAC || n.Up != w.Up || !slices.Equal(n.Addrs, w.Addrs) {
				t.Fatalf("%s: the guest's interfaces %+v, want %+v", step, got, nics)
			}
		}
	}
	want("at boot", map[string]guestNIC{"eth0": {MAC: mac1, Up: true, Addrs: []string{"10.0.0.1/24"}}})

	// Added while it runs: there at once, unconfigured, plugged.
	if err := m.Reconfigure(nicGuest(t, boot, "eth0 10.0.0.1/24\neth1 10.0.0.2/24\n", mac1, mac2)); err != nil {
		t.Fatal(err)
	}
	want("a card hot-added", map[string]guestNIC{"eth0": {MAC: mac1, Up: true, Addrs: []string{"10.0.0.1/24"}}, "eth1": {MAC: mac2}})
	ports := m.Ports("vm-nic")
	if len(ports) != 2 || ports[1].Guest != "eth1" || fabric.Segment(ports[1]) != "pg-1" {
		t.Fatalf("the guest's ports %+v: want eth1 added and plugged into pg-1", ports)
	}

	// The first removed, a third added: the third takes the name the
	// first left; the second keeps its name.
	if err := m.Reconfigure(nicGuest(t, boot, "", mac2)); err != nil {
		t.Fatal(err)
	}
	want("the first card hot-removed", map[string]guestNIC{"eth1": {MAC: mac2}})
	if err := m.Reconfigure(nicGuest(t, boot, "", mac2, mac3)); err != nil {
		t.Fatal(err)
	}
	want("a third card hot-added", map[string]guestNIC{"eth1": {MAC: mac2}, "eth0": {MAC: mac3}})
	if now, ok := m.Guest("vm-nic"); !ok || now.PID != g.PID || len(now.VM.NICs) != 2 || now.VM.NICs[0].MAC != mac2 || now.VM.NICs[1].MAC != mac3 {
		t.Fatalf("guest %+v (running %v, pid before %d): want the same guest with the cards %s and %s", now, ok, g.PID, mac2, mac3)
	}

	// A power cycle: the guest boots with its cards in device order and
	// configures both from its network data.
	if err := m.PowerOff("vm-nic"); err != nil {
		t.Fatal(err)
	}
	if err := m.PowerOn(nicGuest(t, boot, "eth0 10.0.0.2/24\neth1 10.0.0.3/24\n", mac2, mac3)); err != nil {
		t.Fatal(err)
	}
	g, _ = m.Guest("vm-nic")
	waitConsole(t, g, "init: ready")
	want("after a power cycle", map[string]guestNIC{"eth0": {MAC: mac2, Up: true, Addrs: []string{"10.0.0.2/24"}},
		"eth1": {MAC: mac3, Up: true, Addrs: []string{"10.0.0.3/24"}}})
}

// renameInGuest renames the guest's interface from to to in its network
// namespace (down, renamed, up again), as the guest's init does for a
// card its network data gives a set-name.
func renameInGuest(t *testing.T, pid int, from, to string) {
	t.Helper()
	h, err := netlinkAt(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(from)
	if err == nil {
		err = h.LinkSetDown(l)
	}
	if err == nil {
		err = h.LinkSetName(l, to)
	}
	if err == nil {
		err = h.LinkSetUp(l)
	}
	if err != nil {
		t.Fatalf("rename %s to %s in the guest: %v", from, to, err)
	}
}

// TestAHotAddedCardTakesANameTheGuestHasFree: the guest's init renames its
// cards to their network data's set-name, so the names its interfaces
// have are not those the fabric gave at boot. A card hot-added takes the
// lowest name free in the guest as it is: here eth0, which the renamed
// card left, not eth1, which it has now (a name the kernel refuses). A
// name the guest takes meanwhile is refused (EEXIST) and the next one
// free is taken.
func TestAHotAddedCardTakesANameTheGuestHasFree(t *testing.T) {
	m, fabric := nicTestManager(t)
	const mac1, mac2, mac3 = "00:50:56:3f:00:01", "00:50:56:3f:00:02", "00:50:56:3f:00:03"
	boot := bootDisk(t)
	if err := m.PowerOn(nicGuest(t, boot, "eth0 10.0.0.1/24\n", mac1)); err != nil {
		t.Fatal(err)
	}
	g, _ := m.Guest("vm-nic")
	waitConsole(t, g, "init: ready")
	renameInGuest(t, g.PID, "eth0", "eth1")

	if err := m.Reconfigure(nicGuest(t, boot, "", mac1, mac2)); err != nil {
		t.Fatalf("hot-add beside a renamed card: %v", err)
	}
	got := guestNICs(t, g.PID)
	if n := got["eth1"]; len(got) != 2 || n.MAC != mac1 || !slices.Equal(n.Addrs, []string{"10.0.0.1/24"}) || got["eth0"].MAC != mac2 || got["eth0"].Up {
		t.Fatalf("the guest's interfaces %+v: want eth1 the renamed card, configured, and eth0 the card added, down", got)
	}
	if ports := m.Ports("vm-nic"); len(ports) != 2 || ports[1].Guest != "eth0" || fabric.Segment(ports[1]) != "pg-1" {
		t.Fatalf("the guest's ports %+v: want the card added as eth0, plugged into pg-1", ports)
	}

	// A name taken after the guest's interfaces were listed: the kernel
	// refuses it, and the next free name is taken.
	hw, _ := net.ParseMAC(mac3)
	p, err := m.addHotPort(g.PID, map[string]bool{"lo": true, "eth1": true}, hw)
	if err != nil {
		t.Fatalf("a card added under a name the guest has: %v, want the next free name", err)
	}
	t.Cleanup(func() { _ = fabric.RemovePort(p) })
	if got := guestNICs(t, g.PID); p.Guest != "eth2" || got["eth2"].MAC != mac3 {
		t.Fatalf("port %+v, the guest's interfaces %+v: want the card as eth2", p, got)
	}
}

// nicTestManager is a guest manager whose native guests' cards go to the
// segment of port group pg-1 of fabric, which host-1 carries.
func nicTestManager(t *testing.T) (*Manager, *segment.Fabric) {
	t.Helper()
	privtest.Require(t, "simulated guests run in namespaces and cgroups")
	privtest.RequireTools(t, "mkfs.ext4", "busybox", "mount")
	fabric, err := segment.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fabric.Close() })
	if _, err := fabric.Ensure("pg-1"); err != nil {
		t.Fatal(err)
	}
	base, err := os.MkdirTemp("", "pvg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	m, err := New(Config{Agent: "/bin/true", ChannelDir: filepath.Join(base, "ch"), Dir: filepath.Join(base, "g"),
		StopGrace: time.Second, Fabric: fabric})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	m.SetSegments(map[string]map[string]bool{"host-1": {"pg-1": true}})
	return m, fabric
}
