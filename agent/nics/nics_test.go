package nics_test

import (
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/nics"
	"github.com/podvisor/podvisor/agent/privtest"
)

// guestNS makes a network namespace standing for a guest, with the given
// cards (veth ends named eth<i> with the MACs) created there as a
// hypervisor would, and returns a handle working in it.
func guestNS(t *testing.T, macs ...string) *netlink.Handle {
	t.Helper()
	privtest.Require(t, "network namespaces and veth pairs need CAP_NET_ADMIN")
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	ns, err := netns.New()
	if serr := netns.Set(orig); serr != nil {
		t.Fatalf("back to the test's namespace: %v", serr) // the thread stays locked: it dies with the test
	}
	runtime.UnlockOSThread()
	orig.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() }) // the namespace and its cards go with its last reference
	for i, m := range macs {
		mac, err := net.ParseMAC(m)
		if err != nil {
			t.Fatal(err)
		}
		host := "nt" + strings.ReplaceAll(m, ":", "")[6:] + string(rune('a'+i))
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: "eth" + string(rune('0'+i)),
			PeerHardwareAddr: mac, PeerNamespace: netlink.NsFd(int(ns))}
		if err := netlink.LinkAdd(veth); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = netlink.LinkDel(veth) })
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func addrs(t *testing.T, h *netlink.Handle, name string) []string {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	list, err := h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range list {
		out = append(out, a.IPNet.String())
	}
	return out
}

func defaultGateway(t *testing.T, h *netlink.Handle) string {
	t.Helper()
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw != nil {
			return r.Gw.String()
		}
	}
	return ""
}

func TestConfigureMatchesByMACAndRoutesThroughTheFirstGateway(t *testing.T) {
	h := guestNS(t, "02:50:56:00:10:01", "02:50:56:00:10:02")
	// The spec lists the cards in another order than the guest names them:
	// the MAC decides.
	spec := []guestchannel.NIC{
		{Network: "b", MAC: "02:50:56:00:10:02", IP: "10.30.0.7", Prefix: 24, Gateway: "10.30.0.1"},
		{Network: "a", MAC: "02:50:56:00:10:01", IP: "10.20.0.5", Prefix: 16, Gateway: "10.20.0.1"},
	}
	for range 2 { // twice: the second changes nothing and fails nothing
		if err := nics.Configure(h, spec, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if got := addrs(t, h, "eth1"); len(got) != 1 || got[0] != "10.30.0.7/24" {
		t.Errorf("eth1 addresses %v, want [10.30.0.7/24]", got)
	}
	if got := addrs(t, h, "eth0"); len(got) != 1 || got[0] != "10.20.0.5/16" {
		t.Errorf("eth0 addresses %v, want [10.20.0.5/16]", got)
	}
	if gw := defaultGateway(t, h); gw != "10.30.0.1" {
		t.Errorf("default route via %q, want the first NIC's gateway 10.30.0.1", gw)
	}
	l, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		t.Error("eth0 is not up")
	}
}

func TestConfigureByOrderWithoutMAC(t *testing.T) {
	h := guestNS(t, "02:50:56:00:11:01")
	if err := nics.Configure(h, []guestchannel.NIC{{Network: "a", IP: "10.40.0.9", Prefix: 24}}, time.Second); err != nil {
		t.Fatal(err)
	}
	if got := addrs(t, h, "eth0"); len(got) != 1 || got[0] != "10.40.0.9/24" {
		t.Errorf("eth0 addresses %v, want [10.40.0.9/24]", got)
	}
}

func TestConfigureErrorsNameTheNIC(t *testing.T) {
	h := guestNS(t, "02:50:56:00:12:01")
	for _, tc := range []struct {
		name string
		nic  guestchannel.NIC
		want string
	}{
		{"absent card", guestchannel.NIC{Network: "a", MAC: "02:50:56:00:12:99", IP: "10.1.0.2", Prefix: 24}, "nics[0]: no interface has MAC 02:50:56:00:12:99"},
		{"bad prefix", guestchannel.NIC{Network: "a", MAC: "02:50:56:00:12:01", IP: "10.1.0.2", Prefix: 33}, "nics[0] (eth0): prefix 33 is not between 1 and 32"},
		{"gateway outside", guestchannel.NIC{Network: "a", MAC: "02:50:56:00:12:01", IP: "10.1.0.2", Prefix: 24, Gateway: "10.2.0.1"}, "nics[0] (eth0): gateway 10.2.0.1 is outside 10.1.0.2/24"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := nics.Configure(h, []guestchannel.NIC{tc.nic}, 100*time.Millisecond)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
