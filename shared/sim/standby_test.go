package sim_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/shared/servetest"
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

// concentrator stands in for the host agents' concentrator: it takes the
// connections of network serial ports on loopback, asks each for its hello
// (resync) and passes the hello on with the line.
type concentrator struct {
	*hostAgents
	addr  string
	lines atomic.Int64 // connections accepted
}

func listenConcentrator(t *testing.T) *concentrator {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &concentrator{hostAgents: &hostAgents{hellos: make(chan hello, 16)}, addr: ln.Addr().String()}
	servetest.Accept(t, ln, func(nc net.Conn) {
		c.lines.Add(1)
		conn := guestchannel.NewConn(nc)
		t.Cleanup(func() { conn.Close() })
		go func() {
			if conn.Send(guestchannel.TypeResync, "", nil) != nil {
				return
			}
			for {
				env, err := conn.Receive()
				if errors.Is(err, guestchannel.ErrMalformedFrame) {
					continue // what a line carried before the agent opened it
				}
				if err != nil {
					conn.Close()
					return
				}
				var m guestchannel.Hello
				if env.Type == guestchannel.TypeHello && env.Decode(&m) == nil {
					c.hellos <- hello{msg: m, conn: conn}
					return
				}
			}
		}()
	})
	return c
}

// A VM whose channel is a network serial port (a pod VM on a vCenter) has
// standbys too. A standby's line stays cut until a VM takes it over: it is
// no VM's port yet, and would only be a silent line at the concentrator.
// The child of the next instant clone resumes the standby, its line
// connected from the child's host, and its agent greets the concentrator
// on the standby's serial device as the child.
func TestInstantCloneOfASerialPortVMResumesAStandby(t *testing.T) {
	conc := listenConcentrator(t)
	port := func(key int32) types.BaseVirtualDeviceConfigSpec {
		return &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: &types.VirtualSerialPort{
			VirtualDevice: types.VirtualDevice{Key: key, UnitNumber: types.NewInt32(1), Backing: &types.VirtualSerialPortURIBackingInfo{
				VirtualDeviceURIBackingInfo: types.VirtualDeviceURIBackingInfo{ServiceURI: "tcp://" + conc.addr, Direction: string(types.VirtualDeviceURIBackingOptionDirectionClient)}}},
			YieldOnPoll: true,
		}}
	}
	tv := newTemplateVM(t, "s", "pv-standby-serial", "00:50:56:aa:bb:21", port(-500))
	d, parent, chain := tv.d, tv.parent, tv.chain
	powerOn(t, parent)
	if h := conc.next(t, "template"); h.msg.PodUID != "uid-template" {
		t.Fatalf("the template's line says pod %q, want uid-template", h.msg.PodUID)
	} else {
		running(t, h, "template")
	}
	pkey := parent.Reference().Value
	fork := func(name string) types.ManagedObjectReference {
		t.Helper()
		return instantClone(t, parent, name, forkSpec("uid-"+name, name, chain), nil)
	}

	// The first clone boots (no standby yet), on a line of its own.
	fork("first")
	if h := conc.next(t, "first"); h.msg.PodUID != "uid-first" {
		t.Fatalf("the first child's line says pod %q, want uid-first", h.msg.PodUID)
	} else {
		running(t, h, "first")
	}
	var sb guest.Info
	deadline := time.Now().Add(30 * time.Second)
	for ok := false; !ok; sb, ok = d.Guests().Standby(pkey) {
		if time.Now().After(deadline) {
			t.Fatal("no standby of the template within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Prepared (its disks mounted) takes far longer than a connection on
	// loopback: a line that was not cut would be up by now.
	if sb.Connections != 0 || conc.lines.Load() != 2 {
		t.Fatalf("the standby's line: %d connections, %d lines at the concentrator; want it cut (0) and the template's and first child's lines only (2)",
			sb.Connections, conc.lines.Load())
	}

	ref := fork("second")
	h := conc.next(t, "second")
	if h.msg.PodUID != "uid-second" || h.msg.Namespace != "default" || h.msg.Name != "second" {
		t.Fatalf("the resumed child's line says pod %s/%s uid %s, want default/second uid-second", h.msg.Namespace, h.msg.Name, h.msg.PodUID)
	}
	running(t, h, "second")
	g, ok := d.Guests().Guest(ref.Value)
	if !ok {
		t.Fatal("the child runs no guest")
	}
	if g.PID != sb.PID || !g.Resumed || g.Connections != 1 {
		t.Fatalf("the child's guest is process %d (resumed %v, %d connections), want the standby's %d resumed with its line connected",
			g.PID, g.Resumed, g.Connections, sb.PID)
	}
	boot, err := os.ReadFile(filepath.Join(g.Dir, "boot.json"))
	if err != nil || !strings.Contains(string(boot), `"channel": "serial:/dev/pts/`) {
		t.Fatalf("the child's boot config (%v) does not name the standby's serial device as its channel:\n%s", err, boot)
	}
}
