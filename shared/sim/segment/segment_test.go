package segment_test

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/shared/sim/segment"
)

func exists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

// newFabric makes a fabric closed when the test ends (a test may close it
// sooner: Close is safe to call twice).
func newFabric(t *testing.T) *segment.Fabric {
	t.Helper()
	f, err := segment.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return f
}

// sleeper starts a process in a new network namespace, standing for a
// guest.
func sleeper(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("unshare", "--net", "sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	// unshare execs sleep once the namespace exists: wait for that.
	self, _ := os.Readlink("/proc/self/ns/net")
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ns, err := os.Readlink("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/ns/net")
		if err == nil && ns != self {
			comm, _ := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/comm")
			if strings.TrimSpace(string(comm)) == "sleep" {
				return cmd.Process.Pid
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("unshare --net sleep did not start within 10s")
	return 0
}

func TestFabricNamesPlugAndClose(t *testing.T) {
	privtest.Require(t, "bridges and veth pairs need CAP_NET_ADMIN")
	privtest.RequireTools(t, "unshare", "sleep")
	f1, f2 := newFabric(t), newFabric(t)

	b1, err := f1.Ensure("dvportgroup-1")
	if err != nil {
		t.Fatal(err)
	}
	again, err := f1.Ensure("dvportgroup-1")
	if err != nil || again != b1 {
		t.Fatalf("Ensure twice: %q, %v; want %q", again, err, b1)
	}
	b2, err := f2.Ensure("dvportgroup-1") // another datacenter, same key
	if err != nil {
		t.Fatal(err)
	}
	if b1 == b2 || len(b1) > 15 || len(b2) > 15 {
		t.Fatalf("bridges %q and %q: want distinct names of at most 15 bytes", b1, b2)
	}

	mac, _ := net.ParseMAC("02:50:56:aa:00:01")
	p, err := f1.AddPort(sleeper(t), "eth0", mac)
	if err != nil {
		t.Fatal(err)
	}
	if err := f1.Plug(p, "dvportgroup-1"); err != nil {
		t.Fatal(err)
	}
	link, err := netlink.LinkByName(p.Name)
	if err != nil {
		t.Fatal(err)
	}
	br, _ := netlink.LinkByName(b1)
	if link.Attrs().MasterIndex != br.Attrs().Index || link.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("port %s: master %d up %v; want plugged into %s and up", p.Name, link.Attrs().MasterIndex, link.Attrs().Flags&net.FlagUp != 0, b1)
	}
	if err := f1.Plug(p, "dvportgroup-9"); err == nil || !strings.Contains(err.Error(), "has no bridge") {
		t.Errorf("plug into a segment without bridge: %v", err)
	}
	link, _ = netlink.LinkByName(p.Name)
	if link.Attrs().MasterIndex != 0 || link.Attrs().Flags&net.FlagUp != 0 {
		t.Error("a port refused its segment stays plugged or up")
	}

	if err := f1.Close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{b1, p.Name} {
		if exists(name) {
			t.Errorf("%s outlived Close", name)
		}
	}
	if !exists(b2) {
		t.Errorf("closing one fabric removed another's bridge %s", b2)
	}
}
