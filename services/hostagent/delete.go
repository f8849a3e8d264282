package hostagent

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// defaultGracePeriod is Kubernetes' terminationGracePeriodSeconds default.
const defaultGracePeriod = 30

// handleDelete asks the agent of a pod being deleted to stop its containers
// within the pod's grace period, and waits (bounded by the grace period plus
// StopSlack) for the agent's "stopped" before acknowledging. Another host's
// pod, a pod whose record is gone, or one whose guest has no channel here,
// is not this agent's business: acknowledged at once.
func (s *Service) handleDelete(ctx context.Context, _ *bus.Message, req *events.PodDeleteRequested) error {
	rec, err := s.deleteRecord(ctx, req)
	if rec == nil || err != nil || rec.Host != s.cfg.Host {
		return err
	}
	s.stopForDelete(ctx, rec)
	return nil
}

// deleteRecord is the record of the pod a delete names; nil when it has
// none, or one of another uid than the delete's.
func (s *Service) deleteRecord(ctx context.Context, req *events.PodDeleteRequested) (*events.PodRecord, error) {
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
	return rec, nil
}

// stopForDelete stops the containers of rec's pod, being deleted, if its
// guest has a channel here.
func (s *Service) stopForDelete(ctx context.Context, rec *events.PodRecord) {
	pc := s.conn(rec.UID)
	if pc == nil {
		s.log.Info("delete: the pod's guest has no channel here; nothing to stop", "pod", rec.Key())
		return
	}
	grace := int64(defaultGracePeriod)
	if g := rec.Pod.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = *g
	}
	stopped, err := s.stop(ctx, pc, grace)
	if err != nil {
		pc.log.Warn("stop on delete", "err", err)
	} else {
		pc.log.Info("stopped on delete", "grace", grace, "killed", stopped.Killed)
	}
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
// agent). A pod whose host has no agent here has nothing to stop here.
func RunDeletes(ctx context.Context, b *bus.Bus, agents func(host string) (of, some *Service), log *slog.Logger) error {
	r := bus.NewRouter(SharedDeletesConsumer, log)
	bus.Handle(r, func(ctx context.Context, _ *bus.Message, req *events.PodDeleteRequested) error {
		_, some := agents("")
		if some == nil {
			return nil // no agent yet, so no channel to stop
		}
		rec, err := some.deleteRecord(ctx, req)
		if rec == nil || err != nil {
			return err
		}
		if of, _ := agents(rec.Host); of != nil {
			of.stopForDelete(ctx, rec)
		}
		return nil
	})
	return r.Run(ctx, b, bus.ConsumerConfig{Workers: SharedDeleteWorkers}, nil)
}

// stop sends stop and waits for stopped, the channel's end, or the grace
// period plus StopSlack.
func (s *Service) stop(ctx context.Context, pc *podConn, grace int64) (guestchannel.Stopped, error) {
	var out guestchannel.Stopped
	id, answers, err := pc.request()
	if err != nil {
		return out, err
	}
	defer pc.done(id)
	if err := pc.conn.Send(guestchannel.TypeStop, id, guestchannel.StopRequest{GracePeriodSeconds: grace}); err != nil {
		return out, err
	}
	timeout := time.NewTimer(time.Duration(grace)*time.Second + s.cfg.StopSlack)
	defer timeout.Stop()
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
			return out, ErrChannelClosed
		case <-timeout.C:
			return out, errors.New("no stopped within the grace period")
		case <-ctx.Done():
			return out, ctx.Err()
		}
	}
}
