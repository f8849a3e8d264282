package netconfig

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig/fabric"
)

// switchFor names the distributed switch that carries networks of a scope.
//
// A DVS port group appears on every member host of its switch, and port
// group names are unique per datacenter, so a network's scope can only be
// expressed by the membership of the switch its port group lives on. Every
// distinct scope therefore gets one switch, named after a hash of the scope
// as declared (clusters and hosts, sorted): networks with the same scope
// share it, and a host added to a cluster later joins the switch of every
// scope naming that cluster. The all-hosts scope uses the datacenter's
// existing switch.
func (s *Service) switchFor(scope events.NetworkScope) string {
	if scope.All() {
		return s.cfg.AllHostsSwitch
	}
	clusters := slices.Clone(scope.Clusters)
	hosts := slices.Clone(scope.Hosts)
	slices.Sort(clusters)
	slices.Sort(hosts)
	sum := sha256.Sum256([]byte("clusters=" + strings.Join(clusters, ",") + ";hosts=" + strings.Join(hosts, ",")))
	return "pv-dvs-" + hex.EncodeToString(sum[:4])
}

// inScope returns the hosts of the inventory a scope covers, sorted by name.
func inScope(scope events.NetworkScope, hosts []fabric.Host) []fabric.Host {
	var out []fabric.Host
	for _, h := range hosts {
		if scope.Includes(h.Name, h.Cluster) {
			out = append(out, h)
		}
	}
	return out
}

// shareHost reports whether some host of the inventory is in both scopes;
// two every-host scopes always share, even before any host is known.
func shareHost(a, b events.NetworkScope, hosts []fabric.Host) bool {
	if a.All() && b.All() {
		return true
	}
	for _, h := range hosts {
		if a.Includes(h.Name, h.Cluster) && b.Includes(h.Name, h.Cluster) {
			return true
		}
	}
	return false
}

func hostNames(hosts []fabric.Host) []string {
	out := make([]string, len(hosts))
	for i, h := range hosts {
		out[i] = h.Name
	}
	return out
}

// portGroupSpec is the port group a network version becomes. The
// description carries the network and version, so the version a host
// carries can be read back from vCenter alone.
//
// Properties inherit switch → network → port: a security setting the
// network turns on is set on the port group; one it leaves off is left
// inherited from the switch (whose default rejects everything), and the
// port group lets ports override it.
func portGroupSpec(name string, version int64, spec events.NetworkSpec) fabric.PortGroupSpec {
	pg := fabric.PortGroupSpec{
		Name:        events.PortGroupName(name),
		VLAN:        int32(spec.VLAN),
		MTU:         int32(spec.Properties.EffectiveMTU()),
		Description: describe(name, version, spec),
	}
	if spec.Properties.AllowPromiscuous {
		pg.AllowPromiscuous = ptr(true)
	}
	if spec.Properties.ForgedTransmits {
		pg.ForgedTransmits = ptr(true)
	}
	if spec.Properties.MACChanges {
		pg.MACChanges = ptr(true)
	}
	return pg
}

func ptr[T any](v T) *T { return &v }

// describe is the port group description: "podvisor network <name> version
// <n> mtu <m>". ParseDescription reads it back.
func describe(name string, version int64, spec events.NetworkSpec) string {
	return fmt.Sprintf("podvisor network %s version %d mtu %d", name, version, spec.Properties.EffectiveMTU())
}

// ParseDescription returns the network and version a podvisor port group
// description names.
func ParseDescription(d string) (network string, version int64, ok bool) {
	f := strings.Fields(d)
	if len(f) < 5 || f[0] != "podvisor" || f[1] != "network" || f[3] != "version" {
		return "", 0, false
	}
	v, err := strconv.ParseInt(f[4], 10, 64)
	if err != nil {
		return "", 0, false
	}
	return f[2], v, true
}

// overlaps reports whether two CIDRs share any address.
func overlaps(a, b string) bool {
	pa, err1 := netip.ParsePrefix(a)
	pb, err2 := netip.ParsePrefix(b)
	return err1 == nil && err2 == nil && pa.Overlaps(pb)
}
