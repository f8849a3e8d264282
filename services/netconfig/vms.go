package netconfig

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// Native VMs take their NICs' addresses from the same IPAM as pods, keyed
// by the VM's uid: vm.scheduled (one per generation) attaches every
// network of that generation on the VM's host and frees the addresses of
// networks the VM no longer has; vm.deleted frees them all; vm.migrated
// moves the port bindings to the target.

// vmNetworks reads the VM's record: its networks now and those it held.
func (s *Service) vmNetworks(ctx context.Context, ns, name, uid string) (want, held []string, err error) {
	e, err := s.vms.Get(ctx, events.VMRecordKey(ns, name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil, bus.RetryAfter(fmt.Errorf("VM %s/%s: %w: no record", ns, name, ErrPodUnknown), podUnknownRetry)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read VM record %s/%s: %w", ns, name, err)
	}
	var rec events.VMRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, nil, fmt.Errorf("decode VM record %s/%s: %w", ns, name, err)
	}
	if rec.UID != uid {
		return nil, nil, bus.Permanent(fmt.Errorf("VM %s/%s: record has uid %s, event has %s", ns, name, rec.UID, uid))
	}
	for _, n := range rec.Status.NICs {
		held = append(held, n.Network)
	}
	return rec.Spec.EffectiveNetworks(), held, nil
}

func (s *Service) onVMScheduled(ctx context.Context, m *bus.Message, e *events.VMScheduled) error {
	annotate(ctx, attribute.String("vm", e.ObjectKey()), attribute.String("vm.uid", e.UID), attribute.String("host", e.Host))
	nets, held, err := s.vmNetworks(ctx, e.Namespace, e.Name, e.UID)
	if err != nil {
		return err
	}
	as := &events.PodScheduled{PodRef: events.PodRef(e.VMRef), Host: e.Host, Cluster: e.Cluster}
	var atts []events.NetworkAttachment
	for _, name := range nets {
		att, err := s.attachOne(ctx, &m.Event, name, as)
		if err != nil {
			return &attachError{network: name, err: err}
		}
		atts = append(atts, att)
	}
	for _, n := range held {
		if slices.Contains(nets, n) {
			continue
		}
		if ip, err := s.ipam.Release(ctx, n, e.UID); err != nil {
			return err
		} else if ip != "" {
			s.recountSoon(n)
		}
	}
	return s.out.Emit(ctx, &m.Event, &events.VMNetworkAttached{VMRef: e.VMRef,
		Generation: e.Generation, Host: e.Host, Attachments: atts}, bus.Distinct("attach"))
}

// vmAttachFailed tells the VM which network failed and why.
func (s *Service) vmAttachFailed(ctx context.Context, m *bus.Message, e *events.VMScheduled, err error) error {
	network := "unknown"
	var ae *attachError
	if errors.As(err, &ae) {
		network = ae.network
	}
	msg := err.Error()
	if !bus.IsPermanent(err) {
		msg = fmt.Sprintf("gave up after %d attempts: %s", m.Delivery, msg)
	}
	return s.out.Emit(ctx, &m.Event, &events.VMNetworkFailed{VMRef: e.VMRef,
		Generation: e.Generation, Host: e.Host, Network: network, Reason: bus.ReasonOf(err, ReasonAttachFailed), Message: msg},
		bus.Distinct("attach"))
}

func (s *Service) onVMDeleted(ctx context.Context, _ *bus.Message, e *events.VMDeleted) error {
	annotate(ctx, attribute.String("vm", e.ObjectKey()), attribute.String("vm.uid", e.UID))
	return s.release(ctx, e.UID, nil)
}

func (s *Service) onVMMigrated(ctx context.Context, m *bus.Message, e *events.VMMigrated) error {
	if e.Failed() {
		return nil
	}
	annotate(ctx, attribute.String("vm", e.ObjectKey()), attribute.String("vm.uid", e.UID))
	recs, err := s.store.list(ctx)
	if err != nil {
		return err
	}
	for _, r := range recs {
		moved, err := s.ipam.Move(ctx, r.Name, e.UID, e.TargetHost)
		if err != nil {
			return err
		}
		if moved {
			if err := s.ensureOnHost(ctx, &m.Event, r.Name, e.TargetHost); err != nil && !errors.Is(err, ErrNotInScope) {
				return err
			}
		}
	}
	return nil
}
