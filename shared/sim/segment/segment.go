package segment

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
)

// maxIfName is the longest interface name Linux accepts (IFNAMSIZ - 1).
const maxIfName = 15

var fabrics atomic.Int64

// Fabric is the set of segments and ports of one simulated datacenter. It
// is safe for concurrent use.
type Fabric struct {
	id string

	mu      sync.Mutex
	next    int64
	bridges map[string]string // segment key → bridge name
	ports   map[string]*Port  // host end name → port
	// services are the service ports (AddServicePort).
	services []*ServicePort
	closed   bool
}

// Port is one virtual NIC: the host end of its veth pair and the segment it
// is plugged into ("" when unplugged).
type Port struct {
	// Name is the host end's interface name.
	Name string
	// Guest is the guest end's name inside the guest (eth0, …).
	Guest   string
	MAC     net.HardwareAddr
	segment string
}

// New returns an empty fabric. It needs CAP_NET_ADMIN.
func New() (*Fabric, error) {
	id := pad(strconv.FormatInt(int64(os.Getpid()), 36), 5) + pad(strconv.FormatInt(fabrics.Add(1)%(36*36), 36), 2)
	f := &Fabric{id: id, bridges: map[string]string{}, ports: map[string]*Port{}}
	if len(f.name('b', 36*36*36*36-1)) > maxIfName {
		return nil, fmt.Errorf("segment: interface names of %q would pass %d bytes", id, maxIfName)
	}
	return f, nil
}

func pad(s string, n int) string {
	if len(s) >= n {
		return s
	}
	return strings.Repeat("0", n-len(s)) + s
}

func (f *Fabric) name(kind byte, n int64) string {
	return string(kind) + f.id + strconv.FormatInt(n, 36)
}

// Bridge returns the bridge of a segment, "" when it has none.
func (f *Fabric) Bridge(key string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bridges[key]
}

// Segments lists the keys of the segments that exist, sorted.
func (f *Fabric) Segments() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, 0, len(f.bridges))
	for k := range f.bridges {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Ensure creates the segment's bridge (up, no address) when it has none.
func (f *Fabric) Ensure(key string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return "", errors.New("segment: fabric closed")
	}
	if b, ok := f.bridges[key]; ok {
		return b, nil
	}
	name := f.name('b', f.next)
	f.next++
	removeStale(name)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := netlink.LinkAdd(br); err != nil {
		return "", fmt.Errorf("segment %s: add bridge %s: %w", key, name, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		_ = netlink.LinkDel(br)
		return "", fmt.Errorf("segment %s: bridge %s up: %w", key, name, err)
	}
	f.bridges[key] = name
	return name, nil
}

// Remove deletes a segment's bridge; its ports stay, unplugged and down.
func (f *Fabric) Remove(key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	name, ok := f.bridges[key]
	if !ok {
		return nil
	}
	for _, p := range f.ports {
		if p.segment == key {
			if err := unplug(p); err != nil {
				return fmt.Errorf("segment %s: %w", key, err)
			}
		}
	}
	delete(f.bridges, key)
	return deleteLink(name)
}

// AddPort creates a NIC for the guest whose PID 1 is pid: a veth pair with
// the guest end, named guestName and carrying mac, in the guest's network
// namespace, and the host end here, unplugged and down.
func (f *Fabric) AddPort(pid int, guestName string, mac net.HardwareAddr) (*Port, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, errors.New("segment: fabric closed")
	}
	name := f.name('v', f.next)
	f.next++
	removeStale(name)
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: name},
		PeerName:         guestName,
		PeerHardwareAddr: mac,
		PeerNamespace:    netlink.NsPid(pid),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("NIC %s of guest %d: add veth %s: %w", guestName, pid, name, err)
	}
	p := &Port{Name: name, Guest: guestName, MAC: mac}
	f.ports[name] = p
	return p, nil
}

// Plug connects a port to a segment ("" unplugs it). A segment without a
// bridge leaves the port unplugged and says so.
func (f *Fabric) Plug(p *Port, key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.ports[p.Name]; !ok {
		return fmt.Errorf("port %s: %w", p.Name, os.ErrNotExist)
	}
	if key == p.segment {
		return nil
	}
	if key == "" {
		return unplug(p)
	}
	bridge, ok := f.bridges[key]
	if !ok {
		if err := unplug(p); err != nil {
			return err
		}
		return fmt.Errorf("port %s: segment %s has no bridge", p.Name, key)
	}
	link, err := netlink.LinkByName(p.Name)
	if err != nil {
		return fmt.Errorf("port %s: %w", p.Name, err)
	}
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("port %s: bridge %s: %w", p.Name, bridge, err)
	}
	if err := netlink.LinkSetMaster(link, br); err != nil {
		return fmt.Errorf("port %s: plug into %s: %w", p.Name, bridge, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("port %s: up: %w", p.Name, err)
	}
	p.segment = key
	return nil
}

// Segment is the segment a port is plugged into, "" when unplugged.
func (f *Fabric) Segment(p *Port) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return p.segment
}

// unplug takes a port off its bridge and down. The caller holds f.mu.
func unplug(p *Port) error {
	link, err := netlink.LinkByName(p.Name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			p.segment = ""
			return nil // its guest is gone, and the pair with it
		}
		return fmt.Errorf("port %s: %w", p.Name, err)
	}
	if err := netlink.LinkSetDown(link); err != nil {
		return fmt.Errorf("port %s: down: %w", p.Name, err)
	}
	if err := netlink.LinkSetNoMaster(link); err != nil {
		return fmt.Errorf("port %s: unplug: %w", p.Name, err)
	}
	p.segment = ""
	return nil
}

// RemovePort deletes a NIC (both ends of the pair).
func (f *Fabric) RemovePort(p *Port) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.ports, p.Name)
	return deleteLink(p.Name)
}

// Close removes every port and bridge of the fabric. It is safe to call
// twice.
func (f *Fabric) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	var errs []error
	for name := range f.ports {
		errs = append(errs, deleteLink(name))
	}
	for _, sp := range f.services {
		errs = append(errs, sp.close())
	}
	f.services = nil
	for _, name := range f.bridges {
		errs = append(errs, deleteLink(name))
	}
	f.ports, f.bridges = map[string]*Port{}, map[string]string{}
	return errors.Join(errs...)
}

// deleteLink deletes an interface; one already gone is fine (a veth goes
// with its guest's namespace).
func deleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("delete %s: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// removeStale deletes an interface left under a name this fabric is about
// to use, by an earlier process with the same id that died before its
// Close.
func removeStale(name string) { _ = deleteLink(name) }
