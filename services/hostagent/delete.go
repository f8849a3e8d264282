package hostagent

import (
	"context"
	"errors"
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
	ns := req.Namespace
	if ns == "" {
		ns = events.DefaultNamespace
	}
	rec, err := s.record(ctx, ns, req.Name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if rec.Host != s.cfg.Host || (req.UID != "" && req.UID != rec.UID) {
		return nil
	}
	pc := s.conn(rec.UID)
	if pc == nil {
		s.log.Info("delete: the pod's guest has no channel here; nothing to stop", "pod", rec.Key())
		return nil
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
	return nil
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
