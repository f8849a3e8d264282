package netconfig

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig/ipam"
	"github.com/podvisor/podvisor/shared/bus"
)

// ServiceNamespace owns the addresses network services hold in IPAM, so
// they show as podvisor-system/<service> beside the pods and no pod gets
// them.
const ServiceNamespace = "podvisor-system"

// Reasons recorded on a network service that some of its networks could
// not get (serviceReason); when several fail, the first one's in spec order.
const (
	// ReasonServiceNetworkMissing: the network does not exist, has no
	// applied version yet, or is being deleted.
	ReasonServiceNetworkMissing = "NetworkMissing"
	// ReasonServiceNoAddress: the network's pool has no free address for
	// the service; it gets one once one is freed (serveWaiting).
	ReasonServiceNoAddress = "NoAddress"
)

// dnsPort is where the DNS service answers.
const dnsPort = 53

// serviceOwner is the IPAM owner of a service's addresses.
func serviceOwner(service string) ipam.Owner {
	return ipam.Owner{Namespace: ServiceNamespace, Name: service, UID: "service-" + service}
}

// onServiceDeclared registers a network service: a profile per network it
// serves, each with an address reserved in the network's pool. The host
// agents read the profiles (KV net-services) and serve the service on the
// hosts where the network is realized; pods attached afterwards get the
// address as their nameserver. A network that does not exist (yet) is
// recorded as such, one whose pool is full with NoAddress; either is
// configured later without a new declaration (serveWaiting).
func (s *Service) onServiceDeclared(ctx context.Context, _ *bus.Message, p *events.NetworkServiceDeclared) error {
	return s.configureService(ctx, p.Service, true)
}

// errServiceMoved: the record a retry read was deleted or declared anew
// meanwhile; the retry writes nothing over that change.
var errServiceMoved = errors.New("network service deleted or declared anew meanwhile")

// configureService takes the service's address on each network it names
// and records the outcome. A declaration creates or replaces the record;
// a retry (declared false, svc read from the record) writes only over a
// record that still holds svc's spec, so that it never brings back a
// deleted service or overwrites a newer declaration, and gives back the
// addresses it took that nothing records any more.
func (s *Service) configureService(ctx context.Context, svc events.NetworkService, declared bool) error {
	annotate(ctx, attribute.String("network.service", svc.Metadata.Name))
	var (
		profiles  []events.ServiceProfile
		problems  []string
		unapplied []string
		// reason is the first problem's (in spec order): a record has one
		// reason, and the message names every network's problem.
		reason string
	)
	for i, name := range svc.Spec.Networks {
		prof, err := s.profile(ctx, svc, name)
		if errors.Is(err, ipam.ErrReaddressing) {
			// Another replica is changing the network's addressing: the
			// address is taken from its next version.
			return bus.RetryAfter(fmt.Errorf("network service %s on network %s: %w", svc.Metadata.Name, name, err), time.Second)
		}
		if err != nil {
			why := serviceReason(err)
			if why == "" {
				return fmt.Errorf("network service %s on network %s: %w", svc.Metadata.Name, name, err)
			}
			if reason == "" {
				reason = why
			}
			problems = append(problems, fmt.Sprintf("spec.networks[%d]: %v", i, err))
			if errors.Is(err, errNoAppliedVersion) {
				unapplied = append(unapplied, name)
			}
			continue
		}
		profiles = append(profiles, prof)
	}
	slices.SortFunc(profiles, func(a, b events.ServiceProfile) int { return strings.Compare(a.Network, b.Network) })

	var dropped []string
	_, err := s.services.Upsert(ctx, svc.Metadata.Name, func(r *events.NetworkServiceRecord, exists bool) error {
		// The whole spec is compared, so that a field added to it later
		// counts as a new declaration too.
		if !declared && (!exists || !reflect.DeepEqual(r.Spec, svc.Spec)) {
			return errServiceMoved
		}
		dropped = dropped[:0] // judged anew at every revision read
		for _, old := range r.Profiles {
			if _, kept := slices.BinarySearchFunc(profiles, old.Network, func(p events.ServiceProfile, n string) int { return strings.Compare(p.Network, n) }); !kept {
				dropped = append(dropped, old.Network)
			}
		}
		// A network the old spec named and this one does not may hold an
		// address without a profile (a retry took it and failed before
		// recording it); nothing names it after this write, so it goes too.
		for _, n := range r.Spec.Networks {
			if !slices.Contains(svc.Spec.Networks, n) && !slices.Contains(dropped, n) {
				dropped = append(dropped, n)
			}
		}
		*r = events.NetworkServiceRecord{Name: svc.Metadata.Name, Spec: svc.Spec, Profiles: profiles, Status: events.NetworkServiceReady, UpdatedAt: time.Now().UTC()}
		if len(problems) > 0 {
			r.Status, r.Reason, r.Message = events.NetworkServicePartial, reason, strings.Join(problems, "; ")
			if len(profiles) == 0 {
				r.Status = events.NetworkServicePending
			}
		}
		return nil
	})
	if errors.Is(err, errServiceMoved) {
		return s.releaseUnrecorded(ctx, svc.Metadata.Name, profiles)
	}
	if err != nil {
		return err
	}
	// Networks no longer served give their service address back.
	for _, n := range dropped {
		ip, err := s.ipam.Release(ctx, n, serviceOwner(svc.Metadata.Name).UID)
		if err != nil {
			return err
		}
		if ip != "" {
			s.recountSoon(n)
		}
	}
	if len(problems) > 0 {
		s.log.Warn("network service partly configured", "service", svc.Metadata.Name, "problems", problems)
		// A network that got its version while this declaration was read
		// may have looked for services before the record above was
		// written (serveWaiting): look once more, so that neither side misses
		// the other.
		for _, name := range unapplied {
			if rec, _, err := s.store.get(ctx, name); err == nil && rec != nil && rec.Version > 0 && rec.Status != events.NetworkStatusDeleting {
				return bus.RetryAfter(fmt.Errorf("network service %s: network %s was applied meanwhile", svc.Metadata.Name, name), time.Second)
			}
		}
	}
	return nil
}

