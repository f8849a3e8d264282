package guestcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/record"
)

// A deleted guest cluster leaves a tombstone: the KV delete marker that
// removes its record carries the generation of the delete request
// (tombstone headers below). The record held the generation that orders a
// guest cluster's requests; without the tombstone a request stored before
// the delete and handled after it (a delivery retried after AckWait or
// after a failure, a replica that took it late) would find no record and
// make the guest cluster again. A request makes a record only where the
// key's last message is no tombstone of a later deletion, and only at that
// message's revision, so a deletion finished meanwhile is seen, on any
// replica. Clients see an ordinary deletion: they skip delete markers and
// read no headers. The tombstone lasts until a newer request makes the
// guest cluster again (its record replaces the marker) and costs what the
// marker of a plain deletion costs.
const (
	// headerDeletedSeq and headerDeletedAt are the deletion's generation:
	// the delete request's GUESTCLUSTERS stream sequence and store time.
	headerDeletedSeq = "Pv-Deleted-Generation"
	headerDeletedAt  = "Pv-Deleted-Generation-At"
)

// keyState is what a guest cluster's key holds last.
type keyState struct {
	// rev is the revision of the key's last message, 0 when it has none.
	rev uint64
	// rec is the record, when the last message is one.
	rec *clusterRecord
	// deleted is the tombstone's generation, when the last message is a
	// tombstone; a delete marker without one (a purge) has none.
	deleted *generation
}

// lastOf reads the last message of a guest cluster's key, delete markers
// with their headers included (which KV reads hide).
func (s *Service) lastOf(ctx context.Context, key string) (keyState, error) {
	m, err := s.recordLog.GetLastMsgForSubject(ctx, s.keySubject(key))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return keyState{}, nil
	case err != nil:
		return keyState{}, fmt.Errorf("read the key of guest cluster %s: %w", key, err)
	}
	st := keyState{rev: m.Sequence}
	switch {
	case record.IsRemoval(m.Header):
		seq, err := strconv.ParseUint(m.Header.Get(headerDeletedSeq), 10, 64)
		at, terr := time.Parse(time.RFC3339Nano, m.Header.Get(headerDeletedAt))
		if err == nil && terr == nil {
			st.deleted = &generation{seq: seq, at: at}
		}
	default:
		st.rec = new(clusterRecord)
		if err := json.Unmarshal(m.Data, st.rec); err != nil {
			return keyState{}, fmt.Errorf("decode guest cluster %s: %w", key, err)
		}
	}
	return st, nil
}

func (s *Service) keySubject(key string) string {
	return "$KV." + s.clusters.KV().Bucket() + "." + key
}

// upsertRequest is clusters.Upsert for the handler of a request of
// generation gen: a record is changed as Upsert changes it; where there is
// none, the request makes it unless a tombstone of a later deletion is
// there (errSuperseded), and at the revision of the key's last message,
// so that a deletion finished after the read is read again.
func (s *Service) upsertRequest(ctx context.Context, key string, gen generation, change func(*clusterRecord, bool) error) (*clusterRecord, error) {
	for range record.DefaultAttempts {
		st, err := s.lastOf(ctx, key)
		if err != nil {
			return nil, err
		}
		if st.rec != nil {
			rec, err := s.clusters.Mutate(ctx, key, func(r *clusterRecord) error { return change(r, true) })
			if errors.Is(err, record.ErrNotFound) {
				continue // deleted since: its tombstone decides
			}
			return rec, err
		}
		if st.deleted != nil && (*st.deleted == gen || st.deleted.after(gen)) {
			return nil, errSuperseded
		}
		r := new(clusterRecord)
		if err := change(r, false); err != nil {
			return nil, err
		}
		data, err := json.Marshal(r)
		if err != nil {
			return nil, fmt.Errorf("encode guest cluster %s: %w", key, err)
		}
		// At rev, 0 included (the key had no message): JetStream refuses
		// the write when anything was written to the key since.
		if _, err := s.clusters.KV().Update(ctx, key, data, st.rev); err != nil {
			if record.Conflict(err) {
				continue
			}
			return nil, fmt.Errorf("create guest cluster %s: %w", key, err)
		}
		return r, nil
	}
	return nil, fmt.Errorf("guest cluster %s: %d attempts: %w", key, record.DefaultAttempts, record.ErrConflict)
}

// errRecordBack: a record not being deleted is at the key a deletion
// would bury (made, or made again, by a request the deletion did not
// see).
var errRecordBack = errors.New("the guest cluster has a record that is not being deleted")

// bury removes the record at key and leaves the tombstone of the deletion
// of generation gen, or of the record's own when it is Deleting (the
// newest delete request it took). It writes at the revision it read: a
// record rewritten meanwhile is read again. A tombstone of this deletion
// or of a later one is left as it is; a record that is not Deleting is
// errRecordBack.
func (s *Service) bury(ctx context.Context, key string, gen generation) error {
	for range record.DefaultAttempts {
		st, err := s.lastOf(ctx, key)
		switch {
		case err != nil:
			return err
		case st.rec != nil && st.rec.Phase != events.GuestClusterPhaseDeleting:
			return errRecordBack
		case st.rec != nil:
			gen = st.rec.generation()
		case st.deleted != nil && (*st.deleted == gen || st.deleted.after(gen)):
			return nil
		}
		m := nats.NewMsg(s.keySubject(key))
		m.Header.Set(record.HeaderKVOperation, record.KVDelete)
		m.Header.Set(headerDeletedSeq, strconv.FormatUint(gen.seq, 10))
		m.Header.Set(headerDeletedAt, gen.at.UTC().Format(time.RFC3339Nano))
		_, err = s.bus.JetStream().PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(st.rev))
		switch {
		case err == nil:
			return nil
		case !record.Conflict(err):
			return fmt.Errorf("remove the record of guest cluster %s: %w", key, err)
		}
	}
	return fmt.Errorf("remove the record of guest cluster %s: %d attempts: %w", key, record.DefaultAttempts, record.ErrConflict)
}

// deletionCause is the event a Deleting record's deletion is the effect
// of, for a resync that finishes it: the delete request the record took
// (its generation), read back from the GUESTCLUSTERS stream, so that what
// the resync publishes has the ids the request's handler gives it and
// JetStream keeps one copy of each. When the stream no longer holds that
// request (or the record predates generations), a cause whose id is the
// deletion's own: the same for every replica and every resync.
func (s *Service) deletionCause(ctx context.Context, rec *clusterRecord) event.Event {
	if m, err := s.requests.GetMsg(ctx, rec.Generation); err == nil && m.Time.Equal(rec.GenerationAt) {
		if ev, err := bus.DecodeMessage(m); err == nil && ev.Type() == events.TypeGuestClusterDeleteRequested &&
			ev.Subject() == events.GuestClusterKey(rec.Namespace, rec.Name) {
			return ev
		}
	}
	c := event.New()
	c.SetID(fmt.Sprintf("guestcluster/delete/%s/%s/%d", rec.Namespace, rec.Name, rec.Generation))
	return c
}
