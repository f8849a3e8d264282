package segment_test

import (
	"context"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/podvisor/podvisor/agent/privtest"
)

// inGuest runs f on a thread inside the network namespace of pid.
func inGuest(t *testing.T, pid int, f func() error) error {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.GetFromPid(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(err)
		}
	}()
	return f()
}

// A guest on a segment reaches the service port's address; a guest on
// another segment does not; two listeners share the address.
func TestServicePortAnswersItsSegmentOnly(t *testing.T) {
	privtest.Require(t, "bridges, veth pairs and network namespaces need CAP_NET_ADMIN")
	privtest.RequireTools(t, "unshare", "sleep")
	f := newFabric(t)
	for _, k := range []string{"pg-a", "pg-b"} {
		if _, err := f.Ensure(k); err != nil {
			t.Fatal(err)
		}
	}
	svcAddr := netip.MustParsePrefix("10.99.0.53/24")
	sp, err := f.AddServicePort("pg-a", svcAddr)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var conns []net.PacketConn
	for range 2 {
		pc, err := sp.ListenPacket(ctx, 53)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		conns = append(conns, pc)
	}
	for _, pc := range conns {
		go func() {
			buf := make([]byte, 64)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo(append([]byte("echo "), buf[:n]...), from)
			}
		}()
	}

	guest := func(segmentKey, ip, mac string) int {
		pid := sleeper(t)
		hw, _ := net.ParseMAC(mac)
		p, err := f.AddPort(pid, "eth0", hw)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Plug(p, segmentKey); err != nil {
			t.Fatal(err)
		}
		if err := inGuest(t, pid, func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			a, _ := netlink.ParseAddr(ip)
			if err := netlink.AddrAdd(l, a); err != nil {
				return err
			}
			return netlink.LinkSetUp(l)
		}); err != nil {
			t.Fatal(err)
		}
		return pid
	}
	ask := func(pid int, timeout time.Duration) (string, error) {
		var answer string
		err := inGuest(t, pid, func() error {
			c, err := net.Dial("udp4", "10.99.0.53:53")
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(timeout))
			if _, err := c.Write([]byte("hi")); err != nil {
				return err
			}
			buf := make([]byte, 64)
			n, err := c.Read(buf)
			answer = string(buf[:n])
			return err
		})
		return answer, err
	}
	on := guest("pg-a", "10.99.0.5/24", "02:50:56:aa:00:05")
	off := guest("pg-b", "10.99.0.6/24", "02:50:56:aa:00:06")

	var got string
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if got, err = ask(on, 500*time.Millisecond); err == nil {
			break
		}
	}
	if got != "echo hi" {
		t.Fatalf("guest on the segment: %q, %v; want the service's echo", got, err)
	}
	if got, err := ask(off, time.Second); err == nil {
		t.Fatalf("guest on another segment got an answer %q", got)
	}

	if err := f.RemoveServicePort(sp); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(sp.Name); err == nil {
		t.Fatalf("service port %s still exists after removal", sp.Name)
	}
}
