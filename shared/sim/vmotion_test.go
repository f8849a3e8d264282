package sim_test

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/shared/servetest"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/vspc"
)

// proxyConcentrator stands in for the host agents' concentrator serving as
// the ports' proxy (vSPC): each host connection opens with the VMware
// telnet extension; a vMotion's target connection joins a line instead of
// making one.
type proxyConcentrator struct {
	addr          string
	lines, peered atomic.Int64
	hellos        chan proxyHello
}

type proxyHello struct {
	hello
	vm vspc.Identity
}

func listenProxyConcentrator(t *testing.T) *proxyConcentrator {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &proxyConcentrator{addr: ln.Addr().String(), hellos: make(chan proxyHello, 16)}
	p := &vspc.Proxy{}
	servetest.Accept(t, ln, func(nc net.Conn) {
		go func() {
			vc, err := p.Accept(nc)
			if errors.Is(err, vspc.ErrPeered) {
				c.peered.Add(1)
				return
			}
			if err != nil {
				return
			}
			c.lines.Add(1)
			conn := guestchannel.NewConn(vc)
			t.Cleanup(func() { conn.Close() })
			if conn.Send(guestchannel.TypeResync, "", nil) != nil {
				return
			}
			if m, ok := readHello(conn); ok {
				c.hellos <- proxyHello{hello: hello{msg: m, conn: conn}, vm: vc.Identity()}
			}
		}()
	})
	return c
}

// readHello reads a line until its hello, skipping what does not decode.
func readHello(conn *guestchannel.Conn) (guestchannel.Hello, bool) {
	for {
		env, err := conn.Receive()
		if errors.Is(err, guestchannel.ErrMalformedFrame) {
			continue
		}
		if err != nil {
			return guestchannel.Hello{}, false
		}
		var m guestchannel.Hello
		if env.Type == guestchannel.TypeHello && env.Decode(&m) == nil {
			return m, true
		}
	}
}

func (c *proxyConcentrator) next(t *testing.T, what string) proxyHello {
	t.Helper()
	select {
	case h := <-c.hellos:
		return h
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no hello at the concentrator within 30s", what)
	}
	return proxyHello{}
}

// serialPort is a pod VM's channel port backed by uri, through proxy when
// it is set.
func serialPort(uri, proxy string) types.BaseVirtualDeviceConfigSpec {
	b := &types.VirtualSerialPortURIBackingInfo{VirtualDeviceURIBackingInfo: types.VirtualDeviceURIBackingInfo{
		ServiceURI: uri, Direction: string(types.VirtualDeviceURIBackingOptionDirectionClient)}}
	if proxy != "" {
		b.ProxyURI, b.Direction = proxy, string(types.VirtualDeviceURIBackingOptionDirectionServer)
	}
	return &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: &types.VirtualSerialPort{
		VirtualDevice: types.VirtualDevice{Key: -600, UnitNumber: types.NewInt32(1), Backing: b,
			Connectable: &types.VirtualDeviceConnectInfo{StartConnected: true, Connected: true}},
		YieldOnPoll: true,
	}}
}

