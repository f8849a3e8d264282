package sim_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/sim/guest"
	"github.com/podvisor/podvisor/shared/simtest"
)

// segmentHosts polls the hosts carrying a port group's segment until they
// are want.
func segmentHosts(t *testing.T, d *sim.Datacenter, key string, want ...string) {
	t.Helper()
	var got []string
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, got = d.Segment(key); slices.Equal(got, want) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("segment %s carried by %v, want %v", key, got, want)
}

// wget fetches url from inside a guest's network namespace (the pod's: its
// containers share it) and reports the body, or the error.
// (busybox 1.35's wget crashes with -T: the timeout is the context's.)
func wget(guestPID int, url string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", "--net=/proc/"+strconv.Itoa(guestPID)+"/ns/net",
		"busybox", "wget", "-q", "-O", "-", url).CombinedOutput()
	if err != nil {
		return "", errors.New(strings.TrimSpace(string(out)) + ": " + err.Error())
	}
	return string(out), nil
}

// TestPodNetworksCarryPacketsAndIsolate runs three pod VMs with the real
// agent: a and b on one port group, c on another with an address in the
// same subnet. b serves HTTP; a fetches from it by IP, c cannot reach it
// (its segment is another bridge). Destroying the port group takes the
// segment away; Close leaves no interface behind.
func TestPodNetworksCarryPacketsAndIsolate(t *testing.T) {
	agent := simtest.GuestAgent(t, "simulated guests and their network segments need root", "nsenter")
	image := simtest.BusyboxImage(t, []string{"sh", "sleep", "httpd"}, map[string]string{"www/index.html": "hello from b\n"})
	img, err := os.ReadFile(image)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := simtest.StartWithGuests(t, 2, agent)
	c := simtest.Client(t, d)
	ctx := context.Background()
	hosts := d.Hosts()

	front := simtest.AddPortGroup(t, c, d.DVS(), "pv-front")
	back := simtest.AddPortGroup(t, c, d.DVS(), "pv-back")
	// Every member of pv-dvs carries both; each has its own bridge.
	segmentHosts(t, d, front, hosts[0].Name, hosts[1].Name)
	segmentHosts(t, d, back, hosts[0].Name, hosts[1].Name)
	frontBridge, _ := d.Segment(front)
	backBridge, _ := d.Segment(back)
	if frontBridge == "" || backBridge == "" || frontBridge == backBridge || len(frontBridge) > 15 {
		t.Fatalf("bridges %q and %q: want two distinct names of at most 15 bytes", frontBridge, backBridge)
	}

	chain := "sha256:" + strings.Repeat("c", 64)
	pod := func(name, host, pg, mac, ip string, cmd ...string) int {
		spec := simtest.BusyboxSpec("uid-"+name, name, chain, 1, guestchannel.Container{Name: "app", Command: cmd})
		spec.NICs = []guestchannel.NIC{{Network: pg, MAC: mac, IP: ip, Prefix: 24, Gateway: "10.77.0.1"}}
		var h sim.HostSpec
		for _, x := range hosts {
			if x.Name == host {
				h = x
			}
		}
		vm, extents := simtest.CreatePodVM(t, c, d, simtest.PodVM{
			Name: "pv-" + name, Host: h, NumCPUs: 1, MemoryMB: 256, Spec: spec,
			Disks: []simtest.PodVMDisk{{File: "ephemeral.vmdk", CapacityBytes: 64 << 20}, {File: "image.vmdk", CapacityBytes: 16 << 20, ReadOnly: true}},
			NICs:  []simtest.PodVMNIC{{PortGroup: pg, MAC: mac}},
		})
		if err := os.WriteFile(extents[1], img, 0o600); err != nil {
			t.Fatal(err)
		}
		task, err := vm.PowerOn(ctx)
		if err != nil || task.Wait(ctx) != nil {
			t.Fatalf("power on %s: %v", name, err)
		}
		info, ok := d.Guests().Guest(vm.Reference().Value)
		if !ok {
			t.Fatalf("%s runs no guest", name)
		}
		t.Cleanup(func() {
			if t.Failed() {
				console, _ := os.ReadFile(filepath.Join(info.Dir, "console.log"))
				t.Logf("%s console:\n%s", name, console)
			}
		})
		return info.PID
	}
	// a and b on different hosts: the segment spans the hosts that carry it.
	pod("b", hosts[1].Name, "pv-front", "02:50:56:77:00:03", "10.77.0.3", "httpd", "-f", "-p", "8080", "-h", "/www")
	pidA := pod("a", hosts[0].Name, "pv-front", "02:50:56:77:00:02", "10.77.0.2", "sleep", "3600")
	pidC := pod("c", hosts[0].Name, "pv-back", "02:50:56:77:00:04", "10.77.0.4", "sleep", "3600")

	const url = "http://10.77.0.3:8080/"
	var body string
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if body, err = wget(pidA, url, 2*time.Second); err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil || body != "hello from b\n" {
		t.Fatalf("a fetching %s: body %q, err %v; want b's page", url, body, err)
	}

	// c is on another segment: nothing answers for 10.77.0.3 there.
	start := time.Now()
	// Nothing answers ARP for b's address on c's segment: no route to host,
	// or still trying when the 5s run out.
	if body, err := wget(pidC, url, 5*time.Second); err == nil {
		t.Errorf("c on pv-back fetched %s from b on pv-front: %q", url, body)
	} else if !strings.Contains(err.Error(), "can't connect to remote host") && !strings.Contains(err.Error(), "signal: killed") {
		t.Errorf("c on pv-back fetching %s: %v; want a network failure", url, err)
	}
	if took := time.Since(start); took > 8*time.Second {
		t.Errorf("c's failed fetch took %v, want it to fail within the 5s timeout", took)
	}

	// The port group goes: its segment goes with it, and a loses b.
	pgRef, err := simtest.Finder(t, c).Network(ctx, "pv-front")
	if err != nil {
		t.Fatal(err)
	}
	task, err := object.NewDistributedVirtualPortgroup(c.Client, pgRef.Reference()).Destroy(ctx)
	if err != nil || task.Wait(ctx) != nil {
		t.Fatalf("destroy pv-front: %v", err)
	}
	segmentHosts(t, d, front)
	deadline = time.Now().Add(10 * time.Second)
	for {
		if _, err := netlink.LinkByName(frontBridge); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bridge %s of the destroyed port group is still there", frontBridge)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if body, err := wget(pidA, url, 2*time.Second); err == nil {
		t.Errorf("a still fetched %s after its port group was destroyed: %q", url, body)
	}

	// Close removes every bridge and port the datacenter made.
	var ports []string
	for _, key := range d.Guests().Running() {
		for _, p := range d.Guests().Ports(key) {
			ports = append(ports, p.Name)
		}
	}
	if len(ports) != 3 {
		t.Errorf("ports %v, want one per guest", ports)
	}
	d.Close()
	for _, name := range append(ports, backBridge) {
		if _, err := netlink.LinkByName(name); err == nil {
			t.Errorf("interface %s outlived the datacenter", name)
		}
	}
}

