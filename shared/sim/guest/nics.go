package guest

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

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

// Reconfigure applies a reconfigure of a running VM to its guest, as a
// hypervisor does: each card whose MAC changed is replaced (unplugged from
// the guest and a new one with the new address plugged in its place, as
// eth<i>), every card is plugged into its segment now (a card moved to
// another port group, or connected, gets it), and a changed spec is
// written on the agent's updates descriptor (BootConfig.Updates). A
// native VM's guest gets its cards added or removed instead
// (hotPlugNICsLocked) and its data disks added, removed or grown
// (hotPlug, disks.go), the disks outside the manager's lock: that runs
// losetup. A VM without a running guest is left alone.
func (m *Manager) Reconfigure(vm VM) error {
	m.mu.Lock()
	_ = m.awaitStartLocked(vm.Key) // a guest booting is reconfigured once it runs
	g, ok := m.guests[vm.Key]
	if ok && g.disks != nil && vm.Native != nil {
		nicErr := m.hotPlugNICsLocked(g, vm)
		m.mu.Unlock()
		return errors.Join(nicErr, m.hotPlug(g, vm))
	}
	defer m.mu.Unlock()
	if !ok || vm.Native != nil || g.disks != nil {
		return nil
	}
	if len(vm.NICs) != len(g.vm.NICs) {
		return fmt.Errorf("guest of %s: %d cards, the VM has %d now: adding or removing a card of a running VM is not simulated", vm.Name, len(g.vm.NICs), len(vm.NICs))
	}
	var errs []error
	if m.cfg.Fabric != nil {
		for i, n := range vm.NICs {
			if i >= len(g.ports) || n.MAC == g.vm.NICs[i].MAC {
				continue
			}
			mac, err := net.ParseMAC(n.MAC)
			if err != nil {
				errs = append(errs, fmt.Errorf("NIC %d: MAC %q: %w", i, n.MAC, err))
				continue
			}
			if err := m.cfg.Fabric.RemovePort(g.ports[i]); err != nil {
				errs = append(errs, err)
				continue
			}
			p, err := m.cfg.Fabric.AddPort(g.cmd.Process.Pid, "eth"+strconv.Itoa(i), mac)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			g.ports[i] = p
		}
	}
	g.vm.NICs = slices.Clone(vm.NICs)
	m.plugLocked(g)
	if vm.Spec != g.vm.Spec && g.updates != nil {
		// A guest that does not read its updates must not stall the
		// hypervisor: the write gives up after a while.
		_ = g.updates.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := g.updates.WriteString(strings.ReplaceAll(vm.Spec, "\n", "") + "\n"); err != nil {
			errs = append(errs, fmt.Errorf("guest of %s: spec update: %w", vm.Name, err))
		} else {
			g.vm.Spec = vm.Spec
		}
	}
	return errors.Join(errs...)
}

