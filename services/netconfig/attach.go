package netconfig

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig/ipam"
	"github.com/podvisor/podvisor/shared/bus"
)

// Reasons of pod.network.failed.
const (
	ReasonNetworkNotFound    = "NetworkNotFound"
	ReasonNotInScope         = events.ReasonNotInScope
	ReasonNotRealizedOnHost  = events.ReasonNotRealizedOnHost
	ReasonAddressesExhausted = "AddressesExhausted"
	ReasonAddressingFailed   = "AddressingFailed"
)

// ReasonAttachFailed is the reason of a pod.network.failed published when
// an attach kept failing for a reason a retry could have fixed, until the
// deliveries ran out.
const ReasonAttachFailed = "AttachFailed"

// onPodAccepted learns a pod's networks, so that pod.scheduled need not read
// the pod record.
func (s *Service) onPodAccepted(_ context.Context, _ *bus.Message, p *events.PodAccepted) error {
	nets := p.Networks
	if len(nets) == 0 {
		nets = events.PodNetworks(&p.Pod)
	}
	s.podNets.Store(p.UID, nets)
	return nil
}

// onPodScheduled attaches the pod's networks on its host.
func (s *Service) onPodScheduled(ctx context.Context, m *bus.Message, p *events.PodScheduled) error {
	annotate(ctx, attribute.String("pod", events.PodKey(p.Namespace, p.Name)), attribute.String("pod.uid", p.UID), attribute.String("host", p.Host))
	return s.attach(ctx, m, p)
}

// onPodDeleted frees a deleted pod's addresses.
func (s *Service) onPodDeleted(ctx context.Context, _ *bus.Message, p *events.PodDeleted) error {
	annotate(ctx, attribute.String("pod", events.PodKey(p.Namespace, p.Name)), attribute.String("pod.uid", p.UID))
	var nets []string
	for _, ip := range p.IPs {
		nets = append(nets, ip.Network)
	}
	return s.release(ctx, p.UID, nets)
}

// onPodFailed frees a failed pod's addresses: a failed pod releases
// everything through the facts its owners consume; a re-created pod gets a
// fresh allocation.
func (s *Service) onPodFailed(ctx context.Context, _ *bus.Message, p *events.PodFailed) error {
	annotate(ctx, attribute.String("pod", events.PodKey(p.Namespace, p.Name)), attribute.String("pod.uid", p.UID))
	return s.release(ctx, p.UID, nil)
}

// attachError names the network an attach failed on, for pod.network.failed.
type attachError struct {
	network string
	err     error
}

func (e *attachError) Error() string { return e.err.Error() }
func (e *attachError) Unwrap() error { return e.err }

// attach makes sure each network of a scheduled pod is realized on its host
// (realizing it on demand when the host is in scope) and allocates the pod
// an address on each, then publishes pod.network.attached. A network that
// cannot be attached fails the attach with an error naming the network;
// the route's failure hook (attachFailed) tells the pod why when no retry
// can help or the retries ran out.
func (s *Service) attach(ctx context.Context, m *bus.Message, p *events.PodScheduled) error {
	cause := &m.Event
	nets, err := s.networksOf(ctx, p.Namespace, p.Name, p.UID)
	if err != nil {
		return err
	}
	var atts []events.NetworkAttachment
	for _, name := range nets {
		att, err := s.attachOne(ctx, cause, name, p)
		if err != nil {
			return &attachError{network: name, err: err}
		}
		atts = append(atts, att)
	}
	if stays, err := s.ownerStays(ctx, m, p, nets); err != nil || !stays {
		return err
	}
	return s.out.Emit(ctx, cause, &events.PodNetworkAttached{
		PodRef: events.PodRef{Namespace: p.Namespace, Name: p.Name, UID: p.UID}, Host: p.Host, Attachments: atts,
	}, bus.Distinct("attach"))
}

// recordNotFoundDeliveries is the delivery of a pod.scheduled from which a
// pod record not found is taken for a pod that is gone (ownerStays): with
// the default back-off, a few seconds of reading again first.
const recordNotFoundDeliveries = 4

