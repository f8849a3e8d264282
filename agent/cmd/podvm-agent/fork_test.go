package main

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/internal/guesttest"
)

// A template's VM booted from a configuration disk (as on a hypervisor
// with guestinfo) is forked: the child resumes the template's guest with a
// configuration of its own. The agent finds the child's spec when it reads
// the disk again, kills the template's container, removes what it wrote,
// binds the cards again, greets the host as the child (its pod, its uuid,
// a boot id of its own; never as the template once the disk says so, even
// when the host asks for a hello at once) and runs the child's container
// on the disks the template mounted, under the child's hostname. A spec of
// the template itself changes nothing.
func TestTemplateVMTakenOverByAForkedChild(t *testing.T) {
	needGuest(t)
	tmpl, g := runningTemplate(t, "echo template; exec sleep 3601")
	guesttest.Eventually(t, "template-0's log", wait, func() bool {
		text, _ := g.Host.Logs(guestchannel.LogsRequest{Container: "template-0"})
		return text == "template\n"
	})
	_, _, hellos := g.Host.Snapshot()
	first := hellos[len(hellos)-1]
	if first.PodUID != tmpl.UID {
		t.Fatalf("first hello for %s, want the template's", first.PodUID)
	}
	disksDir := filepath.Join(g.StateDir, "disks")
	mounts := g.Mounts(disksDir)
	if len(mounts) == 0 {
		t.Fatalf("no disk mounted under %s in the guest", disksDir)
	}
	for mp, id := range mounts {
		if strings.HasSuffix(id, "(reused?)") {
			t.Logf("%s: this kernel gives no unique mount id: a disk mounted again may go unseen", mp)
		}
	}
	sleeper := func(tag string) []int {
		var pids []int
		for _, pid := range guesttest.Descendants(g.Pid()) {
			cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if strings.Contains(string(cmd), tag) {
				pids = append(pids, pid)
			}
		}
		return pids
	}
	tmplPids := sleeper("3601")
	if len(tmplPids) == 0 {
		t.Fatal("the template's container has no process")
	}

	// The template's own spec, written again: the agent reads it before
	// the hello a resync asks for, and goes on as the template.
	g.Reconfigure(tmpl, "vm-tmpl")
	g.Host.Send(guestchannel.TypeResync, "", nil)
	g.Host.Wait("a hello again", wait, func(guesttest.View) bool {
		_, _, now := g.Host.Snapshot()
		return len(now) > len(hellos)
	})
	_, _, hellos = g.Host.Snapshot()
	if again := hellos[len(hellos)-1]; again.PodUID != tmpl.UID || again.BootID != first.BootID {
		t.Fatalf("hello after the template's spec was written again: uid %s boot %q, want the template's, boot %q", again.PodUID, again.BootID, first.BootID)
	}
	if now := sleeper("3601"); !slices.Equal(now, tmplPids) {
		t.Fatalf("the template's container: pids %v, then %v; want it left running", tmplPids, now)
	}
	if strings.Contains(g.Log(), `msg="forked`) {
		t.Fatalf("the template's own spec taken for a fork; agent log:\n%s", g.Log())
	}

	child := image.Spec("child", "Never", 1, nil, []guestchannel.Container{sh("app", "read h < /proc/sys/kernel/hostname; echo child on $h; exec sleep 3602")})
	before := len(hellos)
	g.Reconfigure(child, "vm-child")
	// The child's host side asks for a hello at once, before the agent's
	// next periodic read: the hello must be the child's all the same. That
	// read may have come first and closed the connection to greet the host
	// again; the resync then fails, as it would on a real host.
	if err := g.Host.TrySend(guestchannel.TypeResync, "", nil); err != nil {
		t.Logf("resync after the fork not sent (the agent had reconnected already): %v", err)
	}
	g.Host.Wait("app running", wait, running("app"))
	_, _, hellos = g.Host.Snapshot()
	if len(hellos) == before {
		t.Fatal("no hello after the fork")
	}
	for _, h := range hellos[before:] {
		if h.PodUID != child.UID {
			t.Errorf("hello for %s/%s (uid %s) after the fork, want only the child's", h.Namespace, h.Name, h.PodUID)
		}
	}
	last := hellos[len(hellos)-1]
	if last.PodUID != child.UID || last.Name != "child" || last.VMUUID != "vm-child" || last.BootID == first.BootID || last.BootID == "" {
		t.Fatalf("hello after the fork: pod %s/%s uid %s vm %q boot %q; want the child's, on vm-child, a boot id other than the template's %q",
			last.Namespace, last.Name, last.PodUID, last.VMUUID, last.BootID, first.BootID)
	}
	guesttest.Eventually(t, "app's log", wait, func() bool {
		text, _ := g.Host.Logs(guestchannel.LogsRequest{Container: "app"})
		return text == "child on child\n"
	})
	if left := sleeper("3601"); len(left) > 0 {
		t.Errorf("the template's container still runs in the child: pids %v", left)
	}
	log := g.Log()
	if !strings.Contains(log, `msg="forked: taken over"`) {
		t.Errorf("want the takeover logged; agent log:\n%s", log)
	}
	for _, fallback := range []string{"its disks are not the VM's", "the template's disks not kept"} {
		if strings.Contains(log, fallback) {
			t.Errorf("want the child on the template's mounted disks, not %q; agent log:\n%s", fallback, log)
		}
	}
	if now := g.Mounts(disksDir); !maps.Equal(now, mounts) {
		t.Errorf("disk mounts (mountpoint: id) after the fork %v, before %v: the disks were not kept", now, mounts)
	}
	// The child has no NICs yet in its spec, and its cards are bound
	// again all the same (none here: a simulated guest's are no PCI cards).
	if !strings.Contains(log, `msg="forked: network cards bound again"`) {
		t.Errorf("want the cards bound again at the takeover; agent log:\n%s", log)
	}
	eph := g.Path(filepath.Join(g.StateDir, "disks", "ephemeral"))
	for _, p := range []string{"logs/template-0", "containers/template-0"} {
		if _, err := os.Stat(filepath.Join(eph, p)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("the template's %s on the child's disk: %v, want it removed", p, err)
		}
	}
	if v, _, _ := g.Host.Snapshot(); len(v.Containers) != 1 || v.Container("app").Name != "app" {
		t.Errorf("the child's status names %+v, want app alone", v.Containers)
	}
}