// serveWaiting gives the network's free addresses to the network
// services that name it and have no profile there: declared before the
// network had an applied version, or while its pool was full. It runs
// when the network gets a version, when addresses of the network change
// in this process (recountLoop: a pod, VM or service released one), and
// at every resync, which covers a release made by a replica that stopped
// before its pass. The services waiting longest (record written earliest)
// go first, until the pool is full again. Nothing is remembered between
// passes: the records are what waits, and a service's address is keyed by
// the service in IPAM (serviceOwner), so replicas passing at once give it
// one address.
func (s *Service) serveWaiting(ctx context.Context, network string) error {
	recs, err := s.serviceRecords(ctx)
	if err != nil {
		return err
	}
	var waiting []events.NetworkServiceRecord
	for _, r := range recs {
		if _, ok := r.Profile(network); !ok && slices.Contains(r.Spec.Networks, network) {
			waiting = append(waiting, r)
		}
	}
	slices.SortFunc(waiting, func(a, b events.NetworkServiceRecord) int {
		return cmp.Or(a.UpdatedAt.Compare(b.UpdatedAt), strings.Compare(a.Name, b.Name))
	})
	for _, r := range waiting {
		svc := events.NetworkService{APIVersion: events.APIVersion, Kind: events.KindNetworkService, Metadata: events.Meta{Name: r.Name}, Spec: r.Spec}
		// The address first, on this network alone: a full pool ends the
		// pass without rewriting the records still waiting.
		_, err := s.profile(ctx, svc, network)
		switch {
		case errors.Is(err, ipam.ErrAllocationUnderWay):
			continue // another replica is giving this service its address
		case serviceReason(err) != "":
			return nil // full again, or the network is not usable
		case err != nil:
			return fmt.Errorf("network service %s on network %s: %w", r.Name, network, err)
		}
		err = s.configureService(ctx, svc, false)
		switch {
		case errors.Is(err, errServiceMoved):
			// Declared anew meanwhile: a race with that service alone,
			// which must not fail the network's declaration or pass; the
			// next pass serves the new record if it still waits here.
			s.recountSoon(network)
		case err != nil:
			return fmt.Errorf("network service %s on network %s: %w", r.Name, network, err)
		}
	}
	return nil
}

// releaseUnrecorded gives back the addresses a retry took for a service
// on the networks its current record does not name (the service was
// deleted, or declared anew without them, while the retry ran). A network
// the current record names keeps the address: the service's allocation
// is keyed by the service, so its declaration has it or takes it.
func (s *Service) releaseUnrecorded(ctx context.Context, service string, profiles []events.ServiceProfile) error {
	cur, _, err := s.services.Get(ctx, service)
	if err != nil {
		return err
	}
	for _, p := range profiles {
		if cur != nil && slices.Contains(cur.Spec.Networks, p.Network) {
			continue
		}
		if _, err := s.ipam.Release(ctx, p.Network, serviceOwner(service).UID); err != nil {
			return err
		}
		s.recountSoon(p.Network)
	}
	if cur != nil {
		// Declared anew: its own configuration may have missed the
		// address this retry held; the next pass records it.
		return fmt.Errorf("network service %s: %w", service, errServiceMoved)
	}
	return nil
}