// podDeleting is how soon an attach for a pod being deleted looks again.
const podDeleting = time.Second

// ownerStays checks, after allocating, that the pod still exists: a
// pod.scheduled handled late (by another replica, or redelivered) can
// allocate after pod.deleted released the pod's addresses, and nothing
// would free those. The provisioner announces pod.deleted before it
// removes the record, so a pod whose deletion was requested is looked at
// again until its record is gone (or the deliveries run out, and
// attachFailed releases); a pod whose record is gone or belongs to a newer
// pod of that name has its addresses freed here and nothing attached.
//
// A record not found is read again on the next deliveries before it is
// taken for a pod that is gone: the read may have been answered by a KV
// replica that has not caught up with the record's creation (a NATS node
// back from a restart), and taking that for a gone pod would leave a live
// pod without its network for good.
func (s *Service) ownerStays(ctx context.Context, m *bus.Message, p *events.PodScheduled, nets []string) (bool, error) {
	e, err := s.pods.Get(ctx, events.PodRecordKey(p.Namespace, p.Name))
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, fmt.Errorf("read pod record %s/%s: %w", p.Namespace, p.Name, err)
	}
	if err != nil && m.Delivery < recordNotFoundDeliveries && !m.LastDelivery() {
		return false, fmt.Errorf("pod record %s/%s not found (a replica that lags, or the pod is gone): reading again",
			p.Namespace, p.Name)
	}
	if err == nil {
		var rec events.PodRecord
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			return false, fmt.Errorf("decode pod record %s/%s: %w", p.Namespace, p.Name, err)
		}
		if rec.UID == p.UID && rec.DeletionRequestedAt.IsZero() {
			return true, nil
		}
		if rec.UID == p.UID {
			return false, bus.RetryAfter(fmt.Errorf("pod %s/%s is being deleted: its addresses are freed once it is gone", p.Namespace, p.Name), podDeleting)
		}
	}
	if err := s.release(ctx, p.UID, nets); err != nil {
		return false, err
	}
	s.log.Info("pod gone before its attach finished: addresses freed", "pod", events.PodKey(p.Namespace, p.Name), "uid", p.UID)
	return false, nil
}

// attachFailed is the failure hook of pod.scheduled: it frees the addresses
// taken for the pod's other networks and publishes pod.network.failed with
// the reason.
func (s *Service) attachFailed(ctx context.Context, m *bus.Message, p *events.PodScheduled, err error) error {
	subject := events.PodKey(p.Namespace, p.Name)
	var ae *attachError
	network := ""
	if errors.As(err, &ae) {
		network = ae.network
	} else if nets, nerr := s.networksOf(ctx, p.Namespace, p.Name, p.UID); nerr == nil && len(nets) > 0 {
		network = nets[0]
	}
	msg := m.FailureMessage(err)
	reason := bus.ReasonOf(err, ReasonAttachFailed)
	m.Log.Info("pod network attachment failed", "pod", subject, "network", network, "host", p.Host, "reason", reason, "err", err)
	if rerr := s.release(ctx, p.UID, nil); rerr != nil {
		return rerr
	}
	if network == "" {
		network = "unknown"
	}
	return s.out.Emit(ctx, &m.Event, &events.PodNetworkFailed{
		PodRef: events.PodRef{Namespace: p.Namespace, Name: p.Name, UID: p.UID}, Host: p.Host, Network: network, Reason: reason, Message: msg,
	}, bus.Distinct("attach"))
}

// refused marks an attach failure no retry will fix, with its reason.
func refused(reason string, err error) error { return bus.Permanent(bus.WithReason(reason, err)) }

