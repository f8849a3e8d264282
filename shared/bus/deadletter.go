package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Dead-letter headers, added to a copy of the original message's headers
// (CloudEvent attributes, Content-Type, trace context) and body.
const (
	HeaderDLQReason     = "Pv-Dlq-Reason"
	HeaderDLQService    = "Pv-Dlq-Service"
	HeaderDLQConsumer   = "Pv-Dlq-Consumer"
	HeaderDLQStream     = "Pv-Dlq-Stream"
	HeaderDLQSubject    = "Pv-Dlq-Subject"
	HeaderDLQStreamSeq  = "Pv-Dlq-Stream-Seq"
	HeaderDLQDeliveries = "Pv-Dlq-Deliveries"
	HeaderDLQTime       = "Pv-Dlq-Time"
)

// ReasonMaxDeliveries starts the reason of a message that failed on every
// delivery; the last error follows it.
const ReasonMaxDeliveries = "max deliveries exceeded"

// maxReasonLen bounds the reason header: errors can wrap whole responses,
// and a dead letter is for a person to read.
const maxReasonLen = 2048

// DeadLetter describes a message in the DLQ stream.
type DeadLetter struct {
	Reason     string
	Service    string
	Consumer   string
	Stream     string
	Subject    string // the original NATS subject
	StreamSeq  uint64 // the original's sequence in Stream
	Deliveries uint64
	Time       time.Time
}

// DLQSubject is where a service's dead letters go.
func DLQSubject(service string) string { return DLQSubjectPrefix + service }

// ReadDeadLetter parses the Pv-Dlq-* headers of a dead letter.
func ReadDeadLetter(h nats.Header) (DeadLetter, error) {
	d := DeadLetter{
		Reason:   h.Get(HeaderDLQReason),
		Service:  h.Get(HeaderDLQService),
		Consumer: h.Get(HeaderDLQConsumer),
		Stream:   h.Get(HeaderDLQStream),
		Subject:  h.Get(HeaderDLQSubject),
	}
	if d.Reason == "" {
		return DeadLetter{}, fmt.Errorf("bus: not a dead letter: header %s missing", HeaderDLQReason)
	}
	var errs []error
	var err error
	if d.StreamSeq, err = strconv.ParseUint(h.Get(HeaderDLQStreamSeq), 10, 64); err != nil {
		errs = append(errs, fmt.Errorf("header %s: %w", HeaderDLQStreamSeq, err))
	}
	if d.Deliveries, err = strconv.ParseUint(h.Get(HeaderDLQDeliveries), 10, 64); err != nil {
		errs = append(errs, fmt.Errorf("header %s: %w", HeaderDLQDeliveries, err))
	}
	if d.Time, err = time.Parse(time.RFC3339Nano, h.Get(HeaderDLQTime)); err != nil {
		errs = append(errs, fmt.Errorf("header %s: %w", HeaderDLQTime, err))
	}
	if err := errors.Join(errs...); err != nil {
		return DeadLetter{}, fmt.Errorf("bus: dead letter: %w", err)
	}
	return d, nil
}

// deadLetterMsg builds the DLQ copy of an original message.
func deadLetterMsg(d DeadLetter, orig nats.Header, data []byte) *nats.Msg {
	msg := nats.NewMsg(DLQSubject(d.Service))
	for k, vs := range orig {
		// Nats-* headers steer the server (Nats-Msg-Id would de-duplicate the
		// copy against unrelated messages in the DLQ stream); drop them.
		if strings.HasPrefix(strings.ToLower(k), "nats-") {
			continue
		}
		msg.Header[k] = append([]string(nil), vs...)
	}
	msg.Header.Set(HeaderDLQReason, cleanReason(d.Reason))
	msg.Header.Set(HeaderDLQService, d.Service)
	msg.Header.Set(HeaderDLQConsumer, d.Consumer)
	msg.Header.Set(HeaderDLQStream, d.Stream)
	msg.Header.Set(HeaderDLQSubject, d.Subject)
	msg.Header.Set(HeaderDLQStreamSeq, strconv.FormatUint(d.StreamSeq, 10))
	msg.Header.Set(HeaderDLQDeliveries, strconv.FormatUint(d.Deliveries, 10))
	msg.Header.Set(HeaderDLQTime, d.Time.UTC().Format(time.RFC3339Nano))
	msg.Data = data
	return msg
}

// cleanReason makes an error text safe for a header: one line, bounded.
func cleanReason(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxReasonLen {
		s = s[:maxReasonLen] + "…"
	}
	return s
}