// vSphere vMotions a VM with a network serial port only through the port's
// proxy. The simulated hosts move such a port as ESXi does: the source
// host asks the proxy (VMOTION-BEGIN), the target's connection joins the
// line (VMOTION-PEER) and takes it over (VMOTION-COMPLETE). The proxy's line
// never ends, and the guest's agent answers on it from the new host. The
// host names the VM to the proxy. A VM whose port connects to a remote
// system directly is refused the vMotion, as vSphere refuses it.
func TestVMotionMovesANetworkSerialPortThroughItsProxy(t *testing.T) {
	d, _, image := agentGuests(t, 2)
	c := simtest.Client(t, d)
	ctx := context.Background()
	h1, h2 := d.Hosts()[0], d.Hosts()[1]
	chain := "sha256:" + strings.Repeat("v", 64)
	podVM := func(name string, port types.BaseVirtualDeviceConfigSpec) *object.VirtualMachine {
		vm, extents := simtest.CreatePodVM(t, c, d, simtest.PodVM{
			Name: "pv-" + name, Host: h1, NumCPUs: 1, MemoryMB: 256, Spec: forkSpec("uid-"+name, name, chain),
			Disks:   []simtest.PodVMDisk{{File: "ephemeral.vmdk", CapacityBytes: 64 << 20}, {File: "image.vmdk", CapacityBytes: 16 << 20, ReadOnly: true}},
			Devices: []types.BaseVirtualDeviceConfigSpec{port},
		})
		if err := os.WriteFile(extents[1], image, 0o600); err != nil {
			t.Fatal(err)
		}
		powerOn(t, vm)
		return vm
	}
	relocate := func(vm *object.VirtualMachine) error {
		task, err := vm.Relocate(ctx, types.VirtualMachineRelocateSpec{Host: &h2.Ref}, "")
		if err != nil {
			return err
		}
		return task.Wait(ctx)
	}

	conc := listenProxyConcentrator(t)
	mover := podVM("mover", serialPort("podvisor-channel", "telnet://"+conc.addr))
	first := conc.next(t, "power on")
	var props mo.VirtualMachine
	if err := mover.Properties(ctx, mover.Reference(), []string{"config.instanceUuid"}, &props); err != nil {
		t.Fatal(err)
	}
	if first.msg.PodUID != "uid-mover" || first.vm.Name != "pv-mover" || first.vm.ServiceURI != "podvisor-channel" ||
		vspc.NormalUUID(first.vm.VCUUID) != vspc.NormalUUID(props.Config.InstanceUuid) {
		t.Fatalf("the line says pod %q, its host names VM %+v; want uid-mover on pv-mover (instance uuid %s, service podvisor-channel)",
			first.msg.PodUID, first.vm, props.Config.InstanceUuid)
	}
	running(t, first.hello, "mover")

	if err := relocate(mover); err != nil {
		t.Fatalf("vMotion of a VM whose port has a proxy: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for conc.peered.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the target host's connection never joined the line")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The line goes on: its guest's agent answers a resync from the new
	// host's connection.
	if err := first.conn.Send(guestchannel.TypeResync, "", nil); err != nil {
		t.Fatalf("the line ended with the vMotion: %v", err)
	}
	got := make(chan guestchannel.Hello, 1)
	go func() {
		m, _ := readHello(first.conn)
		got <- m
	}()
	select {
	case m := <-got:
		if m.PodUID != "uid-mover" {
			t.Fatalf("after the vMotion the line answered %+v, want the mover's hello", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no hello on the line after the vMotion")
	}
	info, _ := d.Guests().Guest(mover.Reference().Value)
	if conc.lines.Load() != 1 || info.VM.Host != h2.Name || info.Connections != 1 {
		t.Fatalf("after the vMotion: %d lines at the proxy, guest on %s with %d connections; want the one line, on %s, connected",
			conc.lines.Load(), info.VM.Host, info.Connections, h2.Name)
	}

	direct := listenConcentrator(t)
	stuck := podVM("stuck", serialPort("tcp://"+direct.addr, ""))
	if h := direct.next(t, "power on"); h.msg.PodUID != "uid-stuck" {
		t.Fatalf("the direct port's line says %q", h.msg.PodUID)
	}
	err := relocate(stuck)
	if err == nil || !strings.Contains(err.Error(), "DisallowedMigrationDeviceAttached") {
		t.Fatalf("vMotion of a VM whose port connects directly: %v, want it refused", err)
	}
	if info, _ := d.Guests().Guest(stuck.Reference().Value); info.VM.Host != h1.Name {
		t.Errorf("the refused VM's guest is on %s, want %s", info.VM.Host, h1.Name)
	}
}
