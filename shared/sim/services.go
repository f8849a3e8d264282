package sim

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vmware/govmomi/simulator"

	"github.com/podvisor/podvisor/shared/sim/segment"
)

// ServiceAttachment is a host's address on a port group's segment, the
// simulator's VMkernel NIC: the host agent serves a network service (DNS)
// from it to the guests on the segment.
type ServiceAttachment struct {
	d    *Datacenter
	key  serviceKey
	port *segment.ServicePort
	once sync.Once
}

// serviceKey is one address on one segment, shared by every host that
// attaches it (see AttachService).
type serviceKey struct {
	segment string
	addr    netip.Prefix
}

type sharedService struct {
	port  *segment.ServicePort
	users int
}

// AttachService gives host an address on the segment of a port group (by
// name) while the host carries it. Every host serving the same address on
// the same segment shares one service port, as a distributed service
// answers at one address on every host: their sockets share it
// (SO_REUSEPORT), and the port goes when the last one detaches.
func (d *Datacenter) AttachService(ctx context.Context, host, portGroup string, addr netip.Prefix) (*ServiceAttachment, error) {
	key, err := d.portGroupKey(ctx, portGroup)
	if err != nil {
		return nil, err
	}
	d.segMu.Lock()
	defer d.segMu.Unlock()
	if d.fabric == nil || d.guests == nil {
		return nil, fmt.Errorf("sim: attach %s to %s: the datacenter runs no guests, so no segments", addr, portGroup)
	}
	if !slices.Contains(d.guests.Carriers(key), host) {
		return nil, fmt.Errorf("sim: attach %s to %s: host %s does not carry the port group", addr, portGroup, host)
	}
	k := serviceKey{segment: key, addr: addr}
	if d.services == nil {
		d.services = map[serviceKey]*sharedService{}
	}
	s, ok := d.services[k]
	if !ok {
		sp, err := d.fabric.AddServicePort(key, addr)
		if err != nil {
			return nil, fmt.Errorf("sim: attach %s to %s: %w", addr, portGroup, err)
		}
		s = &sharedService{port: sp}
		d.services[k] = s
	}
	s.users++
	return &ServiceAttachment{d: d, key: k, port: s.port}, nil
}

// portGroupKey finds a distributed port group's key by name.
func (d *Datacenter) portGroupKey(ctx context.Context, name string) (string, error) {
	c := d.context(ctx)
	for _, e := range c.Map.All("DistributedVirtualPortgroup") {
		pg, ok := e.(*simulator.DistributedVirtualPortgroup)
		if !ok {
			continue
		}
		var n, key string
		c.WithLock(pg, func() { n, key = pg.Name, pg.Key })
		if n == name {
			return key, nil
		}
	}
	return "", fmt.Errorf("sim: port group %s not found", name)
}

// ListenPacket opens a UDP socket on the attachment's address.
func (a *ServiceAttachment) ListenPacket(ctx context.Context, port int) (net.PacketConn, error) {
	return a.port.ListenPacket(ctx, port)
}

// Close detaches the host; the service port goes with its last user.
func (a *ServiceAttachment) Close() error {
	var err error
	a.once.Do(func() {
		d := a.d
		d.segMu.Lock()
		defer d.segMu.Unlock()
		s, ok := d.services[a.key]
		if !ok {
			return
		}
		if s.users--; s.users == 0 {
			delete(d.services, a.key)
			if d.fabric != nil {
				err = d.fabric.RemoveServicePort(s.port)
			}
		}
	})
	return err
}
