package hostagent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/periodic"
)

// HostNetwork is what the host really has of the distributed port groups:
// the segments it carries, by port group key. On vSphere it is the host's
// switch proxy; in the simulated datacenter, the host's Linux segments
// (sim.HostSegments).
type HostNetwork interface {
	// Carried lists the port groups the host carries, key → name.
	Carried(ctx context.Context) (map[string]string, error)
	// Carry makes the host carry a port group; Drop stops it. When
	// vCenter has no port group of the key, Carry's error has a method
	// PortGroupNotFound() bool that returns true (see portGroupNotFound).
	Carry(ctx context.Context, key string) error
	Drop(ctx context.Context, key string) error
}

// ReasonCarryFailed and ReasonDropFailed name a port group the host could
// not bring to its desired state (network.host.applied failed).
// ReasonPortGroupNotFound names one vCenter does not have: deleted by hand,
// or not created again yet (a restarted simulated datacenter, before
// network-config realizes its networks again). That is no failure of the
// host, and every host of the switch reports it at once: the migration
// service does not evacuate a host for it, as it does for CarryFailed.
const (
	ReasonCarryFailed       = "CarryFailed"
	ReasonDropFailed        = "DropFailed"
	ReasonPortGroupNotFound = "PortGroupNotFound"
)

// portGroupNotFound reports whether a Carry error says that vCenter has no
// port group of the key.
func portGroupNotFound(err error) bool {
	var nf interface{ PortGroupNotFound() bool }
	return errors.As(err, &nf) && nf.PortGroupNotFound()
}

// netState is the host's last desired network state and how applying it
// went; mu serializes applying (a new state, a periodic re-apply).
type netState struct {
	mu      sync.Mutex
	desired *events.NetworkHostDesired
	// seq is desired's sequence in the NETWORKS stream: a state of a lower
	// one is older, whatever order it is delivered in (a state that failed
	// comes back after the next one was applied), and is not applied.
	seq     uint64
	applied time.Time
	// retryIn is how soon after applied the state is applied again
	// because it failed (0: it did not); notFound counts the applies in a
	// row that failed only on port groups vCenter does not have.
	retryIn  time.Duration
	notFound int
}

// notFoundRetry is the first wait after a state failed only because vCenter
// has no port group of a key, doubling up to NetworkRetry: that is
// network-config creating the port groups again (a restarted datacenter),
// usually within a second or two, and the pods placed meanwhile wait for
// the host to carry them.
const notFoundRetry = time.Second

// onlyNotFound reports whether every failure is a port group vCenter does
// not have.
func onlyNotFound(failed []events.PortGroupFailure) bool {
	for _, f := range failed {
		if f.Reason != ReasonPortGroupNotFound {
			return false
		}
	}
	return true
}

// runNetworkState applies this host's final desired network state: the
// last one on its subject when the agent starts (a restarted agent does not
// wait for the next change), every new one from its durable consumer, which
// filters on the host's own subject (events.SubjectNetworkHostDesiredFor),
// so no other host's state is ever delivered here; and the last one again
// every NetworkResync (NetworkRetry after a partial failure), which repairs
// drift on the host without network-config sending anything.
func (s *Service) runNetworkState(ctx context.Context) error {
	if d, seq, err := s.lastDesired(ctx); err != nil {
		s.log.Warn("read the host's last desired network state", "err", err)
	} else if d != nil {
		s.reapply(ctx, d, seq)
	}
	go s.reapplyLoop(ctx)
	r := bus.NewRouter(consumerName(s.cfg.Host), s.log)
	bus.Handle(r, s.handleDesired)
	// States in order (one worker): the last one wins.
	return r.Run(ctx, s.bus, bus.ConsumerConfig{Workers: 1}, func(c *bus.ConsumerConfig) {
		c.Subjects = []string{events.SubjectNetworkHostDesiredFor(s.cfg.Host)}
	})
}

// lastDesired reads the newest state on the host's subject and its stream
// sequence; nil when none.
func (s *Service) lastDesired(ctx context.Context) (*events.NetworkHostDesired, uint64, error) {
	st, err := s.bus.JetStream().Stream(ctx, events.StreamNetworks)
	if err != nil {
		return nil, 0, err
	}
	raw, err := st.GetLastMsgForSubject(ctx, events.SubjectNetworkHostDesiredFor(s.cfg.Host))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	ev, err := bus.DecodeMessage(raw)
	if err != nil {
		return nil, 0, err
	}
	d, err := s.decodeDesired(ev.Type(), ev.Data())
	return d, raw.Sequence, err
}

func (s *Service) decodeDesired(ceType string, data []byte) (*events.NetworkHostDesired, error) {
	v, err := events.Decode(ceType, data)
	if err != nil {
		return nil, err
	}
	d, ok := v.(*events.NetworkHostDesired)
	if !ok || d.Host != s.cfg.Host {
		return nil, nil
	}
	return d, nil
}

// reapplyLoop applies the last state again when it is due.
func (s *Service) reapplyLoop(ctx context.Context) {
	periodic.Every(ctx, min(s.cfg.NetworkRetry, s.cfg.NetworkResync, notFoundRetry)/2, s.log, "reapply", func(ctx context.Context) error {
		s.netState.mu.Lock()
		d, due := s.netState.desired, s.cfg.NetworkResync
		if s.netState.retryIn > 0 {
			due = s.netState.retryIn
		}
		due -= time.Since(s.netState.applied)
		s.netState.mu.Unlock()
		if d != nil && due <= 0 {
			s.reapply(ctx, nil, 0) // the newest, read under the lock
		}
		return nil
	})
}