// hotPlugNICsLocked applies a reconfigure of a running native VM to its
// guest's network cards, as vSphere's hot-plug does and a Linux guest sees
// it. A card added is a new interface in the guest's network namespace at
// once, with the card's MAC, under the lowest name eth<n> no interface
// of the guest has now (as the kernel names a new NIC; the others keep
// theirs, including names the guest's init gave them), plugged into its
// segment while the VM's host carries it, and down, without an address:
// a guest configures its network from its cloud-init data when it boots
// (cloud-init applies network configuration once per boot, and a card
// that arrives later is not in what it applied), so the address comes at
// the next boot. A card removed is gone from the guest. Cards are told
// apart by their MAC. Info.VM.NICs are the guest's cards afterwards: vm's,
// less any the fabric failed to add, plus any it failed to remove (tried
// again at the next reconfigure). The caller holds m.mu.
func (m *Manager) hotPlugNICsLocked(g *guest, vm VM) error {
	if m.cfg.Fabric == nil {
		g.vm.NICs = slices.Clone(vm.NICs)
		return nil
	}
	wanted := map[string]bool{}
	for _, n := range vm.NICs {
		wanted[strings.ToLower(n.MAC)] = true
	}
	log := m.log.With("vm", vm.Name)
	var errs []error
	// Removed first: the name a card leaves is free for a card added.
	kept := map[string]*segment.Port{}
	taken := map[string]bool{}
	var stuck []*segment.Port
	var stuckNICs []NIC
	for i, p := range g.ports {
		n := g.vm.NICs[i]
		if mac := strings.ToLower(n.MAC); wanted[mac] {
			kept[mac] = p
			taken[p.Guest] = true
			continue
		}
		if err := m.cfg.Fabric.RemovePort(p); err != nil {
			errs = append(errs, fmt.Errorf("NIC %s (%s): %w", p.Guest, n.MAC, err))
			stuck, stuckNICs = append(stuck, p), append(stuckNICs, n)
			taken[p.Guest] = true
			continue
		}
		log.Info("NIC hot-removed", "nic", p.Guest, "mac", n.MAC)
	}
	// The names taken are those the guest's interfaces have now, not
	// those the fabric gave them: the guest's init renames its cards (a
	// netplan set-name), so eth1 may be the card the fabric named eth0,
	// and eth0 free.
	if names, err := linkNames(g.cmd.Process.Pid); err != nil {
		log.Warn("the guest's interfaces cannot be listed; the names given at boot are taken", "err", err)
	} else {
		taken = names
	}
	var ports []*segment.Port
	var nics []NIC
	for _, n := range vm.NICs {
		mac := strings.ToLower(n.MAC)
		if p, ok := kept[mac]; ok {
			delete(kept, mac)
			ports, nics = append(ports, p), append(nics, n)
			continue
		}
		hw, err := net.ParseMAC(n.MAC)
		if err != nil {
			errs = append(errs, fmt.Errorf("NIC %q: %w", n.MAC, err))
			continue
		}
		p, err := m.addHotPort(g.cmd.Process.Pid, taken, hw)
		if err != nil {
			errs = append(errs, fmt.Errorf("NIC %s: %w", n.MAC, err))
			continue
		}
		name := p.Guest
		ports, nics = append(ports, p), append(nics, n)
		log.Info("NIC hot-added", "nic", name, "mac", n.MAC, "segment", n.Segment)
	}
	g.ports, g.vm.NICs = append(ports, stuck...), append(nics, stuckNICs...)
	m.plugLocked(g)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("guest of %s: %w", vm.Name, err)
	}
	return nil
}

// hotAddTries bounds the names tried for one card: each try after the
// first follows an interface the guest made meanwhile.
const hotAddTries = 8

// addHotPort adds a card to the running guest whose PID 1 is pid under the
// lowest name taken does not hold, and marks it taken. A name the guest
// took since its interfaces were listed (its init renames cards while it
// boots) is refused by the kernel (EEXIST): the next free name is tried.
func (m *Manager) addHotPort(pid int, taken map[string]bool, mac net.HardwareAddr) (*segment.Port, error) {
	var err error
	for range hotAddTries {
		name := lowestFreeNIC(taken)
		taken[name] = true
		var p *segment.Port
		if p, err = m.cfg.Fabric.AddPort(pid, name, mac); err == nil {
			return p, nil
		}
		if !errors.Is(err, syscall.EEXIST) {
			return nil, err
		}
	}
	return nil, err
}

// netlinkAt is a netlink handle in the network namespace of the process
// pid; the caller closes it.
func netlinkAt(pid int) (*netlink.Handle, error) {
	ns, err := netns.GetFromPid(pid)
	if err != nil {
		return nil, fmt.Errorf("network namespace of %d: %w", pid, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in the namespace of %d: %w", pid, err)
	}
	return h, nil
}

// linkNames are the names of the interfaces in the network namespace of
// the process pid.
func linkNames(pid int) (map[string]bool, error) {
	h, err := netlinkAt(pid)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("interfaces of %d: %w", pid, err)
	}
	names := map[string]bool{}
	for _, l := range links {
		names[l.Attrs().Name] = true
	}
	return names, nil
}

// lowestFreeNIC is the name the kernel gives a network card that arrives:
// eth<n> with the lowest n no interface has.
func lowestFreeNIC(taken map[string]bool) string {
	for i := 0; ; i++ {
		if name := "eth" + strconv.Itoa(i); !taken[name] {
			return name
		}
	}
}
