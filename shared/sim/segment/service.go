package segment

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ServicePort is an address of the hypervisor on a segment, the way a
// VMkernel NIC on a port group gives an ESXi host one: a veth pair whose
// host end is plugged into the segment's bridge and whose other end,
// carrying the address, lives in a network namespace of its own. Sockets
// opened with ListenPacket answer the segment's guests from that address,
// and nothing routes between the namespace and the machine or other
// segments, so serving a segment does not join it to anything.
type ServicePort struct {
	// Name is the host end's interface name.
	Name string
	// Addr is the address on the segment.
	Addr netip.Prefix
	ns   netns.NsHandle
}

// AddServicePort gives the segment's bridge a service port with addr.
func (f *Fabric) AddServicePort(key string, addr netip.Prefix) (*ServicePort, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, errors.New("segment: fabric closed")
	}
	bridge, ok := f.bridges[key]
	if !ok {
		return nil, fmt.Errorf("service port %s on segment %s: the segment has no bridge", addr, key)
	}
	name := f.name('s', f.next)
	f.next++
	removeStale(name)
	ns, err := newNamespace()
	if err != nil {
		return nil, fmt.Errorf("service port %s: %w", addr, err)
	}
	sp := &ServicePort{Name: name, Addr: addr, ns: ns}
	fail := func(err error) (*ServicePort, error) {
		_ = deleteLink(name)
		_ = ns.Close()
		return nil, fmt.Errorf("service port %s on segment %s: %w", addr, key, err)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns))}
	if err := netlink.LinkAdd(veth); err != nil {
		return fail(fmt.Errorf("add veth %s: %w", name, err))
	}
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fail(err)
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fail(err)
	}
	if err := netlink.LinkSetMaster(link, br); err != nil {
		return fail(fmt.Errorf("plug into %s: %w", bridge, err))
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fail(err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fail(err)
	}
	defer h.Close()
	for _, n := range []string{"lo", "eth0"} {
		l, err := h.LinkByName(n)
		if err != nil {
			return fail(err)
		}
		if n == "eth0" {
			ipnet := &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}
			if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipnet}); err != nil {
				return fail(fmt.Errorf("address %s: %w", addr, err))
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			return fail(err)
		}
	}
	f.services = append(f.services, sp)
	return sp, nil
}

// newNamespace makes an empty network namespace and returns a handle to
// it, leaving the calling thread where it was.
func newNamespace() (netns.NsHandle, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return netns.None(), err
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		return netns.None(), fmt.Errorf("new network namespace: %w", err)
	}
	if err := netns.Set(orig); err != nil {
		// The thread is stuck in the new namespace: do not give it back
		// to the runtime (it exits with the goroutine when still locked).
		runtime.LockOSThread()
		ns.Close()
		return netns.None(), fmt.Errorf("return to the original network namespace: %w", err)
	}
	return ns, nil
}

// ListenPacket opens a UDP socket on the port's address and port inside
// its namespace. SO_REUSEPORT lets several servers (one per simulated
// host carrying the segment) share the address, as every ESXi host of a
// distributed service answers locally.
func (sp *ServicePort) ListenPacket(ctx context.Context, port int) (net.PacketConn, error) {
	var pc net.PacketConn
	err := sp.in(func() error {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) }); err != nil {
				return err
			}
			return serr
		}}
		var err error
		pc, err = lc.ListenPacket(ctx, "udp4", netip.AddrPortFrom(sp.Addr.Addr(), uint16(port)).String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("service port %s: listen on udp %d: %w", sp.Addr, port, err)
	}
	return pc, nil
}

// in runs f on a thread inside the port's namespace: sockets created
// there stay in it.
func (sp *ServicePort) in(f func() error) error { return InNamespace(sp.ns, f) }

// InNamespace runs f on a thread inside network namespace ns and brings
// the thread back: sockets f creates stay in ns. A thread that cannot
// come back is never handed back to the runtime: it ends with the
// goroutine.
func InNamespace(ns netns.NsHandle, f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		return err
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		runtime.LockOSThread() // never hand a thread in the wrong namespace back
		return errors.Join(ferr, fmt.Errorf("return to the original network namespace: %w", err))
	}
	return ferr
}

// RemoveServicePort deletes a service port: its veth pair and, once its
// sockets are closed, its namespace.
func (f *Fabric) RemoveServicePort(sp *ServicePort) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, s := range f.services {
		if s == sp {
			f.services = append(f.services[:i], f.services[i+1:]...)
			break
		}
	}
	return sp.close()
}

func (sp *ServicePort) close() error {
	err := deleteLink(sp.Name)
	if sp.ns.IsOpen() {
		err = errors.Join(err, sp.ns.Close())
	}
	return err
}