// publishDeadLetter stores the copy in the DLQ stream and waits for the ack.
// The message id names the consumer and stream sequence, so the two paths
// that can dead-letter one message (the handler's last failure and the
// MAX_DELIVERIES advisory) store it once.
func (b *Bus) publishDeadLetter(ctx context.Context, d DeadLetter, orig nats.Header, data []byte) error {
	msg := deadLetterMsg(d, orig, data)
	id := fmt.Sprintf("dlq:%s:%s:%d", d.Consumer, d.Stream, d.StreamSeq)
	if _, err := b.js.PublishMsg(ctx, msg, jetstream.WithMsgID(id)); err != nil {
		return fmt.Errorf("bus: dead-letter %s seq %d to %s: %w", d.Stream, d.StreamSeq, msg.Subject, err)
	}
	return nil
}

// maxDeliveriesAdvisory is the part of the server's
// io.nats.jetstream.advisory.v1.max_deliver advisory the bus reads.
type maxDeliveriesAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// captureMaxDeliveries turns the MAX_DELIVERIES advisories of one consumer
// into dead letters until ctx ends. The advisories arrive through the
// ADVISORIES stream, so an advisory sent while no process of the service ran
// is still handled when one starts. They cover the deliveries that ran out
// with no outcome at all (a process that crashed or hung on every attempt);
// a handler that returns an error on the last delivery is dead-lettered
// directly with that error.
//
// The returned channel closes when the capture loop has stopped.
func (b *Bus) captureMaxDeliveries(ctx context.Context, service, stream, durable string, log *slog.Logger) (<-chan struct{}, error) {
	cons, err := b.js.CreateOrUpdateConsumer(ctx, StreamAdvisories, jetstream.ConsumerConfig{
		Durable:       durable + "-maxdeliveries",
		Description:   "turns MAX_DELIVERIES advisories of " + durable + " into dead letters",
		FilterSubject: maxDeliveriesAdvisoryPrefix + "." + stream + "." + durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		// Unlimited: running out here would raise an advisory of its own.
		MaxDeliver: -1,
	})
	if err != nil {
		return nil, fmt.Errorf("bus: consumer %s on %s (run EnsureTopology first): %w", durable+"-maxdeliveries", StreamAdvisories, err)
	}
	src, err := b.js.Stream(ctx, stream)
	if err != nil {
		return nil, fmt.Errorf("bus: stream %s: %w", stream, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		retry := newRetryPause()
		for ctx.Err() == nil {
			fctx, cancel := context.WithTimeout(ctx, fetchWait)
			batch, err := cons.Fetch(16, jetstream.FetchContext(fctx))
			if err != nil {
				cancel()
				if b.nc.IsClosed() {
					return
				}
				if ctx.Err() == nil {
					log.Warn("fetch max-deliveries advisories", "err", err)
					retry.wait(ctx)
				}
				continue
			}
			for m := range batch.Messages() {
				b.handleMaxDeliveries(ctx, service, src, m, log)
			}
			cancel()
			if b.nc.IsClosed() {
				return
			}
			retry.reset()
		}
	}()
	return done, nil
}

func (b *Bus) handleMaxDeliveries(ctx context.Context, service string, src jetstream.Stream, m jetstream.Msg, log *slog.Logger) {
	var adv maxDeliveriesAdvisory
	if err := json.Unmarshal(m.Data(), &adv); err != nil || adv.StreamSeq == 0 {
		log.Warn("unreadable max-deliveries advisory dropped", "err", err, "subject", m.Subject())
		_ = m.Term()
		return
	}
	orig, err := src.GetMsg(ctx, adv.StreamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		// Aged out or deleted: nothing left to keep.
		log.Warn("message of a max-deliveries advisory is gone", "stream", adv.Stream, "seq", adv.StreamSeq)
		_ = m.Ack()
		return
	}
	if err != nil {
		log.Warn("get message of a max-deliveries advisory", "stream", adv.Stream, "seq", adv.StreamSeq, "err", err)
		_ = m.NakWithDelay(time.Second)
		return
	}
	d := DeadLetter{
		Reason: fmt.Sprintf("%s: no outcome after %d deliveries (the handler crashed, hung or its process stopped each time)",
			ReasonMaxDeliveries, adv.Deliveries),
		Service:    service,
		Consumer:   adv.Consumer,
		Stream:     adv.Stream,
		Subject:    orig.Subject,
		StreamSeq:  adv.StreamSeq,
		Deliveries: adv.Deliveries,
		Time:       time.Now(),
	}
	if err := b.publishDeadLetter(ctx, d, orig.Header, orig.Data); err != nil {
		log.Warn("dead-letter after max deliveries", "seq", adv.StreamSeq, "err", err)
		_ = m.NakWithDelay(time.Second)
		return
	}
	log.Warn("message dead-lettered after max deliveries", "seq", adv.StreamSeq, "subject", orig.Subject, "deliveries", adv.Deliveries)
	_ = m.Ack()
}