// serviceReason is the reason recorded for a network a service could not be
// configured on: the network is missing (not declared, no applied version,
// or going away) or its pool has no free address. Any other failure (a
// store error, a race with another replica) says nothing about the network
// and gets "": the declaration is retried rather than recorded with a
// reason that is not true.
func serviceReason(err error) string {
	switch {
	case errors.Is(err, errNoAppliedVersion), errors.Is(err, ipam.ErrNetworkDeleting):
		return ReasonServiceNetworkMissing
	case errors.Is(err, ipam.ErrExhausted):
		return ReasonServiceNoAddress
	}
	return ""
}

// errNoAppliedVersion: a service names a network that does not exist yet,
// or has no version applied; serveWaiting configures it once it has.
var errNoAppliedVersion = errors.New("does not exist or has no applied version")

// profile configures a service on one network: the address it answers on,
// taken from the network's pool once (a repeated declaration keeps it).
func (s *Service) profile(ctx context.Context, svc events.NetworkService, network string) (events.ServiceProfile, error) {
	defer s.uses.RLock(network)()
	rec, rev, err := s.store.get(ctx, network)
	if err != nil {
		return events.ServiceProfile{}, err
	}
	if rec == nil || rec.Version == 0 || rec.Status == events.NetworkStatusDeleting {
		return events.ServiceProfile{}, fmt.Errorf("network %q %w", network, errNoAppliedVersion)
	}
	pl, err := pool(rec)
	if err != nil {
		return events.ServiceProfile{}, err
	}
	pl.Record = rev
	alloc, err := s.ipam.Allocate(ctx, pl, serviceOwner(svc.Metadata.Name))
	if err != nil {
		return events.ServiceProfile{}, err
	}
	s.recountSoon(network)
	return events.ServiceProfile{
		Service: svc.Metadata.Name, Type: svc.Spec.Type, Network: network, PortGroup: events.PortGroupName(network),
		Address: alloc.IP, PrefixLength: pl.Prefix.Bits(), Port: dnsPort, Domain: events.DNSDomain,
	}, nil
}

// nameservers are the DNS service addresses configured on a network, for
// the pods that attach to it.
func (s *Service) nameservers(ctx context.Context, network string) ([]string, error) {
	recs, err := s.serviceRecords(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, r := range recs {
		if r.Spec.Type != events.NetworkServiceDNS {
			continue
		}
		if p, ok := r.Profile(network); ok {
			out = append(out, p.Address)
		}
	}
	return out, nil
}

// serviceRecords lists the network services for an attach. A listing is
// an ordered consumer created and removed on the server plus a read per
// record, and every attach needs it: it is kept with the bucket's last
// sequence and reused while that has not moved. Any write or delete in
// `net-services`, by any replica, moves it, so the answer is as current
// as a listing made at the same moment; the check is one stream-info
// request instead of the listing.
func (s *Service) serviceRecords(ctx context.Context) ([]events.NetworkServiceRecord, error) {
	st, err := s.services.KV().Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("network services: bucket status: %w", err)
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok || bs.StreamInfo() == nil {
		return s.services.List(ctx)
	}
	seq := bs.StreamInfo().State.LastSeq
	s.svcList.mu.Lock()
	if s.svcList.valid && s.svcList.seq == seq {
		recs := s.svcList.recs
		s.svcList.mu.Unlock()
		return recs, nil
	}
	s.svcList.mu.Unlock()
	recs, err := s.services.List(ctx)
	if err != nil {
		return nil, err
	}
	// Kept only if nothing was written while listing: the listing then
	// holds every write up to seq. Callers only read the slice.
	if st2, err := s.services.KV().Status(ctx); err == nil {
		if bs2, ok := st2.(*jetstream.KeyValueBucketStatus); ok && bs2.StreamInfo() != nil && bs2.StreamInfo().State.LastSeq == seq {
			s.svcList.mu.Lock()
			s.svcList.seq, s.svcList.recs, s.svcList.valid = seq, recs, true
			s.svcList.mu.Unlock()
		}
	}
	return recs, nil
}

// serviceList is the last listing of `net-services` and the bucket's last
// sequence when it was made (serviceRecords).
type serviceList struct {
	mu    sync.Mutex
	seq   uint64
	recs  []events.NetworkServiceRecord
	valid bool
}
