package nics

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podvisor/podvisor/agent/guestchannel"
)

// Configure gives each NIC of the spec its address and the default route,
// in the network namespace h works in. A card the hypervisor has not
// presented yet is waited for until wait has passed (cards are normally
// all there at boot).
func Configure(h *netlink.Handle, nics []guestchannel.NIC, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	routed := false
	var errs []error
	for i, n := range nics {
		field := fmt.Sprintf("nics[%d]", i)
		link, err := find(h, i, n, deadline)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", field, err))
			continue
		}
		if err := configure(h, link, n, !routed); err != nil {
			errs = append(errs, fmt.Errorf("%s (%s): %w", field, link.Attrs().Name, err))
			continue
		}
		if n.Gateway != "" {
			routed = true
		}
	}
	return errors.Join(errs...)
}

// find returns the interface of the i-th NIC: the one with its MAC, else
// eth<i>.
func find(h *netlink.Handle, i int, n guestchannel.NIC, deadline time.Time) (netlink.Link, error) {
	var mac net.HardwareAddr
	if n.MAC != "" {
		var err error
		if mac, err = net.ParseMAC(n.MAC); err != nil {
			return nil, fmt.Errorf("mac %q: %w", n.MAC, err)
		}
	}
	name := "eth" + strconv.Itoa(i)
	for {
		links, err := h.LinkList()
		if err != nil {
			return nil, fmt.Errorf("list interfaces: %w", err)
		}
		for _, l := range links {
			a := l.Attrs()
			if mac != nil && bytes.Equal(a.HardwareAddr, mac) || mac == nil && a.Name == name {
				return l, nil
			}
		}
		if time.Now().After(deadline) {
			if mac != nil {
				return nil, fmt.Errorf("no interface has MAC %s", mac)
			}
			return nil, fmt.Errorf("no interface %s", name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func configure(h *netlink.Handle, link netlink.Link, n guestchannel.NIC, route bool) error {
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("up: %w", err)
	}
	if n.IP == "" {
		return nil
	}
	ip := net.ParseIP(n.IP)
	if ip == nil {
		return fmt.Errorf("ip %q is not an IP address", n.IP)
	}
	bits := 32
	if ip.To4() == nil {
		bits = 128
	}
	if n.Prefix <= 0 || n.Prefix > bits {
		return fmt.Errorf("prefix %d is not between 1 and %d", n.Prefix, bits)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(n.Prefix, bits)}}
	if err := h.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("address %s: %w", addr.IPNet, err)
	}
	if n.Gateway == "" || !route {
		return nil
	}
	gw := net.ParseIP(n.Gateway)
	if gw == nil {
		return fmt.Errorf("gateway %q is not an IP address", n.Gateway)
	}
	if !addr.IPNet.Contains(gw) {
		return fmt.Errorf("gateway %s is outside %s", gw, addr.IPNet)
	}
	r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw}
	if err := h.RouteReplace(r); err != nil {
		return fmt.Errorf("default route via %s: %w", gw, err)
	}
	return nil
}