// reapply applies d, of stream sequence seq (nil: the last state applied),
// again and reports only when something changed or failed: an unchanged
// host is not news.
func (s *Service) reapply(ctx context.Context, d *events.NetworkHostDesired, seq uint64) {
	applied, err := s.applyDesired(ctx, d, seq)
	if errors.Is(err, errSuperseded) {
		return
	}
	if err != nil {
		s.log.Warn("apply the host's desired network state again", "err", err)
		return
	}
	if len(applied.Added)+len(applied.Removed)+len(applied.Failed) == 0 {
		return
	}
	if err := s.bus.Emitter(Source).Emit(ctx, nil, applied); err != nil {
		s.log.Warn("report the host's network state", "err", err)
	}
}

// handleDesired applies a new final desired state (network.host.desired)
// and reports it with network.host.applied. Another host's state never
// reaches this consumer; one that did anyway is not its business, nor is
// a state older than the one the agent has (errSuperseded).
func (s *Service) handleDesired(ctx context.Context, m *bus.Message, d *events.NetworkHostDesired) error {
	if d.Host != s.cfg.Host {
		return nil
	}
	applied, err := s.applyDesired(ctx, d, m.StreamSeq)
	if errors.Is(err, errSuperseded) {
		m.Log.Info("network state superseded by a newer one; not applied", "digest", d.Digest, "seq", m.StreamSeq, "err", err)
		return nil
	}
	if err != nil {
		return err
	}
	return s.bus.Emitter(Source).Emit(ctx, &m.Event, applied)
}

// errSuperseded: a state older, by its stream sequence, than the one the
// agent has (applied, or to apply again).
var errSuperseded = errors.New("an older state than the host's")

// applyDesired compares the port groups the state lists with those the
// host carries, carries the missing ones, drops the podvisor network port
// groups (pv-<network>) no longer listed, leaves the rest untouched, and
// says what it changed. A nil d is the last state applied; another d,
// of stream sequence seq, replaces it, unless it is older (errSuperseded).
func (s *Service) applyDesired(ctx context.Context, d *events.NetworkHostDesired, seq uint64) (*events.NetworkHostApplied, error) {
	s.netState.mu.Lock()
	defer s.netState.mu.Unlock()
	st := &s.netState
	switch {
	case d == nil:
		d, seq = st.desired, st.seq
	case seq < st.seq:
		return nil, fmt.Errorf("%w: stream sequence %d, the host's is %d", errSuperseded, seq, st.seq)
	case st.desired == nil || d.Digest != st.desired.Digest:
		st.notFound = 0 // a new state: its failures are new too
	}
	have, err := s.network.Carried(ctx)
	if err != nil {
		// vCenter does not answer: the state is the one to apply (its
		// delivery may run out of retries first, or it was read at
		// start), next try NetworkRetry away, not on the next tick.
		st.desired, st.seq, st.applied, st.retryIn = d, seq, time.Now(), s.cfg.NetworkRetry
		return nil, fmt.Errorf("read the host's port groups: %w", err)
	}
	applied := &events.NetworkHostApplied{Host: s.cfg.Host, Digest: d.Digest}
	want := map[string]bool{}
	for _, pg := range d.PortGroups {
		want[pg.Key] = true
		if _, ok := have[pg.Key]; ok {
			applied.Unchanged++
			continue
		}
		if err := s.network.Carry(ctx, pg.Key); err != nil {
			reason := ReasonCarryFailed
			if portGroupNotFound(err) {
				reason = ReasonPortGroupNotFound
			}
			applied.Failed = append(applied.Failed, events.PortGroupFailure{PortGroup: pg.PortGroup, Reason: reason, Message: err.Error()})
			continue
		}
		applied.Added = append(applied.Added, pg.PortGroup)
	}
	for key, name := range have {
		if want[key] || !events.IsNetworkPortGroup(name) {
			continue // listed, or not a network's
		}
		if err := s.network.Drop(ctx, key); err != nil {
			applied.Failed = append(applied.Failed, events.PortGroupFailure{PortGroup: name, Reason: ReasonDropFailed, Message: err.Error()})
			continue
		}
		applied.Removed = append(applied.Removed, name)
	}
	slices.Sort(applied.Added)
	slices.Sort(applied.Removed)
	if len(applied.Added)+len(applied.Removed)+len(applied.Failed) > 0 {
		s.log.Info("network state applied", "digest", d.Digest, "added", applied.Added, "removed", applied.Removed,
			"unchanged", applied.Unchanged, "failed", len(applied.Failed))
	}
	st.desired, st.seq, st.applied, st.retryIn = d, seq, time.Now(), 0
	if len(applied.Failed) == 0 {
		st.notFound = 0
		return applied, nil
	}
	if !onlyNotFound(applied.Failed) {
		st.notFound, st.retryIn = 0, s.cfg.NetworkRetry
		return applied, nil
	}
	st.notFound++
	st.retryIn = min(s.cfg.NetworkRetry, notFoundRetry<<min(st.notFound-1, 16))
	return applied, nil
}
