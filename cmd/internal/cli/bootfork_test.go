package cli

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/podvm/qemu"
	"github.com/podvisor/podvisor/podvm/qemutest"
)

// TestBootImageForkedChildTakesOverTheTemplate boots the image as a pod VM
// template (a template's spec, its channel on a network serial port to the
// concentrator), then forks it as an instant clone does: the parent's
// devices go on in a second QEMU that maps the parent's memory
// copy-on-write, as VMFork's children do, with a copy of its ephemeral disk
// and guestinfo of its own (a pod's spec), and its second serial port
// connects to the concentrator anew. The child's agent, resumed inside the
// template's pod, reads its configuration again, greets as the pod and runs
// the pod's container under the pod's hostname, reported through the
// concentrator, with logs and exec; the parent stays frozen as the
// template (its memory is the child's), its QEMU still there, never taken
// over.
func TestBootImageForkedChildTakesOverTheTemplate(t *testing.T) {
	qemutest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	r := startSerialRig(t)

	const tmplName = "pv-template-boot"
	tmpl := r.spec(tmplName, events.TemplateNamespace, tmplName, "echo template; exec sleep 3600")
	tmpl.Template = true
	// The concentrator hands a template's line to the agent of the host its
	// record names, as the provisioner records it.
	var placed events.PodTemplatePlacement
	placed.Name, placed.Shape.Host = tmplName, rigHost
	putRecord(t, ctx, r.bus, events.BucketPodTemplates, tmplName, placed)
	dir := t.TempDir()
	disks := qemutest.MakeDisks(t, dir, r.guestinfo(t, tmpl, "42-template"))
	// A vmxnet3 card, as a pod VM's, on QEMU's user network (qemu.Card, a
	// plain PCI card): the template's spec configures no network, a
	// child's its own card's address. `podvisor bench --qemu-pairs` boots
	// and forks the same machines, its channel a qemu.Line.
	card := qemu.Card
	booted := time.Now()
	parent := qemutest.Boot(t, ctx, dir, disks, append(r.port(), card("00:50:56:00:00:01")...)...)
	eventuallyWithin(t, 4*time.Minute, "the template's container reported running", r.running(t, tmplName))
	boot := time.Since(booted)

	const uid = "5e1c9b0d-boot-forked"
	r.podRecord(t, ctx, uid, "forked")
	pod := r.spec(uid, "default", "forked", "read h < /proc/sys/kernel/hostname; echo forked on $h; exec sleep 3600")
	// The child's card has an address of its own (vSphere gives an instant
	// clone's cards new ones); the agent configures it by that address.
	pod.NICs = []guestchannel.NIC{{Network: "pods", MAC: "00:50:56:00:00:02", IP: "10.244.7.5", Prefix: 24}}
	start := time.Now()
	child := parent.Fork(t, ctx, t.TempDir(), r.guestinfo(t, pod, "42-forked"), append(r.port(), card("00:50:56:00:00:02")...)...)
	resumed := time.Since(start)
	eventuallyWithin(t, 2*time.Minute, "the child's container reported running", r.running(t, uid))
	fork := time.Since(start)
	t.Logf("QEMU TCG, reported through the concentrator: boot to running %.1f s (the template), fork to running %.1f s, %.1fx "+
		"(of which QEMU's save and restore, the devices' state with 512 MiB of memory shared, %.1f s; the child's takeover to its pod reported running %.1f s)",
		boot.Seconds(), fork.Seconds(), boot.Seconds()/fork.Seconds(), resumed.Seconds(), (fork - resumed).Seconds())

	state := r.cliState(t)
	eventuallyWithin(t, 30*time.Second, "podvisor logs forked", func() bool {
		out, _, code := run(t, state, "", "logs", "forked")
		return code == 0 && out == "forked on forked\n"
	})
	// The pod shares the guest's network: its card has the child's address.
	script := "for f in /sys/class/net/*/address; do read a < $f; echo $a; done"
	if out, errOut, code := run(t, state, "", "exec", "forked", "--", "sh", "-c", script); code != 0 || !strings.Contains(out, "00:50:56:00:00:02") || strings.Contains(out, "00:50:56:00:00:01") {
		t.Errorf("exec in the child, its cards' addresses: exit %d, stdout %q, stderr %q; want the child's card's, not the template's", code, out, errOut)
	}
	select {
	case err := <-parent.Exited:
		t.Fatalf("the frozen parent's QEMU ended after the fork: %v", err)
	default:
	}
	childLog, _ := os.ReadFile(child.Console)
	parentLog, _ := os.ReadFile(parent.Console)
	if !strings.Contains(string(childLog), "forked: taken over") || strings.Contains(string(parentLog), "forked: taken over") {
		t.Errorf("want the child, and only the child, taken over; child's console:\n%s\nparent's console:\n%s", childLog, parentLog)
	}
}