// attachOne attaches one network.
func (s *Service) attachOne(ctx context.Context, cause *event.Event, name string, p *events.PodScheduled) (att events.NetworkAttachment, err error) {
	ctx, sp := span(ctx, "netconfig attach",
		attribute.String("pod", events.PodKey(p.Namespace, p.Name)), attribute.String("pod.uid", p.UID),
		attribute.String("network", name), attribute.String("host", p.Host))
	defer func() {
		sp.SetAttributes(attribute.String("ip", att.IP), attribute.String("reason", bus.ReasonOf(err, "")))
		end(sp, err)
	}()
	// The common case, the network ready on the host, takes the network
	// shared: one record read, then the allocation. Otherwise the network
	// is realized on the host first, exclusively, and the attach tried again.
	// A version declared (or a delete begun) between the two finds the host
	// not ready again: realize again, a few times, then leave it to a retry.
	const rounds = 3
	for round := 0; ; round++ {
		att, retry, err := s.allocate(ctx, name, p)
		switch {
		case !retry:
			return att, err
		case round == rounds:
			return events.NetworkAttachment{}, fmt.Errorf("network %s on host %s: still changing after %d realizations; will retry", name, p.Host, rounds)
		}
		if err := s.ensureOnHost(ctx, cause, name, p.Host); err != nil {
			switch {
			case errors.Is(err, ErrNetworkNotFound):
				return events.NetworkAttachment{}, refused(ReasonNetworkNotFound, fmt.Errorf("network %s does not exist or has no applied version", name))
			case errors.Is(err, ErrNotInScope):
				return events.NetworkAttachment{}, refused(ReasonNotInScope, fmt.Errorf("host %s is not in the scope of network %s", p.Host, name))
			case errors.Is(err, ErrNotRealized):
				return events.NetworkAttachment{}, refused(ReasonNotRealizedOnHost, err)
			}
			return events.NetworkAttachment{}, bus.WithReason(ReasonNotRealizedOnHost, err)
		}
	}
}

// allocate gives the pod an address on the network if the network's
// current version is ready on the pod's host; retry says it is not (yet),
// and ensureOnHost should realize it first. It holds the network shared, so
// that a delete either sees this pod's address or runs before the network
// is used.
func (s *Service) allocate(ctx context.Context, name string, p *events.PodScheduled) (att events.NetworkAttachment, retry bool, err error) {
	defer s.uses.RLock(name)()
	rec, rev, err := s.store.get(ctx, name)
	if err != nil {
		return events.NetworkAttachment{}, false, err
	}
	if rec == nil || rec.Version == 0 || rec.Status == events.NetworkStatusDeleting {
		// Not found at all is decided by ensureOnHost, with its reason.
		return events.NetworkAttachment{}, true, nil
	}
	if st, err := s.store.hostState(ctx, name, p.Host); err != nil || !st.ReadyAt(rec.Version) {
		return events.NetworkAttachment{}, err == nil, err
	}
	pl, err := pool(rec)
	if err != nil {
		return events.NetworkAttachment{}, false, refused(ReasonAddressingFailed, err)
	}
	pl.Record = rev
	alloc, err := s.ipam.Allocate(ctx, pl, ipam.Owner{Namespace: p.Namespace, Name: p.Name, UID: p.UID, Host: p.Host})
	if errors.Is(err, ipam.ErrExhausted) {
		return events.NetworkAttachment{}, false, refused(ReasonAddressesExhausted, err)
	}
	if errors.Is(err, ipam.ErrReaddressing) {
		// Another replica is changing the network's addressing: read the
		// record again.
		return events.NetworkAttachment{}, true, nil
	}
	if err != nil {
		return events.NetworkAttachment{}, false, bus.WithReason(ReasonAddressingFailed, err)
	}
	s.recountSoon(name)
	dns, err := s.nameservers(ctx, name)
	if err != nil {
		return events.NetworkAttachment{}, false, bus.WithReason(ReasonAddressingFailed, err)
	}
	return events.NetworkAttachment{
		Network:      name,
		PortGroup:    events.PortGroupName(name),
		IP:           alloc.IP,
		PrefixLength: pl.Prefix.Bits(),
		Gateway:      rec.Spec.Gateway,
		MAC:          alloc.MAC,
		Nameservers:  dns,
	}, false, nil
}

// release frees the pod's addresses on the given networks and on every
// known network (a pod.deleted may not list them all), then refreshes the
// counts.
func (s *Service) release(ctx context.Context, uid string, nets []string) error {
	recs, err := s.store.list(ctx)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, r := range recs {
		nets = append(nets, r.Name)
	}
	for _, n := range nets {
		if seen[n] {
			continue
		}
		seen[n] = true
		ip, err := s.ipam.Release(ctx, n, uid)
		if err != nil {
			return err
		}
		if ip != "" {
			s.recountSoon(n)
		}
	}
	s.podNets.Delete(uid)
	return nil
}

