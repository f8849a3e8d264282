package hostagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// handleDelete asks the agent of a pod being deleted to stop its containers
// within the pod's grace period, and waits (bounded by the grace period plus
// StopSlack) for the agent's "stopped" before acknowledging. Another host's
// pod, or a pod whose record is gone, is not this agent's business:
// acknowledged at once. A pod of this host whose guest could not be told
// comes back while its grace period runs (stopForDelete).
func (s *Service) handleDelete(ctx context.Context, m *bus.Message, req *events.PodDeleteRequested) error {
	rec, err := s.deleteRecord(ctx, m, req)
	if rec == nil || err != nil || rec.Host != s.cfg.Host {
		return err
	}
	return s.stopForDelete(ctx, m, rec)
}

// deleteRecord is the record of the pod the delete m names; nil when it
// has none, one of another uid than the delete's, or one requested after
// the delete (PodRecord.RequestedAfter).
func (s *Service) deleteRecord(ctx context.Context, m *bus.Message, req *events.PodDeleteRequested) (*events.PodRecord, error) {
	ns := req.Namespace
	if ns == "" {
		ns = events.DefaultNamespace
	}
	rec, err := s.record(ctx, ns, req.Name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if req.UID != "" && req.UID != rec.UID {
		return nil, nil
	}
	if rec.RequestedAfter(m.StreamSeq) {
		s.log.Info("delete stored before the request of the pod named so now; it was about an earlier pod: nothing stopped",
			"pod", rec.Key(), "uid", rec.UID, "request", rec.RequestID, "delete_seq", m.StreamSeq)
		return nil, nil
	}
	return rec, nil
}

// stopForDelete stops the containers of rec's pod, being deleted, through
// its guest's channel here. When the guest could not be told (its channel
// not connected yet: a restarted host agent, whose guests dial again; the
// stop not written, or answered with an error) the delete comes back, and
// the stop is tried again, until the pod's grace period is over
// (retryStop). A channel that closes once the stop is sent is not tried
// again: the guest had it, or its VM is going away.
func (s *Service) stopForDelete(ctx context.Context, m *bus.Message, rec *events.PodRecord) error {
	deadline := stopDeadline(m, rec)
	pc := s.conn(rec.UID)
	if pc == nil {
		return s.retryStop(m, rec, deadline, fmt.Errorf("pod %s: %w", rec.Key(), ErrNotConnected))
	}
	grace := graceLeft(rec)
	stopped, err := s.stop(ctx, pc, grace)
	switch {
	case err == nil:
		pc.log.Info("stopped on delete", "grace", grace, "killed", stopped.Killed)
		return nil
	case errors.Is(err, errClosedAfterStop):
		pc.log.Info("stop on delete: the channel closed once the stop was sent", "grace", grace)
		return nil
	case ctx.Err() != nil:
		return err // the agent is shutting down: the delete goes to the next one
	}
	return s.retryStop(m, rec, deadline, fmt.Errorf("pod %s: stop: %w", rec.Key(), err))
}

// Retries of a delete whose guest could not be told to stop: the first
// after stopRetry, doubling up to maxStopRetry, never past the pod's grace
// period. A restarted host agent's guests dial again within a second or
// two, and a process serving every host adds its agents as soon as it has
// read the hosts.
const (
	stopRetry    = 500 * time.Millisecond
	maxStopRetry = 5 * time.Second
)

// retryStop is the outcome of a delete whose guest could not be told to
// stop (why): while the grace period runs (until deadline) and the record
// places the pod's VM on a host (this agent's, or one of its process's),
// the delete comes back after a short wait; past it, or without a VM
// (nothing runs the containers), or on the consumer's last delivery, it is
// acknowledged: the provisioner powers the VM off once the grace period
// (plus its margin) is over, whatever the guest heard.
func (s *Service) retryStop(m *bus.Message, rec *events.PodRecord, deadline time.Time, why error) error {
	log := s.log.With("pod", rec.Key(), "uid", rec.UID)
	left := time.Until(deadline)
	switch {
	case rec.VMRef == "" || rec.Host == "":
		log.Info("delete: the pod has no VM; nothing to stop", "why", why)
		return nil
	case left <= 0:
		log.Warn("delete: the containers could not be told to stop within the grace period; the VM's power-off ends them", "why", why)
		return nil
	case m != nil && m.LastDelivery():
		log.Warn("delete: the containers could not be told to stop, and this was the delete's last delivery; the VM's power-off ends them", "why", why)
		return nil
	}
	return bus.RetryAfter(why, min(retryDelay(m), left))
}

// retryDelay is the wait before the next delivery of m: stopRetry after
// the first, doubling up to maxStopRetry.
func retryDelay(m *bus.Message) time.Duration {
	n := uint64(1)
	if m != nil {
		n = max(m.Delivery, 1)
	}
	return min(stopRetry<<min(n-1, 8), maxStopRetry)
}

// stopDeadline is when the pod's grace period ends, after which a stop is
// not tried again: counted from the delete as the provisioner recorded it
// (DeletionRequestedAt: it powers the VM off at that plus the grace period
// and its margin), or, before it has, from when the stream stored the
// delete, earlier.
func stopDeadline(m *bus.Message, rec *events.PodRecord) time.Time {
	start := rec.DeletionRequestedAt
	if start.IsZero() && m != nil {
		start = m.Published
	}
	if start.IsZero() {
		start = time.Now()
	}
	return start.Add(time.Duration(rec.GracePeriodSeconds()) * time.Second)
}

// graceLeft is the grace period a stop sent now gives: what is left of the
// pod's since DeletionRequestedAt, in whole seconds rounded up, at least 1
// (the agent reads 0 as the pod's whole grace period), 0 only for a pod
// whose grace period is 0 (killed at once). Before the provisioner has
// recorded the delete, the whole of it: its power-off waits the grace
// period from when it does.
func graceLeft(rec *events.PodRecord) int64 {
	full := rec.GracePeriodSeconds()
	if full <= 0 || rec.DeletionRequestedAt.IsZero() {
		return full
	}
	left := rec.DeletionRequestedAt.Add(time.Duration(full) * time.Second)
	return min(max(int64(math.Ceil(time.Until(left).Seconds())), 1), full)
}

// SharedDeleteWorkers is how many deletes RunDeletes handles at once: each
// may wait a pod's whole grace period for its guest, and one consumer
// serves every host of the process.
const SharedDeleteWorkers = 256

// SharedDeletesConsumer is the durable consumer RunDeletes reads.
const SharedDeletesConsumer = Name + "-every-host"

// RunDeletes takes pod.delete.requested for every host agent of a process
// serving many hosts (each with Config.SharedDeletes), on one durable
// consumer: each delete's record is read once and the delete handed to the
// agent of the pod's host, found by agents (the agent of a host, and any
// agent). The process adds its agents as it reads the hosts (FollowHosts)
// while this consumer runs: a delete that comes before any agent, or
// before its pod's host's, comes back (as when the guest is not connected,
// stopForDelete).
func RunDeletes(ctx context.Context, b *bus.Bus, agents func(host string) (of, some *Service), log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := bus.NewRouter(SharedDeletesConsumer, log)
	bus.Handle(r, func(ctx context.Context, m *bus.Message, req *events.PodDeleteRequested) error {
		_, some := agents("")
		if some == nil {
			if m.LastDelivery() {
				log.Warn("delete: no host agent runs here yet, and this was the delete's last delivery", "pod", req.ObjectKey())
				return nil
			}
			return bus.RetryAfter(errNoAgentYet, retryDelay(m))
		}
		rec, err := some.deleteRecord(ctx, m, req)
		if rec == nil || err != nil {
			return err
		}
		of, _ := agents(rec.Host)
		if of == nil {
			return some.retryStop(m, rec, stopDeadline(m, rec), fmt.Errorf("pod %s: no agent of its host %q here yet", rec.Key(), rec.Host))
		}
		return of.stopForDelete(ctx, m, rec)
	})
	return r.Run(ctx, b, bus.ConsumerConfig{Workers: SharedDeleteWorkers}, nil)
}

// errNoAgentYet: a process serving every host has read no host yet.
var errNoAgentYet = errors.New("no host agent runs here yet")

// errClosedAfterStop: the guest's channel closed once the stop was sent.
var errClosedAfterStop = fmt.Errorf("%w after the stop was sent", ErrChannelClosed)

// stop sends stop and waits for stopped, the channel's end, or the grace
// period plus StopSlack, counted from before the stop is written: a guest
// that does not read its channel holds the delete no longer than one that
// does not answer.
func (s *Service) stop(ctx context.Context, pc *podConn, grace int64) (guestchannel.Stopped, error) {
	var out guestchannel.Stopped
	deadline := time.Now().Add(time.Duration(grace)*time.Second + s.cfg.StopSlack)
	timeout := time.NewTimer(time.Until(deadline))
	defer timeout.Stop()
	id, answers, err := pc.request()
	if err != nil {
		return out, err
	}
	defer pc.done(id)
	if err := pc.conn.SendBefore(deadline, guestchannel.TypeStop, id, guestchannel.StopRequest{GracePeriodSeconds: grace}); err != nil {
		return out, fmt.Errorf("send stop: %w", err)
	}
	for {
		select {
		case env := <-answers:
			switch env.Type {
			case guestchannel.TypeStopped:
				return out, env.Decode(&out)
			case guestchannel.TypeError:
				var e guestchannel.Error
				_ = env.Decode(&e)
				return out, errors.New("pod agent: " + e.Message)
			}
		case <-pc.gone:
			return out, errClosedAfterStop
		case <-timeout.C:
			return out, errors.New("no stopped within the grace period")
		case <-ctx.Done():
			return out, ctx.Err()
		}
	}
}
