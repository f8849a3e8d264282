package netconfig

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
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
// again on the next delivery, so that its address goes back too.
func (s *Service) onServiceDeleteRequested(ctx context.Context, _ *bus.Message, p *events.NetworkServiceDeleteRequested) error {
	annotate(ctx, attribute.String("network.service", p.Name))
	rec, rev, err := s.services.Get(ctx, p.Name)
	if err != nil || rec == nil {
		return err
	}
	for _, prof := range rec.Profiles {
		if _, err := s.ipam.Release(ctx, prof.Network, serviceOwner(p.Name).UID); err != nil {
			return err
		}
		s.recountSoon(prof.Network)
	}
	if err := s.services.KV().Delete(ctx, p.Name, jetstream.LastRevision(rev)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("delete network service %s: %w", p.Name, err)
	}
	s.log.Info("network service deleted", "service", p.Name, "networks", len(rec.Profiles))
	return nil
}