// refreshIPsUsed recounts a network's addresses into its record. The count
// is taken after reading the record's revision, so of two concurrent
// refreshes the one that counted earlier loses the compare-and-set and
// counts again: the stored number is never older than the write.
func (s *Service) refreshIPsUsed(ctx context.Context, name string) error {
	_, err := s.store.update(ctx, name, func(r *events.NetworkRecord) (bool, error) {
		n, err := s.ipam.Count(ctx, name)
		if err != nil || r.IPsUsed == n {
			return false, err
		}
		r.IPsUsed = n
		return true, nil
	})
	return err
}

// podUnknownRetry is how soon an attach for a pod not known yet is tried
// again: the pod record is written before pod.accepted is published.
const podUnknownRetry = 500 * time.Millisecond

// networksOf returns a pod's networks: remembered from pod.accepted, else
// read from the provisioner's pod record. Neither yet is a transient error
// (the record is written before pod.accepted is published).
func (s *Service) networksOf(ctx context.Context, ns, name, uid string) ([]string, error) {
	if v, ok := s.podNets.Load(uid); ok {
		return v.([]string), nil
	}
	e, err := s.pods.Get(ctx, events.PodRecordKey(ns, name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, bus.RetryAfter(fmt.Errorf("pod %s/%s: %w: no pod.accepted seen and no pod record", ns, name, ErrPodUnknown), podUnknownRetry)
	}
	if err != nil {
		return nil, fmt.Errorf("read pod record %s/%s: %w", ns, name, err)
	}
	// Decoded leniently: it is the provisioner's record, read as a model.
	var rec events.PodRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, fmt.Errorf("decode pod record %s/%s: %w", ns, name, err)
	}
	if rec.UID != "" && rec.UID != uid {
		return nil, bus.RetryAfter(fmt.Errorf("pod %s/%s: %w: record has uid %s, event has %s", ns, name, ErrPodUnknown, rec.UID, uid), podUnknownRetry)
	}
	nets := rec.Networks
	if len(nets) == 0 {
		nets = events.PodNetworks(&rec.Pod)
	}
	return nets, nil
}

// recountInterval batches the recounts of IPsUsed: a listing of a network's
// addresses per attach, under the network's lock, made every attach wait for
// every other (measured: minutes for a few hundred pods); one recount per
// interval for all the attaches in it keeps the count a moment behind at most.
const recountInterval = 250 * time.Millisecond

// recountSoon asks recountLoop to refresh the network's IPsUsed and to
// give addresses freed on it to the services waiting for one.
func (s *Service) recountSoon(name string) {
	select {
	case s.countsDue <- name:
	default:
		// The queue is full of recounts already due; the periodic resync
		// recounts every network and serves the waiting services anyway.
	}
}

// recountLoop refreshes the IPsUsed of the networks named since its last
// pass, once each, every recountInterval, and gives their free addresses
// to the network services waiting for one (serveWaiting): every release
// of this process (pod, VM, orphan, service) names its network here, and
// the batch makes a burst of deletions one pass. A pass lost with the
// process is made by the resync.
func (s *Service) recountLoop(ctx context.Context) {
	t := time.NewTicker(recountInterval)
	defer t.Stop()
	due := map[string]bool{}
	for {
		select {
		case <-ctx.Done():
			return
		case n := <-s.countsDue:
			due[n] = true
		case <-t.C:
			for n := range due {
				if err := s.refreshIPsUsed(ctx, n); err != nil && !errors.Is(err, ErrNetworkNotFound) && ctx.Err() == nil {
					s.log.Warn("recount addresses", "network", n, "err", err)
					continue // stays due
				}
				if err := s.serveWaiting(ctx, n); err != nil && ctx.Err() == nil {
					s.log.Warn("serve network services waiting for an address", "network", n, "err", err)
					continue // stays due
				}
				delete(due, n)
			}
		}
	}
}
