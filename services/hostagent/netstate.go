package hostagent

import (
	"context"
	"fmt"
	"slices"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// HostNetwork is what the host really has of the distributed port groups:
// the segments it carries, by port group key. On vSphere it is the host's
// switch proxy; in the simulated datacenter, the host's Linux segments
// (sim.HostSegments).
type HostNetwork interface {
	// Carried lists the port groups the host carries, key → name.
	Carried(ctx context.Context) (map[string]string, error)
	// Carry makes the host carry a port group; Drop stops it.
	Carry(ctx context.Context, key string) error
	Drop(ctx context.Context, key string) error
}

// ReasonCarryFailed and ReasonDropFailed name a port group the host could
// not bring to its desired state (network.host.applied failed).
const (
	ReasonCarryFailed = "CarryFailed"
	ReasonDropFailed  = "DropFailed"
)

// handleDesired applies this host's final desired network state
// (network.host.desired): it compares the port groups the state lists with
// those the host carries, carries the missing ones, drops the podvisor
// network port groups (pv-<network>) no longer listed, leaves the rest untouched, and
// reports what it changed with network.host.applied. Other hosts' states
// are not its business.
func (s *Service) handleDesired(ctx context.Context, m *bus.Message) error {
	v, err := events.Decode(m.Event.Type(), m.Event.Data())
	if err != nil {
		return bus.Permanent(err)
	}
	d, ok := v.(*events.NetworkHostDesired)
	if !ok || d.Host != s.cfg.Host {
		return nil
	}
	have, err := s.network.Carried(ctx)
	if err != nil {
		return fmt.Errorf("read the host's port groups: %w", err)
	}
	applied := &events.NetworkHostApplied{Host: s.cfg.Host, Digest: d.Digest}
	want := map[string]bool{}
	for _, pg := range d.PortGroups {
		want[pg.Key] = true
		if _, ok := have[pg.Key]; ok {
			applied.Unchanged++
			continue
		}
		if err := s.network.Carry(ctx, pg.Key); err != nil {
			applied.Failed = append(applied.Failed, events.PortGroupFailure{PortGroup: pg.PortGroup, Reason: ReasonCarryFailed, Message: err.Error()})
			continue
		}
		applied.Added = append(applied.Added, pg.PortGroup)
	}
	for key, name := range have {
		if want[key] || !events.IsNetworkPortGroup(name) {
			continue // listed, or not a network's
		}
		if err := s.network.Drop(ctx, key); err != nil {
			applied.Failed = append(applied.Failed, events.PortGroupFailure{PortGroup: name, Reason: ReasonDropFailed, Message: err.Error()})
			continue
		}
		applied.Removed = append(applied.Removed, name)
	}
	slices.Sort(applied.Added)
	slices.Sort(applied.Removed)
	if len(applied.Added)+len(applied.Removed)+len(applied.Failed) > 0 {
		s.log.Info("network state applied", "digest", d.Digest, "added", applied.Added, "removed", applied.Removed,
			"unchanged", applied.Unchanged, "failed", len(applied.Failed))
	}
	return s.bus.Emitter(Source).Emit(ctx, &m.Event, applied)
}