// TestSegmentFollowsSwitchMembership checks that a host carries a port
// group's segment while it is a member of the port group's switch, and no
// longer once it leaves.
func TestSegmentFollowsSwitchMembership(t *testing.T) {
	privtest.Require(t, "network segments are Linux bridges")
	d := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 2, GuestsRequired: true,
		Guests: &guest.Config{Agent: "/bin/true", ChannelDir: filepath.Join(t.TempDir(), "ch")}})
	c := simtest.Client(t, d)
	ctx := context.Background()
	hosts := d.Hosts()
	dc, err := simtest.Finder(t, c).Datacenter(ctx, sim.DatacenterName)
	if err != nil {
		t.Fatal(err)
	}
	folders, err := dc.Folders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	task, err := folders.NetworkFolder.CreateDVS(ctx, types.DVSCreateSpec{ConfigSpec: &types.VMwareDVSConfigSpec{
		DVSConfigSpec: types.DVSConfigSpec{Name: "pv-dvs-scoped"}}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	sw := object.NewDistributedVirtualSwitch(c.Client, info.Result.(types.ManagedObjectReference))
	member := func(op types.ConfigSpecOperation) {
		task, err := sw.Reconfigure(ctx, &types.VMwareDVSConfigSpec{DVSConfigSpec: types.DVSConfigSpec{
			Host: []types.DistributedVirtualSwitchHostMemberConfigSpec{{Operation: string(op), Host: hosts[1].Ref}}}})
		if err != nil || task.Wait(ctx) != nil {
			t.Fatalf("%s %s on the switch: %v", op, hosts[1].Name, err)
		}
	}
	member(types.ConfigSpecOperationAdd)
	key := simtest.AddPortGroup(t, c, sw.Reference(), "pv-scoped")
	segmentHosts(t, d, key, hosts[1].Name)

	member(types.ConfigSpecOperationRemove)
	segmentHosts(t, d, key)
	if bridge, _ := d.Segment(key); bridge == "" {
		t.Error("the port group still exists, so does its segment; it has no bridge")
	}
}
