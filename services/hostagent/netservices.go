package hostagent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
)

// ServiceEndpoint is this host's address on a port group: on vSphere a
// VMkernel NIC, in the simulator a service port on the segment.
type ServiceEndpoint interface {
	ListenPacket(ctx context.Context, port int) (net.PacketConn, error)
	Close() error
}

// EndpointsFunc gives a host an address on a port group while the host
// carries it.
type EndpointsFunc func(ctx context.Context, host, portGroup string, addr netip.Prefix) (ServiceEndpoint, error)

// netView is what the host agent knows of the networks, from network-
// config's buckets: which networks this host carries, the DNS profiles,
// and the pods' addresses. It is rebuilt from watches, so records follow
// every change network-config makes.
type netView struct {
	mu       sync.RWMutex
	carried  map[string]bool                      // network → realized on this host
	profiles map[string][]events.ServiceProfile   // network → DNS profiles
	names    map[string]map[string]netip.Addr     // network → fqdn → address
	allocs   map[string]events.IPAllocation       // ipam key → allocation
	data     map[string]*events.NetworkDataRecord // net-data key → record
	networks map[string]*events.NetworkRecord     // network → record
	changed  chan struct{}
}

func newNetView() *netView {
	return &netView{carried: map[string]bool{}, profiles: map[string][]events.ServiceProfile{},
		names: map[string]map[string]netip.Addr{}, allocs: map[string]events.IPAllocation{},
		data: map[string]*events.NetworkDataRecord{}, networks: map[string]*events.NetworkRecord{},
		changed: make(chan struct{}, 1)}
}

func (v *netView) touch() {
	select {
	case v.changed <- struct{}{}:
	default:
	}
}

// podFQDN is the name a pod's address answers to.
func podFQDN(namespace, name string) string {
	return dns.Fqdn(strings.ToLower(name + "." + namespace + "." + events.DNSDomain))
}

// lookup answers a name on a network.
func (v *netView) lookup(network, fqdn string) (netip.Addr, bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	a, ok := v.names[network][strings.ToLower(fqdn)]
	return a, ok
}

// runNetworks watches network-config's buckets and keeps this host's
// network services running: a DNS server for each DNS profile of a network
// realized here, stopped when the network leaves the host or the profile
// goes; and the pass-through data delivered to the registered modules.
func (s *Service) runNetworks(ctx context.Context) error {
	v := s.view
	watch := func(bucket, pattern string, apply func(key string, value []byte)) error {
		kv, err := s.bus.KV(ctx, bucket)
		if err != nil {
			return fmt.Errorf("hostagent: %s bucket: %w", bucket, err)
		}
		w, err := kv.Watch(ctx, pattern)
		if err != nil {
			return fmt.Errorf("hostagent: watch %s: %w", bucket, err)
		}
		go func() {
			defer w.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case e, ok := <-w.Updates():
					if !ok {
						return
					}
					if e == nil {
						v.touch()
						continue
					}
					var val []byte
					if e.Operation() == jetstream.KeyValuePut {
						val = e.Value()
					}
					v.mu.Lock()
					apply(e.Key(), val)
					v.mu.Unlock()
					v.touch()
				}
			}
		}()
		return nil
	}
	if err := watch(events.BucketNetHosts, ">", func(key string, val []byte) {
		var a events.NetworkAvailability
		if val == nil || json.Unmarshal(val, &a) != nil {
			delete(v.carried, key)
			return
		}
		v.carried[a.Network] = slices.Contains(a.Hosts, s.cfg.Host)
	}); err != nil {
		return err
	}
	if err := watch(events.BucketNetServices, ">", func(key string, val []byte) {
		var r events.NetworkServiceRecord
		for n, ps := range v.profiles {
			v.profiles[n] = slices.DeleteFunc(ps, func(p events.ServiceProfile) bool { return p.Service == key })
		}
		if val == nil || json.Unmarshal(val, &r) != nil || r.Spec.Type != events.NetworkServiceDNS {
			return
		}
		for _, p := range r.Profiles {
			v.profiles[p.Network] = append(v.profiles[p.Network], p)
		}
	}); err != nil {
		return err
	}
	// Address keys only (<network>.<a-b-c-d>); the bindings have three tokens.
	if err := watch(events.BucketIPAM, "*.*", func(key string, val []byte) {
		if old, ok := v.allocs[key]; ok {
			delete(v.names[old.Network], podFQDN(old.Namespace, old.Name))
			delete(v.allocs, key)
		}
		var a events.IPAllocation
		if val == nil || json.Unmarshal(val, &a) != nil || a.Namespace == "" || a.Name == "" {
			return
		}
		ip, err := netip.ParseAddr(a.IP)
		if err != nil {
			return
		}
		v.allocs[key] = a
		if v.names[a.Network] == nil {
			v.names[a.Network] = map[string]netip.Addr{}
		}
		v.names[a.Network][podFQDN(a.Namespace, a.Name)] = ip
	}); err != nil {
		return err
	}
	if err := watch(events.BucketNetworks, ">", func(key string, val []byte) {
		var r events.NetworkRecord
		if val == nil || json.Unmarshal(val, &r) != nil {
			delete(v.networks, key)
			return
		}
		v.networks[r.Name] = &r
	}); err != nil {
		return err
	}
	if err := watch(events.BucketNetData, ">", func(key string, val []byte) {
		var r events.NetworkDataRecord
		if key == events.NetworkDataNamespacesKey || val == nil || json.Unmarshal(val, &r) != nil {
			delete(v.data, key)
			return
		}
		v.data[key] = &r
	}); err != nil {
		return err
	}

	servers := map[string]*dnsServer{} // profile key → running server
	defer func() {
		for _, srv := range servers {
			srv.stop()
		}
	}()
	// A failed attach is tried again on the next change or tick.
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		s.reconcileServices(ctx, servers)
		s.deliverData(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-v.changed:
		case <-tick.C:
		}
	}
}

