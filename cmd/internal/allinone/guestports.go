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
// worker's kubelet API.
type simGuestPorts struct {
	m *guest.Manager

	mu        sync.Mutex
	published map[string]*guest.Published // by VM name
	reached   map[string][]*guest.Reached // by VM name
}

var _ guestcluster.GuestPorts = (*simGuestPorts)(nil)

func newSimGuestPorts(m *guest.Manager) *simGuestPorts {
	return &simGuestPorts{m: m, published: map[string]*guest.Published{}, reached: map[string][]*guest.Reached{}}
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

func (p *simGuestPorts) Publish(ctx context.Context, vm string, port int) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pub := p.published[vm]; pub != nil && pub.Port == port {
		return pub.Addr, nil
	}
	k, err := p.key(ctx, vm)
	if err != nil {
		return "", err
	}
	pub, err := p.m.Publish(k, port)
	if err != nil {
		return "", err
	}
	if old := p.published[vm]; old != nil {
		old.Close()
	}
	p.published[vm] = pub
	return pub.Addr, nil
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

func (p *simGuestPorts) Release(vm string) {
	p.mu.Lock()
	pub, rs := p.published[vm], p.reached[vm]
	delete(p.published, vm)
	delete(p.reached, vm)
	p.mu.Unlock()
	if pub != nil {
		pub.Close()
	}
	for _, r := range rs {
		r.Close()
	}
}
