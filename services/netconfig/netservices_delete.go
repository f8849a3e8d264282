package netconfig

import (
	"context"
	"fmt"
	"slices"

	"go.opentelemetry.io/otel/attribute"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// onServiceDeleteRequested removes a network service: every address it
// holds goes back to its network's pool, then the record goes, which the
// host agents watch (they stop serving it). Pods attached while it existed
// keep its address as their nameserver until they are re-created.
// Repeating it is harmless: a missing record is a done deletion. The
// record goes only at the revision whose addresses were given back: one
// written meanwhile (a service waiting for an address got one) is read
// again, and its addresses given back too, before it goes.
func (s *Service) onServiceDeleteRequested(ctx context.Context, _ *bus.Message, p *events.NetworkServiceDeleteRequested) error {
	annotate(ctx, attribute.String("network.service", p.Name))
	// DeleteIf judges every revision it reads, and deletes at that
	// revision: giving the addresses back there is what lets it go.
	var released error
	deleted, err := s.services.DeleteIf(ctx, p.Name, func(rec *events.NetworkServiceRecord) bool {
		released = s.releaseService(ctx, p.Name, rec)
		return released == nil
	})
	if err != nil {
		return err
	}
	if released != nil {
		return fmt.Errorf("delete network service %s: %w", p.Name, released)
	}
	if deleted {
		s.log.Info("network service deleted", "service", p.Name)
	}
	return nil
}

// releaseService gives back the service's address on every network its
// record names, profiled or not: a retry that took an address and failed
// before recording it (serveWaiting, configureService) leaves one on a
// network with no profile, which the orphan sweep would free only two
// sweeps after the record is gone. A release of an address the service
// does not hold is a no-op.
func (s *Service) releaseService(ctx context.Context, service string, rec *events.NetworkServiceRecord) error {
	networks := slices.Clone(rec.Spec.Networks)
	for _, prof := range rec.Profiles {
		networks = append(networks, prof.Network)
	}
	slices.Sort(networks)
	for _, n := range slices.Compact(networks) {
		ip, err := s.ipam.Release(ctx, n, serviceOwner(service).UID)
		if err != nil {
			return err
		}
		if ip != "" {
			s.recountSoon(n)
		}
	}
	return nil
}
