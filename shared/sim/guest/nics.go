package guest

import (
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"

	"github.com/podvisor/podvisor/shared/sim/segment"
)

// addPorts gives a just-started guest its NICs: a port per card, the guest
// end named eth<i> with the card's MAC in the guest's network namespace,
// plugged into its segment when the VM's host carries it. The launcher is
// still waiting, so the NICs are there before the agent's first
// instruction. It runs with or without m.mu (a boot runs outside it).
func (m *Manager) addPorts(g *guest) error {
	if m.cfg.Fabric == nil || len(g.vm.NICs) == 0 {
		return nil
	}
	for i, n := range g.vm.NICs {
		mac, err := net.ParseMAC(n.MAC)
		if err != nil {
			return fmt.Errorf("NIC %d: MAC %q: %w", i, n.MAC, err)
		}
		p, err := m.cfg.Fabric.AddPort(g.cmd.Process.Pid, "eth"+strconv.Itoa(i), mac)
		if err != nil {
			return err
		}
		g.ports = append(g.ports, p)
	}
	m.plugLocked(g)
	return nil
}

// removePorts deletes a stopped guest's NICs.
func (m *Manager) removePorts(g *guest) {
	for _, p := range g.ports {
		if err := m.cfg.Fabric.RemovePort(p); err != nil {
			m.log.Warn("remove NIC", "vm", g.vm.Name, "port", p.Name, "err", err)
		}
	}
	g.ports = nil
}

// plugLocked plugs each of a guest's NICs into its segment while the VM's
// host carries it and unplugs it otherwise. The caller holds m.mu (or owns
// g before it is listed).
func (m *Manager) plugLocked(g *guest) {
	m.segMu.Lock()
	carried := m.carried[g.vm.Host]
	m.segMu.Unlock()
	for i, p := range g.ports {
		key := g.vm.NICs[i].Segment
		if !carried[key] {
			key = ""
		}
		if err := m.cfg.Fabric.Plug(p, key); err != nil {
			m.log.Warn("plug NIC", "vm", g.vm.Name, "nic", p.Guest, "segment", key, "err", err)
		}
	}
}

// SetSegments tells the manager which segments (port group keys) each host
// carries now, and re-plugs every running guest's NICs accordingly: a
// network that leaves a host's scope takes its segment away from that
// host's guests, one that arrives gives it to them.
func (m *Manager) SetSegments(carried map[string]map[string]bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	next := map[string]map[string]bool{}
	for h, set := range carried {
		next[h] = maps.Clone(set)
	}
	// A guest booting now reads the new map or the old one; it is plugged
	// again under m.mu when it is listed.
	m.segMu.Lock()
	m.carried = next
	m.segMu.Unlock()
	for _, g := range m.guests {
		m.plugLocked(g)
	}
}

// Ports lists a running guest's NICs (nil when it has none or does not
// run).
func (m *Manager) Ports(key string) []*segment.Port {
	m.mu.Lock()
	defer m.mu.Unlock()
	g, ok := m.guests[key]
	if !ok {
		return nil
	}
	return append([]*segment.Port(nil), g.ports...)
}

// Carriers lists the hosts that carry a segment, sorted.
func (m *Manager) Carriers(key string) []string {
	m.segMu.Lock()
	defer m.segMu.Unlock()
	var out []string
	for h, set := range m.carried {
		if set[key] {
			out = append(out, h)
		}
	}
	slices.Sort(out)
	return out
}
