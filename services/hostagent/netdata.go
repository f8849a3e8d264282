package hostagent

import (
	"context"
	"reflect"
	"strings"

	"github.com/podvisor/podvisor/events"
)

// DataModule is a host-side module of a management application: it
// receives the pass-through data of the namespace it is registered for
// (Deps.Modules), as it applies to this host.
type DataModule interface {
	// Deliver gets the namespace's effective data on this host. It is
	// called at start and again whenever any of it changes; an error is
	// logged and the delivery repeated on the next change.
	Deliver(ctx context.Context, data HostData) error
}

// DataModuleFunc adapts a function to DataModule.
type DataModuleFunc func(ctx context.Context, data HostData) error

// Deliver calls f.
func (f DataModuleFunc) Deliver(ctx context.Context, data HostData) error { return f(ctx, data) }

// HostData is one namespace's data on one host, per object the host
// carries, after inheritance: a port group has its switch's values unless
// it sets the key itself, a port its port group's. Keys are
// "<namespace>/<key>"; each value says which object set it.
type HostData struct {
	Host      string
	Namespace string
	// HostValues are the values set on the host itself.
	HostValues map[string]events.NetworkDataValue
	// Switches, PortGroups and Ports (events.PortName) the host carries,
	// by name.
	Switches   map[string]map[string]events.NetworkDataValue
	PortGroups map[string]map[string]events.NetworkDataValue
	Ports      map[string]map[string]events.NetworkDataValue
}

// hostData computes a namespace's data on this host from the view.
func (s *Service) hostData(namespace string) HostData {
	v := s.view
	v.mu.RLock()
	defer v.mu.RUnlock()
	rec := func(kind, name string) *events.NetworkDataRecord {
		r := v.data[events.NetworkDataKey(events.NetworkDataScope{Kind: kind, Name: name})]
		if r == nil {
			return nil
		}
		out := &events.NetworkDataRecord{Scope: r.Scope, Values: map[string]string{}}
		for k, val := range r.Values {
			if strings.HasPrefix(k, namespace+"/") {
				out.Values[k] = val
			}
		}
		return out
	}
	d := HostData{Host: s.cfg.Host, Namespace: namespace,
		HostValues: events.EffectiveNetworkData(rec(events.NetworkDataHost, s.cfg.Host)),
		Switches:   map[string]map[string]events.NetworkDataValue{},
		PortGroups: map[string]map[string]events.NetworkDataValue{},
		Ports:      map[string]map[string]events.NetworkDataValue{},
	}
	for network, carried := range v.carried {
		n := v.networks[network]
		if !carried || n == nil {
			continue
		}
		sw, pg := rec(events.NetworkDataSwitch, n.Switch), rec(events.NetworkDataPortGroup, n.PortGroup)
		if n.Switch != "" {
			d.Switches[n.Switch] = events.EffectiveNetworkData(sw)
		}
		d.PortGroups[n.PortGroup] = events.EffectiveNetworkData(sw, pg)
		for _, a := range v.allocs {
			if a.Network != network || a.Host != s.cfg.Host {
				continue
			}
			port := events.PortName(network, a.Namespace, a.Name)
			d.Ports[port] = events.EffectiveNetworkData(sw, pg, rec(events.NetworkDataPort, port))
		}
	}
	return d
}

// deliverData hands each registered module its namespace's data when it
// changed since the last delivery.
func (s *Service) deliverData(ctx context.Context) {
	for ns, m := range s.modules {
		d := s.hostData(ns)
		if last, ok := s.delivered[ns]; ok && reflect.DeepEqual(last, d) {
			continue
		}
		if err := m.Deliver(ctx, d); err != nil {
			s.log.Warn("pass-through data not delivered; will retry", "namespace", ns, "err", err)
			continue
		}
		s.delivered[ns] = d
	}
}