// A template's VM whose configuration says neither that it is the
// template's nor whose it is (a spec that does not decode: the
// hypervisor's write cut short, an agent too old for it) greets no one:
// a hello would be the template's on what may be a child's line. The
// agent says so in its log and, once the configuration is a child's it can
// run, takes the VM over as usual.
func TestTemplateVMWithASpecItCannotRunGreetsNoOne(t *testing.T) {
	needGuest(t)
	tmpl, g := runningTemplate(t, "exec sleep 3603")
	_, _, hellos := g.Host.Snapshot()
	before := len(hellos)

	g.ReconfigureRaw(`{"version":1,"uid":"child",`, "vm-child")
	// The agent's periodic read may end the session before this resync.
	if err := g.Host.TrySend(guestchannel.TypeResync, "", nil); err != nil {
		t.Logf("resync not sent (the agent had ended the session already): %v", err)
	}
	// The session ends instead of greeting, the agent dials again and is
	// refused again.
	guesttest.Eventually(t, "the hello refused twice", wait, func() bool {
		return strings.Count(g.Log(), "no hello as "+tmpl.Namespace+"/"+tmpl.Name) >= 2
	})
	if _, _, now := g.Host.Snapshot(); len(now) != before {
		t.Fatalf("hellos after the configuration became unreadable: %+v, want none", now[before:])
	}
	if log := g.Log(); !strings.Contains(log, "level=ERROR") || !strings.Contains(log, "not the template's") {
		t.Fatalf("want the configuration no one's logged as an error; agent log:\n%s", log)
	}

	child := image.Spec("child", "Never", 1, nil, []guestchannel.Container{sh("app", "exec sleep 3604")})
	g.Reconfigure(child, "vm-child")
	g.Host.Wait("app running", wait, running("app"))
	_, _, hellos = g.Host.Snapshot()
	for _, h := range hellos[before:] {
		if h.PodUID != child.UID {
			t.Errorf("hello for %s after the template's configuration became no one's, want only the child's", h.PodUID)
		}
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

// runningTemplate starts a template's guest (its configuration on a disk,
// as a template's VM has it) whose one container, template-0, runs script,
// and waits until it runs.
func runningTemplate(t *testing.T, script string) (*guestchannel.PodSpec, *guesttest.Guest) {
	t.Helper()
	tmpl := image.Spec("tmpl", "Never", 30, nil, []guestchannel.Container{sh("template-0", script)})
	tmpl.Template = true
	g := guest(t, tmpl, guesttest.Options{ConfigDisk: true})
	g.Host.Wait("template-0 running", wait, running("template-0"))
	return tmpl, g
}
