package netconfig

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/record"
)

// ReasonNamespaceNotRegistered refuses pass-through data in a namespace no
// management application registered.
const ReasonNamespaceNotRegistered = "NamespaceNotRegistered"

// ErrNamespaceNotRegistered is returned (wrapped) for data in an
// unregistered namespace.
var ErrNamespaceNotRegistered = errors.New("namespace not registered")

// onDataRegister registers a pass-through namespace. Registering again
// updates the owner and description.
func (s *Service) onDataRegister(ctx context.Context, _ *bus.Message, p *events.NetworkDataRegisterRequested) error {
	annotate(ctx, attribute.String("network.data.namespace", p.Namespace))
	_, err := s.spaces.Upsert(ctx, events.NetworkDataNamespacesKey, func(r *events.NetworkDataNamespaces, _ bool) error {
		if r.Namespaces == nil {
			r.Namespaces = map[string]events.NetworkDataNamespace{}
		}
		prev, had := r.Namespaces[p.Namespace]
		if had && prev.Owner == p.Owner && prev.Description == p.Description {
			return record.ErrUnchanged
		}
		at := time.Now().UTC()
		if had {
			at = prev.RegisteredAt
		}
		r.Namespaces[p.Namespace] = events.NetworkDataNamespace{Owner: p.Owner, Description: p.Description, RegisteredAt: at}
		r.UpdatedAt = time.Now().UTC()
		return nil
	})
	return err
}

// registered refuses a namespace nobody registered: the request is
// dead-lettered with the reason, since no retry makes it valid.
func (s *Service) registered(ctx context.Context, namespace string) error {
	r, _, err := s.spaces.Get(ctx, events.NetworkDataNamespacesKey)
	if err != nil {
		return err
	}
	if r == nil || r.Namespaces == nil {
		return bus.Permanent(bus.WithReason(ReasonNamespaceNotRegistered, fmt.Errorf("namespace %s: %w (no namespace is registered)", namespace, ErrNamespaceNotRegistered)))
	}
	if _, ok := r.Namespaces[namespace]; !ok {
		return bus.Permanent(bus.WithReason(ReasonNamespaceNotRegistered, fmt.Errorf("namespace %s: %w", namespace, ErrNamespaceNotRegistered)))
	}
	return nil
}

// onDataSet attaches <namespace>/<key> to an object. The value is kept in
// KV net-data, where the host agents pick it up and hand it, with what the
// object inherits, to the module registered for the namespace.
func (s *Service) onDataSet(ctx context.Context, _ *bus.Message, p *events.NetworkDataSetRequested) error {
	annotate(ctx, attribute.String("network.data.scope", p.Scope.String()), attribute.String("network.data.key", p.Namespace+"/"+p.Key))
	if err := s.registered(ctx, p.Namespace); err != nil {
		return err
	}
	k := p.Namespace + "/" + p.Key
	_, err := s.data.Upsert(ctx, events.NetworkDataKey(p.Scope), func(r *events.NetworkDataRecord, _ bool) error {
		if v, ok := r.Values[k]; ok && v == p.Value {
			return record.ErrUnchanged
		}
		if r.Values == nil {
			r.Values = map[string]string{}
		}
		r.Scope, r.Values[k], r.UpdatedAt = p.Scope, p.Value, time.Now().UTC()
		return nil
	})
	return err
}

// onDataRemove removes <namespace>/<key> from an object. A record left
// empty stays (deleting it could lose a value set at the same time).
func (s *Service) onDataRemove(ctx context.Context, _ *bus.Message, p *events.NetworkDataRemoveRequested) error {
	annotate(ctx, attribute.String("network.data.scope", p.Scope.String()), attribute.String("network.data.key", p.Namespace+"/"+p.Key))
	if err := s.registered(ctx, p.Namespace); err != nil {
		return err
	}
	k := p.Namespace + "/" + p.Key
	_, err := s.data.Mutate(ctx, events.NetworkDataKey(p.Scope), func(r *events.NetworkDataRecord) error {
		if _, ok := r.Values[k]; !ok {
			return record.ErrUnchanged
		}
		delete(r.Values, k)
		r.UpdatedAt = time.Now().UTC()
		return nil
	})
	if errors.Is(err, record.ErrNotFound) {
		return nil
	}
	return err
}
