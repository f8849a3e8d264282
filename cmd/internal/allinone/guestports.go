package allinone

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/podvisor/podvisor/services/guestcluster"
	"github.com/podvisor/podvisor/shared/sim/guest"
)

// simGuestPorts is the path between this machine and native VMs' guests
// that the simulated hypervisor gives (guest.Manager's Publish and
// Reach): the guest cluster controller reaches a control-plane VM's API
// server through it, the VM's podvisor node reaches NATS, a worker VM's
// node reaches the API server and NATS, and the API server reaches the
// worker's kubelet API; a control plane of several VMs is reached through
// a balancer in front of their API servers (guest.Manager's Balance), and
// its etcd members reach each other.
type simGuestPorts struct {
	m *guest.Manager

	mu        sync.Mutex
	published map[string]map[int]*guest.Published // by VM name and port
	reached   map[string][]*guest.Reached         // by VM name
	balanced  map[string]*guest.Balanced          // by name
}

var _ guestcluster.GuestPorts = (*simGuestPorts)(nil)

func newSimGuestPorts(m *guest.Manager) *simGuestPorts {
	return &simGuestPorts{m: m, published: map[string]map[int]*guest.Published{}, reached: map[string][]*guest.Reached{},
		balanced: map[string]*guest.Balanced{}}
}

// key is the simulator's key of the VM named vm, once its guest runs.
func (p *simGuestPorts) key(ctx context.Context, vm string) (string, error) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if k, ok := p.m.KeyOf(vm); ok {
			return k, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("VM %s runs no guest: %w", vm, ctx.Err())
		case <-tick.C:
		}
	}
}

func (p *simGuestPorts) Publish(ctx context.Context, vm string, port int, at string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pub := p.published[vm][port]; pub != nil {
		return pub.Addr, nil
	}
	k, err := p.key(ctx, vm)
	if err != nil {
		return "", err
	}
	pub, err := p.m.PublishAt(k, port, at)
	if err != nil {
		return "", err
	}
	if p.published[vm] == nil {
		p.published[vm] = map[int]*guest.Published{}
	}
	p.published[vm][port] = pub
	return pub.Addr, nil
}

func (p *simGuestPorts) Balance(_ context.Context, name string, vms []string, port int, at string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if b := p.balanced[name]; b != nil && b.Port == port {
		b.Set(vms)
		return b.Addr, nil
	}
	b, err := p.m.BalanceAt(vms, port, at)
	if err != nil {
		return "", err
	}
	if old := p.balanced[name]; old != nil {
		old.Close()
	}
	p.balanced[name] = b
	return b.Addr, nil
}

func (p *simGuestPorts) Reach(ctx context.Context, vm string, port int, target string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.reached[vm] {
		if r.Port == port && r.Target == target {
			return nil
		}
	}
	k, err := p.key(ctx, vm)
	if err != nil {
		return err
	}
	// A port reached before leads to the new target from now on (a
	// worker VM made again is published at another address): the old
	// listener goes first, or the new one could not have the port.
	p.reached[vm] = slices.DeleteFunc(p.reached[vm], func(r *guest.Reached) bool {
		if r.Port == port {
			r.Close()
			return true
		}
		return false
	})
	r, err := p.m.Reach(k, port, target)
	if err != nil {
		return err
	}
	p.reached[vm] = append(p.reached[vm], r)
	return nil
}

func (p *simGuestPorts) Release(name string) {
	p.mu.Lock()
	pubs, rs, b := p.published[name], p.reached[name], p.balanced[name]
	delete(p.published, name)
	delete(p.reached, name)
	delete(p.balanced, name)
	p.mu.Unlock()
	for _, pub := range pubs {
		pub.Close()
	}
	if b != nil {
		b.Close()
	}
	for _, r := range rs {
		r.Close()
	}
}