// reconcileServices starts a DNS server for each profile of a network
// realized on this host and stops the others.
func (s *Service) reconcileServices(ctx context.Context, servers map[string]*dnsServer) {
	if s.endpoints == nil {
		return
	}
	v := s.view
	want := map[string]events.ServiceProfile{}
	v.mu.RLock()
	for network, ps := range v.profiles {
		if !v.carried[network] {
			continue
		}
		for _, p := range ps {
			want[p.String()] = p
		}
	}
	v.mu.RUnlock()
	for k, srv := range servers {
		if _, ok := want[k]; !ok {
			srv.stop()
			delete(servers, k)
			s.log.Info("network service stopped", "profile", k)
		}
	}
	for k, p := range want {
		if _, ok := servers[k]; ok {
			continue
		}
		srv, err := s.startDNS(ctx, p)
		if err != nil {
			s.log.Warn("network service not started; will retry", "profile", k, "err", err)
			continue
		}
		servers[k] = srv
		s.log.Info("network service serving", "profile", k)
	}
}

// dnsServer is one DNS profile served on this host.
type dnsServer struct {
	ep  ServiceEndpoint
	srv *dns.Server
}

func (d *dnsServer) stop() {
	_ = d.srv.Shutdown()
	_ = d.ep.Close()
}

// startDNS attaches this host to the profile's port group at the
// profile's address and answers A questions for
// <pod>.<namespace>.<domain> with the pod's address on that network; the
// server is authoritative for the domain and answers nothing else
// (REFUSED): it is not a recursive resolver.
func (s *Service) startDNS(ctx context.Context, p events.ServiceProfile) (*dnsServer, error) {
	addr, err := netip.ParseAddr(p.Address)
	if err != nil {
		return nil, fmt.Errorf("profile address: %w", err)
	}
	ep, err := s.endpoints(ctx, s.cfg.Host, p.PortGroup, netip.PrefixFrom(addr, p.PrefixLength))
	if err != nil {
		return nil, err
	}
	pc, err := ep.ListenPacket(ctx, p.Port)
	if err != nil {
		ep.Close()
		return nil, err
	}
	zone := dns.Fqdn(p.Domain)
	network := p.Network
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if len(q.Question) != 1 || !dns.IsSubDomain(zone, q.Question[0].Name) {
			m.Rcode = dns.RcodeRefused
			_ = w.WriteMsg(m)
			return
		}
		m.Authoritative = true
		qn := q.Question[0]
		ip, ok := s.view.lookup(network, qn.Name)
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
		case qn.Qtype == dns.TypeA || qn.Qtype == dns.TypeANY:
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: qn.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5},
				A:   ip.AsSlice(),
			})
		}
		_ = w.WriteMsg(m)
	})
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: handler, NotifyStartedFunc: func() { close(started) }}
	go func() {
		if err := srv.ActivateAndServe(); err != nil {
			s.log.Debug("dns server ended", "profile", p.String(), "err", err)
		}
	}()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		_ = srv.Shutdown()
		ep.Close()
		return nil, fmt.Errorf("dns server on %s did not start", p.Address)
	}
	return &dnsServer{ep: ep, srv: srv}, nil
}
