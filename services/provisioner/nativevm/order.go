package nativevm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// laterOf returns the first event on subject about the VM key that the VMS
// stream stored after sequence seq, or nil. The stream is the order of what
// was asked and done: a delete request stored after a declaration is its
// tombstone, with the delete's sequence and time, and it lives as long as
// the stream keeps events (bus.EventRetention, or until its byte limit
// drops the oldest), never shorter than the declaration it outranks, which
// is older. The VM records cannot carry it: a deleted VM has none. A
// message that is not from the stream (seq 0) has nothing after it.
func (c *Controller) laterOf(ctx context.Context, subject, key string, seq uint64) (*jetstream.RawStreamMsg, error) {
	if seq == 0 {
		return nil, nil
	}
	s, err := c.bus.JetStream().Stream(ctx, events.StreamVMs)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", events.StreamVMs, err)
	}
	for next := seq + 1; ; {
		m, err := s.GetMsg(ctx, next, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s after %d in %s: %w", subject, seq, events.StreamVMs, err)
		}
		// An event that does not decode is about no VM (the consumer
		// dead-letters it).
		var ref events.VMRef
		if ev, err := bus.DecodeHeaders(m.Header, m.Data); err == nil && json.Unmarshal(ev.Data(), &ref) == nil && ref.ObjectKey() == key {
			return m, nil
		}
		next = m.Sequence + 1
	}
}
