package sim_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/sim/guest"
)

// After its first instant clone a VM keeps a standby guest booted from
// copies of its disks; the next instant clone resumes it instead of
// booting: the child's guest is the standby's very process, yet it runs
// the child's own spec under the child's identity (pod uid, VM uuid), on
// the child's own ephemeral disk (a clone of the parent's filesystem, a
// file of the child's), with the child's own card and cgroup. Another
// standby boots after it, and powering the parent off takes its standby
// and the standby's disk copies away.
func TestInstantCloneResumesAStandby(t *testing.T) {
	tv := newTemplateVM(t, "a", "pv-standby", "00:50:56:aa:bb:11")
	d, agents, c, parent, chain := tv.d, tv.agents, tv.c, tv.parent, tv.chain
	ctx := context.Background()
	powerOn(t, parent)
	running(t, agents.next(t, "template"), "template")
	pkey := parent.Reference().Value

	fork := func(name string) types.ManagedObjectReference {
		t.Helper()
		return instantClone(t, parent, name, forkSpec("uid-"+name, name, chain), nil)
	}
	waitStandby := func() guest.Info {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			if sb, ok := d.Guests().Standby(pkey); ok {
				return sb
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatal("no standby of the template within 30s")
		return guest.Info{}
	}

	if _, ok := d.Guests().Standby(pkey); ok {
		t.Fatal("a standby before the VM was ever instant-cloned")
	}
	first := fork("first")
	running(t, agents.next(t, "first"), "first")
	sb := waitStandby()
	// A standby waits at a low CPU weight; the VM that takes it over gets
	// the default one back.
	shares := func(g guest.Info) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(g.CgroupDirs["cpu"], "cpu.shares"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	if got := shares(sb); got != "128" {
		t.Fatalf("the standby's cpu.shares is %s, want 128", got)
	}

	began := time.Now()
	ref := fork("second")
	h := agents.next(t, "second")
	running(t, h, "second")
	t.Logf("instant clone to the child's container running, from a standby: %s", time.Since(began).Round(time.Millisecond))

	g, ok := d.Guests().Guest(ref.Value)
	if !ok {
		t.Fatal("the child runs no guest")
	}
	if g.PID != sb.PID || !g.Resumed {
		t.Fatalf("the child's guest is process %d, want the standby's %d (resumed, not booted)", g.PID, sb.PID)
	}
	if got := shares(g); got != "1024" {
		t.Fatalf("the child's cpu.shares is %s, want 1024", got)
	}
	var m mo.VirtualMachine
	if err := object.NewVirtualMachine(c.Client, ref).Properties(ctx, ref, []string{"config"}, &m); err != nil {
		t.Fatal(err)
	}
	if h.msg.PodUID != "uid-second" || h.msg.VMUUID != m.Config.InstanceUuid {
		t.Fatalf("the resumed guest says pod %q of VM %q, want uid-second of %s", h.msg.PodUID, h.msg.VMUUID, m.Config.InstanceUuid)
	}
	if !strings.HasSuffix(g.Cgroup, "/"+ref.Value) {
		t.Fatalf("the child's cgroup is %s, want it named after the VM %s", g.Cgroup, ref.Value)
	}
	disk := func(key, unit string) string {
		gi, ok := d.Guests().Guest(key)
		if !ok {
			t.Fatalf("VM %s runs no guest", key)
		}
		for _, dk := range gi.VM.Disks {
			if dk.Unit == unit {
				return dk.Path
			}
		}
		t.Fatalf("VM %s has no disk %s", key, unit)
		return ""
	}
	eph := disk(ref.Value, "scsi0:0")
	if eph == disk(pkey, "scsi0:0") || eph == disk(first.Value, "scsi0:0") || !strings.Contains(eph, "pv-second") {
		t.Fatalf("the child's ephemeral disk is %s: want a file of its own, in its directory", eph)
	}
	if !bytes.Equal(ext4UUID(t, eph), ext4UUID(t, disk(pkey, "scsi0:0"))) {
		t.Fatal("the child's ephemeral disk holds another filesystem than the template's")
	}
	if disk(ref.Value, "scsi0:1") != disk(pkey, "scsi0:1") {
		t.Fatal("the child's image disk is not the template's file")
	}
	devices, err := object.NewVirtualMachine(c.Client, ref).Device(ctx)
	if err != nil {
		t.Fatal(err)
	}
	card := devices.SelectByType((*types.VirtualEthernetCard)(nil))[0].(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
	ports := d.Guests().Ports(ref.Value)
	if len(ports) != 1 || !strings.EqualFold(ports[0].MAC.String(), card.MacAddress) {
		t.Fatalf("the resumed guest's cards: %v, want one with the child's MAC %s", ports, card.MacAddress)
	}

	// The next standby boots; the template's power-off takes it away with
	// its disk copies.
	next := waitStandby()
	if next.PID == sb.PID {
		t.Fatal("the standby taken over is offered again")
	}
	var copies []string
	for _, dk := range next.VM.Disks {
		if !dk.ReadOnly {
			copies = append(copies, dk.Path)
		}
	}
	task, err := parent.PowerOff(ctx)
	if err != nil || task.Wait(ctx) != nil {
		t.Fatalf("power off the template: %v", err)
	}
	if d.Guests().HasStandby(pkey) {
		t.Fatal("the template is off and still has a standby")
	}
	for _, p := range copies {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("standby disk copy %s left behind (%v)", filepath.Base(p), err)
		}
	}
	if _, ok := d.Guests().Guest(ref.Value); !ok {
		t.Fatal("the child stopped with its template")
	}
}
