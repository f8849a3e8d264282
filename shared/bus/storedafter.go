package bus

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
)

// StoredAfter returns the first event of payload type T about the object
// key that its stream stored after sequence seq and that match accepts
// (nil accepts every one), or nil when there is none.
//
// The stream is the order of what was asked and done: a delete request
// stored after a declaration or a request is its tombstone, with the
// delete's sequence and time, and it lives as long as the stream keeps
// events (EventRetention, or until its byte limit drops the oldest), never
// shorter than the request it outranks, which is older. The records cannot
// carry it: a deleted object has none. A message that is not from the
// stream (seq 0) has nothing after it.
//
// An event counts as a handler would take it (Router): it decodes, is
// valid, and its CloudEvent subject is its payload's ObjectKey; one that is
// not is about no object (its consumer dead-letters it).
//
// The server filters by NATS subject only, so on a subject shared by every
// object the walk takes a round trip per event of type T stored after seq
// until the match: callers ask about messages that may be stale, never on a
// first delivery's way. A per-object kind (events.Kind.PerObject) travels on
// the key's own subject, and the first answer is the match.
func StoredAfter[T any, P interface {
	*T
	events.Payload
}](ctx context.Context, js jetstream.JetStream, key string, seq uint64, match func(*T) bool) (*jetstream.RawStreamMsg, error) {
	if seq == 0 {
		return nil, nil
	}
	k, ok := events.KindOf(P(new(T)))
	if !ok {
		return nil, fmt.Errorf("bus: stored after: %T is not a payload of the event catalog", P(nil))
	}
	s, err := js.Stream(ctx, k.Stream)
	if err != nil {
		return nil, fmt.Errorf("bus: stream %s: %w", k.Stream, err)
	}
	subject := k.SubjectFor(key)
	for next := seq + 1; ; {
		m, err := s.GetMsg(ctx, next, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("bus: %s after %d in %s: %w", subject, seq, k.Stream, err)
		}
		if p := about[T, P](m, k.Type, key); p != nil && (match == nil || match(p)) {
			return m, nil
		}
		next = m.Sequence + 1
	}
}

// about decodes m as the event of ceType about key that it should be, or
// returns nil: another object's (the cheap subject attribute tells most),
// another version's, or one no handler would take.
func about[T any, P interface {
	*T
	events.Payload
}](m *jetstream.RawStreamMsg, ceType, key string) *T {
	ev, err := DecodeHeaders(m.Header, m.Data)
	if err != nil || ev.Type() != ceType || ev.Subject() != key {
		return nil
	}
	v, err := events.Decode(ceType, ev.Data())
	if err != nil {
		return nil
	}
	p, ok := v.(P)
	if !ok || p.ObjectKey() != key {
		return nil
	}
	return (*T)(p)
}
