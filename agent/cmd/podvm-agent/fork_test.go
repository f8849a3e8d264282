package main

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/internal/guesttest"
)

// A template's VM booted from a configuration disk (as on a hypervisor
// with guestinfo) is forked: the child resumes the template's guest with a
// configuration of its own. The agent finds the child's spec when it reads
// the disk again, kills the template's container, greets the host as the
// child (its pod, its uuid, a boot id of its own) and runs the child's
// container on the disks the template mounted, under the child's hostname.
// A spec of the template itself changes nothing.
func TestTemplateVMTakenOverByAForkedChild(t *testing.T) {
	needGuest(t)
	tmpl := image.Spec("tmpl", "Never", 30, nil, []guestchannel.Container{sh("template-0", "echo template; exec sleep 3601")})
	tmpl.Template = true
	g := guest(t, tmpl, guesttest.Options{ConfigDisk: true})
	g.Host.Wait("template-0 running", wait, running("template-0"))
	_, _, hellos := g.Host.Snapshot()
	first := hellos[len(hellos)-1]
	if first.PodUID != tmpl.UID {
		t.Fatalf("first hello for %s, want the template's", first.PodUID)
	}
	mounts := len(guesttest.MountsUnder(g.StateDir))

	child := image.Spec("child", "Never", 1, nil, []guestchannel.Container{sh("app", "read h < /proc/sys/kernel/hostname; echo child on $h; exec sleep 3602")})
	g.Reconfigure(child, "vm-child")
	g.Host.Wait("app running", wait, running("app"))
	_, _, hellos = g.Host.Snapshot()
	last := hellos[len(hellos)-1]
	if last.PodUID != child.UID || last.Name != "child" || last.VMUUID != "vm-child" || last.BootID == first.BootID || last.BootID == "" {
		t.Fatalf("hello after the fork: pod %s/%s uid %s vm %q boot %q; want the child's, on vm-child, a boot id other than the template's %q",
			last.Namespace, last.Name, last.PodUID, last.VMUUID, last.BootID, first.BootID)
	}
	guesttest.Eventually(t, "app's log", wait, func() bool {
		text, _ := g.Host.Logs(guestchannel.LogsRequest{Container: "app"})
		return text == "child on child\n"
	})
	for _, pid := range guesttest.Descendants(g.Pid()) {
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(cmd), "3601") {
			t.Errorf("the template's container still runs in the child: pid %d %q", pid, cmd)
		}
	}
	log := g.Log()
	if !strings.Contains(log, `msg="forked: taken over"`) || strings.Contains(log, "its disks are not the VM's") {
		t.Errorf("want the child on the template's mounted disks; agent log:\n%s", log)
	}
	if now := len(guesttest.MountsUnder(g.StateDir)); now < mounts {
		t.Errorf("%d mounts under the state directory after the fork, %d before: the disks were not kept", now, mounts)
	}
	if v, _, _ := g.Host.Snapshot(); len(v.Containers) != 1 || v.Container("app").Name != "app" {
		t.Errorf("the child's status names %+v, want app alone", v.Containers)
	}
}

// On a booted VM the spec that brings a pod's network comes as its
// guestinfo changed, not on a descriptor: an agent whose spec waits for its
// network reads the configuration disk again until it says the network is
// there, then starts the containers it created meanwhile.
func TestNetworkPendingStartsWhenTheConfigurationSaysSo(t *testing.T) {
	needGuest(t)
	spec := image.Spec("early-vm", "Never", 1, nil, []guestchannel.Container{sh("app", "cat /etc/resolv.conf; exec sleep 3600")})
	spec.NetworkPending = true
	g := guest(t, spec, guesttest.Options{ConfigDisk: true})
	guesttest.Eventually(t, "app created, waiting for the network", wait, func() bool {
		return logLine(g.Log(), `msg="waiting for the pod's network"`) >= 0
	})
	if v, _, _ := g.Host.Snapshot(); v.Container("app").State.Kind == guestchannel.StateRunning {
		t.Fatalf("app runs before its network came: %+v", v)
	}
	attached := *spec
	attached.NetworkPending = false
	attached.DNS = &guestchannel.DNSConfig{Nameservers: []string{"10.0.0.54"}}
	g.Reconfigure(&attached, "vm-early")
	g.Host.Wait("app running", wait, running("app"))
	guesttest.Eventually(t, "app's resolv.conf", wait, func() bool {
		text, _ := g.Host.Logs(guestchannel.LogsRequest{Container: "app"})
		return strings.Contains(text, "nameserver 10.0.0.54")
	})
}
